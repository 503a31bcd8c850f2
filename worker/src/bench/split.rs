//! A stratified, seeded train/test split (what `train_test_split(..., stratify=y)` does, with
//! anvil's own generator): `ceil(test_size * n)` test cells, each class contributing in
//! proportion to its size (largest remainders first), at least one cell of every class on
//! each side.

use data::rng::{CounterRng, Stream};

/// Word that keeps this split's random stream apart from the training data split's.
const BENCH_SPLIT: u64 = 0xbe4c_5e11;

/// (train, test) cell indices, each sorted, for labels `y` in `0..n_classes`.
pub fn stratified(
    y: &[u32],
    n_classes: usize,
    test_size: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), String> {
    let n = y.len();
    if !(test_size > 0.0 && test_size < 1.0) {
        return Err(format!("test_size {test_size} must be between 0 and 1"));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &c) in y.iter().enumerate() {
        members[c as usize].push(i);
    }
    let present: Vec<usize> = (0..n_classes).filter(|&c| !members[c].is_empty()).collect();
    if let Some(&c) = present.iter().find(|&&c| members[c].len() < 2) {
        return Err(format!(
            "class {c} has only {} cell; a stratified split needs at least 2 of every class",
            members[c].len()
        ));
    }
    let n_test = (test_size * n as f64).ceil() as usize;
    if n_test < present.len() || n - n_test < present.len() {
        return Err(format!(
            "{n_test} test and {} training cells cannot hold all {} classes",
            n - n_test,
            present.len()
        ));
    }
    // Proportional allocation, floors first, then the largest remainders.
    let mut take: Vec<usize> = vec![0; n_classes];
    let mut rem: Vec<(f64, usize)> = Vec::new();
    for &c in &present {
        let exact = n_test as f64 * members[c].len() as f64 / n as f64;
        take[c] = (exact.floor() as usize).clamp(1, members[c].len() - 1);
        rem.push((exact - exact.floor(), c));
    }
    rem.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut assigned: usize = take.iter().sum();
    let mut i = 0;
    while assigned < n_test && i < 4 * rem.len().max(1) {
        let c = rem[i % rem.len()].1;
        if take[c] + 1 < members[c].len() {
            take[c] += 1;
            assigned += 1;
        }
        i += 1;
    }
    let mut j = 0;
    while assigned > n_test && j < 4 * rem.len().max(1) {
        let c = rem[rem.len() - 1 - j % rem.len()].1;
        if take[c] > 1 {
            take[c] -= 1;
            assigned -= 1;
        }
        j += 1;
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for &c in &present {
        let mut m = members[c].clone();
        CounterRng::new(seed, Stream::Split, &[BENCH_SPLIT, c as u64]).shuffle(&mut m);
        test.extend_from_slice(&m[..take[c]]);
        train.extend_from_slice(&m[take[c]..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_seeded_and_disjoint() {
        let y: Vec<u32> = (0..100)
            .map(|i| {
                if i < 60 {
                    0
                } else if i < 90 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let (train, test) = stratified(&y, 3, 0.2, 42).unwrap();
        assert_eq!(test.len(), 20);
        assert_eq!(train.len(), 80);
        let count = |s: &[usize], c| s.iter().filter(|&&i| y[i] == c).count();
        assert_eq!(
            (count(&test, 0), count(&test, 1), count(&test, 2)),
            (12, 6, 2)
        );
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(
            stratified(&y, 3, 0.2, 42).unwrap(),
            (train.clone(), test.clone())
        );
        assert_ne!(stratified(&y, 3, 0.2, 7).unwrap().1, test);
        let lonely = [0u32, 0, 1];
        assert!(stratified(&lonely, 2, 0.5, 1)
            .unwrap_err()
            .contains("only 1 cell"));
    }
}

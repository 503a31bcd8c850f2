//! Train/validation split and the shard plan for data-parallel training.
//!
//! **Split.** Cells with no stored entries are skipped (and counted). Of the rest, exactly
//! round(val_split * n) cells go to validation: those with the smallest hash of
//! (seed, cell id). The split depends only on the seed and the data, never on the number of
//! workers.
//!
//! **Epoch order.** Training cells (in file/row order) are cut into blocks of `block_size`
//! consecutive cells that never straddle two files. Each epoch permutes the blocks, and the
//! cells within each block, with generators keyed by (seed, epoch), and concatenates them.
//! Keeping a block's cells adjacent keeps reads local: a batch touches a few row ranges.
//!
//! **Steps.** With global batch G = world_size * batch_size, step s of an epoch is cells
//! `order[s*G .. (s+1)*G]`, and rank r of N trains `order[s*G + r*B .. s*G + (r+1)*B]`. So
//! the global batch at step s is the same set of cells for any N with the same G. An epoch
//! has floor(n_train / G) steps: the last n_train mod G (< G) cells of that epoch's order are
//! not used in that epoch so that every rank runs the same number of steps; because the order
//! changes every epoch, different cells are left out each time. Every other training cell is
//! used exactly once per epoch. Validation runs in row order over ceil(n_val / G) steps with
//! the last step possibly short (some ranks may get fewer or no cells).

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::{key, CounterRng, Stream};

/// Default number of consecutive cells per shuffle block.
pub const DEFAULT_BLOCK_SIZE: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPlan {
    pub seed: u64,
    /// Training cell ids, ascending.
    pub train: Vec<u64>,
    /// Validation cell ids, ascending.
    pub val: Vec<u64>,
    /// Ranges into `train`.
    pub blocks: Vec<(usize, usize)>,
    /// Cells skipped because they have no expressed genes.
    pub skipped_empty: u64,
}

/// Which part of the data a loader walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Split {
    Train,
    Val,
}

impl ShardPlan {
    /// `file_offsets[f]..file_offsets[f+1]` are file f's cell ids; `row_nnz[c]` the stored
    /// entries of cell c.
    pub fn new(
        file_offsets: &[u64],
        row_nnz: &[u32],
        val_split: f64,
        seed: u64,
        block_size: usize,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&val_split) {
            return Err(DataError::Config(format!(
                "training.val_split must be in [0, 1), got {val_split}"
            )));
        }
        if block_size == 0 {
            return Err(DataError::Config("block size must be positive".into()));
        }
        let usable: Vec<u64> = (0..row_nnz.len() as u64)
            .filter(|&c| row_nnz[c as usize] > 0)
            .collect();
        let skipped_empty = row_nnz.len() as u64 - usable.len() as u64;
        if skipped_empty > 0 {
            tracing::warn!("{skipped_empty} cells have no expressed genes and are skipped");
        }
        let n_val = (val_split * usable.len() as f64).round() as usize;
        let mut keyed: Vec<(u64, u64)> = usable
            .iter()
            .map(|&c| (key(seed, Stream::Split, &[c]), c))
            .collect();
        if n_val > 0 && n_val < keyed.len() {
            keyed.select_nth_unstable(n_val);
        }
        let mut val: Vec<u64> = keyed[..n_val].iter().map(|&(_, c)| c).collect();
        let mut train: Vec<u64> = keyed[n_val..].iter().map(|&(_, c)| c).collect();
        val.sort_unstable();
        train.sort_unstable();
        Ok(Self::from_split(
            file_offsets,
            train,
            val,
            seed,
            block_size,
            skipped_empty,
        ))
    }

    /// A split stratified by class (fine-tuning a classifier, as scModelForge splits): of each
    /// class's usable cells, max(1, floor(val_split * n)) go to validation (none when
    /// `val_split` is 0), those with the smallest hash of (seed, cell id); the rest train.
    /// `class[c]` is cell c's class, `names` the classes' names for the error that a class
    /// has too few cells to appear in both parts.
    pub fn stratified(
        file_offsets: &[u64],
        row_nnz: &[u32],
        class: &[u32],
        names: &[String],
        val_split: f64,
        seed: u64,
        block_size: usize,
    ) -> Result<Self> {
        if !(0.0..1.0).contains(&val_split) {
            return Err(DataError::Config(format!(
                "training.val_split must be in [0, 1), got {val_split}"
            )));
        }
        if block_size == 0 || class.len() != row_nnz.len() {
            return Err(DataError::Config(
                "a stratified split needs one class per cell and a positive block size".into(),
            ));
        }
        let mut per_class: Vec<Vec<(u64, u64)>> = vec![Vec::new(); names.len()];
        let mut skipped_empty = 0u64;
        for (c, (&nnz, &k)) in row_nnz.iter().zip(class).enumerate() {
            if nnz == 0 {
                skipped_empty += 1;
                continue;
            }
            let Some(list) = per_class.get_mut(k as usize) else {
                return Err(DataError::Config(format!(
                    "cell {c} has class {k}, beyond the {} classes",
                    names.len()
                )));
            };
            list.push((key(seed, Stream::Split, &[c as u64]), c as u64));
        }
        if skipped_empty > 0 {
            tracing::warn!("{skipped_empty} cells have no expressed genes and are skipped");
        }
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (k, mut cells) in per_class.into_iter().enumerate() {
            let n = cells.len();
            let n_val = if val_split > 0.0 {
                ((val_split * n as f64).floor() as usize).max(1)
            } else {
                0
            };
            if n_val >= n && n > 0 {
                return Err(DataError::Config(format!(
                    "class {:?} has {n} cell(s) with expressed genes; with training.val_split = {val_split} every class needs at least {} (at least one for validation and one for training): remove the class's cells or merge it into another label",
                    names[k],
                    n_val + 1
                )));
            }
            cells.sort_unstable();
            val.extend(cells[..n_val].iter().map(|&(_, c)| c));
            train.extend(cells[n_val..].iter().map(|&(_, c)| c));
        }
        val.sort_unstable();
        train.sort_unstable();
        Ok(Self::from_split(
            file_offsets,
            train,
            val,
            seed,
            block_size,
            skipped_empty,
        ))
    }

    /// The plan of a given split: training cells cut into blocks that never straddle files.
    fn from_split(
        file_offsets: &[u64],
        train: Vec<u64>,
        val: Vec<u64>,
        seed: u64,
        block_size: usize,
        skipped_empty: u64,
    ) -> Self {
        let mut blocks = Vec::new();
        let mut i = 0;
        while i < train.len() {
            let file = file_offsets.partition_point(|&o| o <= train[i]);
            let file_end = file_offsets.get(file).copied().unwrap_or(u64::MAX);
            let mut j = i + 1;
            while j < train.len() && j - i < block_size && train[j] < file_end {
                j += 1;
            }
            blocks.push((i, j));
            i = j;
        }
        ShardPlan {
            seed,
            train,
            val,
            blocks,
            skipped_empty,
        }
    }

    /// Plan for a dataset: reads every file's row sizes (cheap for sparse X).
    pub fn for_dataset(
        dataset: &crate::dataset::Dataset,
        val_split: f64,
        seed: u64,
    ) -> Result<Self> {
        let nnz = dataset.row_nnz()?;
        Self::new(
            dataset.file_offsets(),
            &nnz,
            val_split,
            seed,
            DEFAULT_BLOCK_SIZE,
        )
    }

    /// The training cells of an epoch in the order they are consumed.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u64> {
        let mut blocks: Vec<usize> = (0..self.blocks.len()).collect();
        CounterRng::new(self.seed, Stream::BlockOrder, &[epoch]).shuffle(&mut blocks);
        let mut order = Vec::with_capacity(self.train.len());
        for b in blocks {
            let (lo, hi) = self.blocks[b];
            let at = order.len();
            order.extend_from_slice(&self.train[lo..hi]);
            CounterRng::new(self.seed, Stream::CellOrder, &[epoch, b as u64])
                .shuffle(&mut order[at..]);
        }
        order
    }

    pub fn steps(&self, split: Split, global_batch: usize) -> u64 {
        if global_batch == 0 {
            return 0;
        }
        match split {
            Split::Train => (self.train.len() / global_batch) as u64,
            Split::Val => self.val.len().div_ceil(global_batch) as u64,
        }
    }

    /// The cells of `split` in consumption order for `epoch`.
    pub fn order(&self, split: Split, epoch: u64) -> Vec<u64> {
        match split {
            Split::Train => self.epoch_order(epoch),
            Split::Val => self.val.clone(),
        }
    }
}

/// Rank `rank`'s cells at `step` from an epoch order (empty past the end).
pub fn rank_slice(
    order: &[u64],
    step: u64,
    rank: usize,
    batch_size: usize,
    world_size: usize,
) -> &[u64] {
    let g = batch_size * world_size;
    let lo = (step as usize * g + rank * batch_size).min(order.len());
    let hi = (lo + batch_size).min(order.len());
    &order[lo..hi]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn plan(n: usize, val: f64, seed: u64) -> ShardPlan {
        let mut nnz = vec![5u32; n];
        // a few empty cells
        for c in (0..n).step_by(97) {
            nnz[c] = 0;
        }
        ShardPlan::new(&[0, n as u64 / 3, n as u64], &nnz, val, seed, 16).unwrap()
    }

    #[test]
    fn stratified_split_puts_every_class_in_both_parts() {
        let n = 300;
        let nnz = vec![3u32; n];
        // class 0: 200 cells, class 1: 90, class 2: 10.
        let class: Vec<u32> = (0..n)
            .map(|c| {
                if c < 200 {
                    0
                } else if c < 290 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let p = ShardPlan::stratified(&[0, n as u64], &nnz, &class, &names, 0.25, 3, 16).unwrap();
        let count =
            |cells: &[u64], k: u32| cells.iter().filter(|&&c| class[c as usize] == k).count();
        assert_eq!(
            [count(&p.val, 0), count(&p.val, 1), count(&p.val, 2)],
            [50, 22, 2]
        );
        assert_eq!(p.train.len() + p.val.len(), n);
        let again =
            ShardPlan::stratified(&[0, n as u64], &nnz, &class, &names, 0.25, 3, 16).unwrap();
        assert_eq!(p, again);
        // A class of one cell cannot be in both parts.
        let mut lonely = class.clone();
        lonely[299] = 3;
        let names4: Vec<String> = ["a", "b", "c", "rare"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let e = ShardPlan::stratified(&[0, n as u64], &nnz, &lonely, &names4, 0.25, 3, 16)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"rare\" has 1 cell(s)") && e.contains("at least 2"),
            "{e}"
        );
        // Without validation every class trains whole.
        let p0 = ShardPlan::stratified(&[0, n as u64], &nnz, &lonely, &names4, 0.0, 3, 16).unwrap();
        assert_eq!((p0.train.len(), p0.val.len()), (n, 0));
    }

    #[test]
    fn split_disjoint_complete_deterministic() {
        let p = plan(1000, 0.1, 7);
        let n_empty = (0..1000).step_by(97).count();
        assert_eq!(p.skipped_empty, n_empty as u64);
        let usable = 1000 - n_empty;
        assert_eq!(p.val.len(), (0.1 * usable as f64).round() as usize);
        let t: HashSet<_> = p.train.iter().collect();
        let v: HashSet<_> = p.val.iter().collect();
        assert!(t.is_disjoint(&v));
        assert_eq!(t.len() + v.len(), usable);
        assert_eq!(p, plan(1000, 0.1, 7));
        assert_ne!(p.val, plan(1000, 0.1, 8).val);
        // blocks never cross the file boundary at 333
        for &(lo, hi) in &p.blocks {
            assert_eq!(p.train[lo] < 333, p.train[hi - 1] < 333);
        }
    }

    #[test]
    fn epoch_is_a_permutation_and_varies() {
        let p = plan(1000, 0.05, 1);
        let mut e0 = p.epoch_order(0);
        let e1 = p.epoch_order(1);
        assert_ne!(e0, e1);
        assert_eq!(e0, p.epoch_order(0));
        e0.sort_unstable();
        assert_eq!(e0, p.train);
    }

    #[test]
    fn world_size_invariant_global_batches() {
        let p = plan(1000, 0.05, 3);
        let order = p.epoch_order(2);
        let g = 48;
        let steps = p.steps(Split::Train, g);
        assert_eq!(steps as usize, p.train.len() / g);
        let mut used = HashSet::new();
        for s in 0..steps {
            let mut reference: Vec<u64> = rank_slice(&order, s, 0, g, 1).to_vec();
            reference.sort_unstable();
            for (world, b) in [(2, 24), (3, 16), (4, 12), (6, 8)] {
                let mut all = Vec::new();
                for r in 0..world {
                    let sl = rank_slice(&order, s, r, b, world);
                    assert_eq!(sl.len(), b);
                    all.extend_from_slice(sl);
                }
                all.sort_unstable();
                assert_eq!(all, reference, "step {s} world {world}");
            }
            for c in reference {
                assert!(used.insert(c), "cell {c} used twice");
            }
        }
        assert_eq!(used.len(), steps as usize * g);
        assert!(p.train.len() - used.len() < g);
    }

    #[test]
    fn validation_covers_everything() {
        let p = plan(500, 0.2, 9);
        let g = 7;
        let steps = p.steps(Split::Val, g);
        let order = p.order(Split::Val, 0);
        let mut seen = Vec::new();
        for s in 0..steps {
            for r in 0..g {
                seen.extend_from_slice(rank_slice(&order, s, r, 1, g));
            }
        }
        assert_eq!(seen, p.val);
    }

    #[test]
    fn bad_val_split() {
        assert!(ShardPlan::new(&[0, 10], &[1; 10], 1.0, 0, 4).is_err());
        assert!(ShardPlan::new(&[0, 10], &[1; 10], -0.1, 0, 4).is_err());
    }
}

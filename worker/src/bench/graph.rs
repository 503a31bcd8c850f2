//! The neighbourhood graph and its clustering, as scanpy builds and clusters it:
//! `sc.pp.neighbors` (exact k nearest neighbours by Euclidean distance, the cell itself
//! counted among the k, weighted by UMAP's fuzzy simplicial set and symmetrized) and
//! `sc.tl.leiden` (modularity with a resolution, Traag et al. 2019: local moving, refinement,
//! aggregation, repeated until nothing moves), seeded.

use data::rng::{CounterRng, Stream};

/// A symmetric weighted graph in adjacency lists; no self loops.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub adj: Vec<Vec<(usize, f64)>>,
}

impl Graph {
    pub fn n(&self) -> usize {
        self.adj.len()
    }
}

/// The `k` nearest neighbours of every row of `x` (row-major [n, dim]), the row itself first
/// (distance 0), by Euclidean distance; ties by index.
pub fn knn(x: &[f64], dim: usize, k: usize) -> Vec<Vec<(usize, f64)>> {
    use rayon::prelude::*;
    let n = x.len() / dim;
    let k = k.min(n);
    (0..n)
        .into_par_iter()
        .map(|i| {
            let xi = &x[i * dim..(i + 1) * dim];
            let mut d: Vec<(usize, f64)> = (0..n)
                .map(|j| {
                    if j == i {
                        return (j, 0.0);
                    }
                    let xj = &x[j * dim..(j + 1) * dim];
                    let s: f64 = xi.iter().zip(xj).map(|(a, b)| (a - b) * (a - b)).sum();
                    (j, s.sqrt())
                })
                .collect();
            let order = |a: &(usize, f64), b: &(usize, f64)| {
                (a.0 != i)
                    .cmp(&(b.0 != i))
                    .then(a.1.total_cmp(&b.1))
                    .then(a.0.cmp(&b.0))
            };
            // The k smallest, then sorted; a new vector of k so that no row keeps n entries'
            // worth of memory.
            if k < n {
                d.select_nth_unstable_by(k, order);
            }
            let mut near = d[..k].to_vec();
            near.sort_by(order);
            near
        })
        .collect()
}

/// UMAP's fuzzy simplicial set of a kNN list (umap-learn's `smooth_knn_dist` and
/// `compute_membership_strengths`, as scanpy calls them): per cell, rho = the nearest non-zero
/// distance and sigma such that the memberships sum to log2(k); w = exp(-(d - rho) / sigma);
/// then W + W^T - W * W^T.
pub fn umap_connectivities(knn: &[Vec<(usize, f64)>]) -> Graph {
    let n = knn.len();
    let k = knn.iter().map(|r| r.len()).max().unwrap_or(0);
    let target = (k as f64).log2();
    let mean_all: f64 = {
        let (s, c) = knn
            .iter()
            .flatten()
            .fold((0.0, 0usize), |(s, c), &(_, d)| (s + d, c + 1));
        s / c.max(1) as f64
    };
    let mut dir: Vec<std::collections::BTreeMap<usize, f64>> = vec![Default::default(); n];
    for (i, row) in knn.iter().enumerate() {
        let dists: Vec<f64> = row.iter().map(|p| p.1).collect();
        let rho = dists.iter().copied().find(|&d| d > 0.0).unwrap_or(0.0);
        let (mut lo, mut hi, mut mid) = (0.0f64, f64::INFINITY, 1.0f64);
        for _ in 0..64 {
            let psum: f64 = dists[1..]
                .iter()
                .map(|&d| {
                    let e = d - rho;
                    if e > 0.0 {
                        (-(e / mid)).exp()
                    } else {
                        1.0
                    }
                })
                .sum();
            if (psum - target).abs() < 1e-5 {
                break;
            }
            if psum > target {
                hi = mid;
                mid = (lo + hi) / 2.0;
            } else {
                lo = mid;
                if hi.is_infinite() {
                    mid *= 2.0;
                } else {
                    mid = (lo + hi) / 2.0;
                }
            }
        }
        let mean_i = dists.iter().sum::<f64>() / dists.len().max(1) as f64;
        let floor = 1e-3 * if rho > 0.0 { mean_i } else { mean_all };
        let sigma = mid.max(floor);
        for &(j, d) in row {
            if j == i {
                continue;
            }
            let w = if d - rho <= 0.0 || sigma == 0.0 {
                1.0
            } else {
                (-((d - rho) / sigma)).exp()
            };
            dir[i].insert(j, w);
        }
    }
    let mut sym: Vec<std::collections::BTreeMap<usize, f64>> = vec![Default::default(); n];
    for i in 0..n {
        for (&j, &w) in &dir[i] {
            let wt = dir[j].get(&i).copied().unwrap_or(0.0);
            let v = w + wt - w * wt;
            sym[i].insert(j, v);
            sym[j].insert(i, v);
        }
    }
    let adj = sym
        .into_iter()
        .map(|m| m.into_iter().filter(|&(_, w)| w > 0.0).collect())
        .collect();
    Graph { adj }
}

/// Fraction of `cells`' vertices in the largest connected component of the subgraph they
/// induce.
pub fn largest_component_fraction(g: &Graph, cells: &[usize]) -> f64 {
    if cells.is_empty() {
        return 0.0;
    }
    let mut inside = vec![false; g.n()];
    cells.iter().for_each(|&c| inside[c] = true);
    let mut seen = vec![false; g.n()];
    let mut best = 0;
    for &s in cells {
        if seen[s] {
            continue;
        }
        let (mut stack, mut size) = (vec![s], 0);
        seen[s] = true;
        while let Some(v) = stack.pop() {
            size += 1;
            for &(u, _) in &g.adj[v] {
                if inside[u] && !seen[u] {
                    seen[u] = true;
                    stack.push(u);
                }
            }
        }
        best = best.max(size);
    }
    best as f64 / cells.len() as f64
}

/// Modularity of `part` at `resolution` (weights as given; 2m = total degree).
pub fn modularity(g: &Graph, part: &[usize], resolution: f64) -> f64 {
    let deg: Vec<f64> = g.adj.iter().map(|r| r.iter().map(|e| e.1).sum()).collect();
    let m2: f64 = deg.iter().sum();
    if m2 == 0.0 {
        return 0.0;
    }
    let k = part.iter().max().map_or(0, |&c| c + 1);
    let (mut inner, mut tot) = (vec![0.0; k], vec![0.0; k]);
    for (v, row) in g.adj.iter().enumerate() {
        tot[part[v]] += deg[v];
        for &(u, w) in row {
            if part[u] == part[v] {
                inner[part[v]] += w;
            }
        }
    }
    (0..k)
        .map(|c| inner[c] / m2 - resolution * (tot[c] / m2).powi(2))
        .sum()
}

/// A weighted graph with node weights (sizes of aggregated nodes' degree), for Leiden's levels.
struct Level {
    adj: Vec<Vec<(usize, f64)>>,
    /// Weighted degree of each node (self loops included once per end).
    deg: Vec<f64>,
    /// Weight of each node's self loop (edges inside an aggregated node).
    self_w: Vec<f64>,
}

/// Moves nodes to the neighbouring community that most increases modularity, in a queue
/// (Leiden's fast local moving) until none moves; returns whether any did.
fn move_nodes(l: &Level, part: &mut [usize], gamma: f64, m2: f64, rng: &mut CounterRng) -> bool {
    let n = l.adj.len();
    let (mut tot, mut count) = (vec![0.0; n], vec![0usize; n]);
    for v in 0..n {
        tot[part[v]] += l.deg[v];
        count[part[v]] += 1;
    }
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut queue: std::collections::VecDeque<usize> = order.into_iter().collect();
    let mut queued = vec![true; n];
    let mut w_to = vec![0.0; n];
    let mut touched: Vec<usize> = Vec::new();
    let mut moved = false;
    while let Some(v) = queue.pop_front() {
        queued[v] = false;
        let cur = part[v];
        for &(u, w) in &l.adj[v] {
            if u == v {
                continue;
            }
            if w_to[part[u]] == 0.0 {
                touched.push(part[u]);
            }
            w_to[part[u]] += w;
        }
        tot[cur] -= l.deg[v];
        count[cur] -= 1;
        // Gain of joining c relative to being alone: w_to[c] - gamma * deg * tot[c] / m2
        // (an empty community: 0). Staying wins ties.
        let gain = |c: usize| w_to[c] - gamma * l.deg[v] * tot[c] / m2;
        let mut best = cur;
        let mut best_gain = gain(cur);
        for &c in &touched {
            if c != cur && gain(c) > best_gain + 1e-12 {
                best = c;
                best_gain = gain(c);
            }
        }
        if best_gain < -1e-12 {
            if let Some(e) = (0..n).find(|&c| count[c] == 0) {
                best = e;
            }
        }
        tot[best] += l.deg[v];
        count[best] += 1;
        for &c in &touched {
            w_to[c] = 0.0;
        }
        w_to[cur] = 0.0;
        touched.clear();
        if best != cur {
            part[v] = best;
            moved = true;
            for &(u, _) in &l.adj[v] {
                if u != v && part[u] != best && !queued[u] {
                    queued[u] = true;
                    queue.push_back(u);
                }
            }
        }
    }
    moved
}

/// Leiden's refinement: inside each community of `part`, nodes start alone and merge (in
/// random order, each singleton into the well-connected sub-community that increases
/// modularity most: the greedy limit of the paper's randomized choice, theta -> 0) so that
/// every refined community is connected.
fn refine(l: &Level, part: &[usize], gamma: f64, m2: f64, rng: &mut CounterRng) -> Vec<usize> {
    let n = l.adj.len();
    let mut refined: Vec<usize> = (0..n).collect();
    let mut tot: Vec<f64> = l.deg.clone();
    let mut size_comm = vec![0.0; n];
    for v in 0..n {
        size_comm[part[v]] += l.deg[v];
    }
    // External edge weight of each node / refined community to the rest of its community.
    let mut ext: Vec<f64> = (0..n)
        .map(|v| {
            l.adj[v]
                .iter()
                .filter(|&&(u, _)| u != v && part[u] == part[v])
                .map(|e| e.1)
                .sum()
        })
        .collect();
    let mut singleton = vec![true; n];
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut w_to = vec![0.0; n];
    let mut touched = Vec::new();
    for v in order {
        if !singleton[v] {
            continue;
        }
        let c = part[v];
        // v must itself be well connected to its community.
        if ext[v] < gamma * l.deg[v] * (size_comm[c] - l.deg[v]) / m2 {
            continue;
        }
        for &(u, w) in &l.adj[v] {
            if u == v || part[u] != c {
                continue;
            }
            let r = refined[u];
            if w_to[r] == 0.0 {
                touched.push(r);
            }
            w_to[r] += w;
        }
        let own = refined[v];
        let mut best = own;
        let mut best_gain = 0.0;
        for &r in &touched {
            if r == own {
                continue;
            }
            // The target sub-community must be well connected to its community.
            if ext[r] < gamma * tot[r] * (size_comm[c] - tot[r]) / m2 {
                continue;
            }
            let g = w_to[r] - gamma * l.deg[v] * tot[r] / m2;
            if g > best_gain + 1e-12 {
                best = r;
                best_gain = g;
            }
        }
        if best != own {
            // ext of the merged sub-community: both externals minus twice the edges between.
            ext[best] = ext[best] + ext[own] - 2.0 * w_to[best];
            tot[best] += l.deg[v];
            tot[own] -= l.deg[v];
            refined[v] = best;
            singleton[best] = false;
        }
        for &r in &touched {
            w_to[r] = 0.0;
        }
        touched.clear();
    }
    refined
}

fn renumber(p: &mut [usize]) -> usize {
    let mut map = std::collections::HashMap::new();
    for x in p.iter_mut() {
        let next = map.len();
        *x = *map.entry(*x).or_insert(next);
    }
    map.len()
}

/// Leiden clustering of `g` at `resolution`, seeded; cluster ids 0.. in order of first cell.
/// Whole passes (local moving, refinement, aggregation) repeat from the previous partition
/// until modularity stops increasing, as leidenalg's `n_iterations=-1`.
pub fn leiden(g: &Graph, resolution: f64, seed: u64) -> Vec<usize> {
    let mut part: Vec<usize> = (0..g.n()).collect();
    let mut q = f64::NEG_INFINITY;
    for pass in 0..32u64 {
        let next = leiden_pass(g, part.clone(), resolution, seed ^ (pass << 32));
        let q_next = modularity(g, &next, resolution);
        if q_next <= q + 1e-12 {
            break;
        }
        part = next;
        q = q_next;
    }
    part
}

/// One Leiden pass from the partition `init` of `g`'s vertices.
fn leiden_pass(g: &Graph, init: Vec<usize>, resolution: f64, seed: u64) -> Vec<usize> {
    let n = g.n();
    let deg: Vec<f64> = g.adj.iter().map(|r| r.iter().map(|e| e.1).sum()).collect();
    let m2: f64 = deg.iter().sum();
    if n == 0 || m2 == 0.0 {
        return (0..n).collect();
    }
    let mut level = Level {
        adj: g.adj.clone(),
        deg,
        self_w: vec![0.0; n],
    };
    // node_of[cell] = the node of the current level holding it.
    let mut node_of: Vec<usize> = (0..n).collect();
    let mut part = init;
    for round in 0..64u64 {
        let mut rng = CounterRng::new(seed, Stream::Split, &[0x1e1d_e700, round]);
        let moved = move_nodes(&level, &mut part, resolution, m2, &mut rng);
        let k = renumber(&mut part);
        if !moved && round > 0 || k == level.adj.len() {
            break;
        }
        let mut refined = refine(&level, &part, resolution, m2, &mut rng);
        let kr = renumber(&mut refined);
        // Aggregate by the refined partition; each aggregate starts in its community.
        let mut agg: Vec<std::collections::BTreeMap<usize, f64>> = vec![Default::default(); kr];
        let mut deg2 = vec![0.0; kr];
        let mut self2 = vec![0.0; kr];
        let mut part2 = vec![0; kr];
        for v in 0..level.adj.len() {
            let a = refined[v];
            deg2[a] += level.deg[v];
            self2[a] += level.self_w[v];
            part2[a] = part[v];
            for &(u, w) in &level.adj[v] {
                let b = refined[u];
                if a == b {
                    self2[a] += w;
                } else {
                    *agg[a].entry(b).or_insert(0.0) += w;
                }
            }
        }
        for c in node_of.iter_mut() {
            *c = refined[*c];
        }
        level = Level {
            adj: agg.into_iter().map(|m| m.into_iter().collect()).collect(),
            deg: deg2,
            self_w: self2,
        };
        part = part2;
    }
    let mut out: Vec<usize> = node_of.iter().map(|&v| part[v]).collect();
    renumber(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_edges(n: usize, edges: &[(usize, usize, f64)]) -> Graph {
        let mut adj = vec![Vec::new(); n];
        for &(a, b, w) in edges {
            adj[a].push((b, w));
            adj[b].push((a, w));
        }
        Graph { adj }
    }

    /// Four 8-cliques joined in a ring by single edges: modularity's optimum is the cliques.
    #[test]
    fn leiden_finds_planted_cliques() {
        let mut e = Vec::new();
        for c in 0..4 {
            for i in 0..8 {
                for j in i + 1..8 {
                    e.push((c * 8 + i, c * 8 + j, 1.0));
                }
            }
            e.push((c * 8, ((c + 1) % 4) * 8 + 1, 1.0));
        }
        let g = from_edges(32, &e);
        for seed in 0..5 {
            let p = leiden(&g, 1.0, seed);
            let truth: Vec<u32> = (0..32).map(|v| (v / 8) as u32).collect();
            let got: Vec<u32> = p.iter().map(|&c| c as u32).collect();
            assert_eq!(
                crate::bench::metrics::ari(&truth, &got),
                1.0,
                "seed {seed}: {p:?}"
            );
        }
        let p = leiden(&g, 1.0, 0);
        let q = modularity(&g, &p, 1.0);
        // 4 cliques of 28 edges + 4 bridges: Q = 4 * (28/116 - (58/232)^2) = 0.7155...
        assert!((q - (4.0 * (28.0 / 116.0 - 0.0625))).abs() < 1e-12, "{q}");
        // A low resolution merges communities.
        assert!(leiden(&g, 0.01, 0).iter().max().unwrap() < &3);
    }

    #[test]
    fn knn_and_connectivities() {
        // Two tight groups on a line, far apart.
        let x = [0.0, 0.1, 0.2, 10.0, 10.1, 10.3];
        let nn = knn(&x, 1, 3);
        assert_eq!(nn[0].iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(nn[5].iter().map(|p| p.0).collect::<Vec<_>>(), vec![5, 4, 3]);
        let g = umap_connectivities(&nn);
        // Symmetric, weights in (0, 1], nearest neighbour at weight 1.
        for (i, row) in g.adj.iter().enumerate() {
            for &(j, w) in row {
                assert!(w > 0.0 && w <= 1.0 + 1e-12);
                let back = g.adj[j].iter().find(|p| p.0 == i).unwrap().1;
                assert!((w - back).abs() < 1e-12);
            }
        }
        assert!((g.adj[0].iter().find(|p| p.0 == 1).unwrap().1 - 1.0).abs() < 1e-12);
        assert_eq!(largest_component_fraction(&g, &[0, 1, 2]), 1.0);
        assert_eq!(largest_component_fraction(&g, &[0, 1, 3]), 2.0 / 3.0);
    }
}

//! A 2-D UMAP layout of an embedding for the benchmark picture, as `sc.tl.umap` draws one
//! after `sc.pp.neighbors`: the same fuzzy neighbourhood graph as the clustering
//! ([`graph::umap_connectivities`] of the 15 nearest neighbours), then umap-learn's layout
//! optimisation (`optimize_layout_euclidean`): each edge pulls its ends together as often as
//! its weight says, five random cells push them apart per pull, the learning rate falls
//! linearly from 1 to 0 over the epochs. scanpy's defaults: min_dist 0.5, spread 1 (a = 0.583,
//! b = 1.334), 500 epochs up to 10,000 cells and 200 above. It starts from the first two
//! principal components (umap-learn's `init="pca"`; scanpy's default is a spectral start),
//! scaled to [0, 10], and is sequential and seeded, so the same embedding gives the same
//! picture.

use data::rng::{CounterRng, Stream};

use super::graph;

/// The curve 1 / (1 + a·d^(2b)) that umap-learn fits for min_dist 0.5 and spread 1.
const A: f64 = 0.583_030_0;
const B: f64 = 1.334_166_9;
/// Negative samples per positive one, and the repulsion's weight.
const NEGATIVE_RATE: f64 = 5.0;
const GAMMA: f64 = 1.0;
/// Gradient clip per coordinate.
const CLIP: f64 = 4.0;

/// Neighbours of the graph (scanpy's `n_neighbors`).
pub const NEIGHBORS: usize = 15;

/// umap-learn's epoch count for `n` cells.
pub fn epochs_for(n: usize) -> usize {
    if n <= 10_000 {
        500
    } else {
        200
    }
}

/// The layout [n, 2] of `x` (row-major [n, dim]), starting from `init` [n, 2] (the first two
/// principal components), seeded by `seed`.
pub fn layout(x: &[f64], dim: usize, init: &[f64], seed: u64) -> Vec<f64> {
    let n = x.len() / dim.max(1);
    assert_eq!(init.len(), 2 * n, "init is [n, 2]");
    let g = graph::umap_connectivities(&graph::knn(x, dim, NEIGHBORS));
    optimize(&g, scaled(init), epochs_for(n), seed)
}

/// `init` with each coordinate mapped onto [0, 10] (umap-learn's last step before the
/// optimisation); a constant coordinate becomes 0.
fn scaled(init: &[f64]) -> Vec<f64> {
    let mut out = init.to_vec();
    for c in 0..2 {
        let col = init.iter().skip(c).step_by(2);
        let (lo, hi) = col.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &v| {
            (l.min(v), h.max(v))
        });
        let span = hi - lo;
        for v in out.iter_mut().skip(c).step_by(2) {
            *v = if span > 0.0 {
                10.0 * (*v - lo) / span
            } else {
                0.0
            };
        }
    }
    out
}

/// umap-learn's `optimize_layout_euclidean` on the directed edges of `g` (both directions of
/// every pair, as the symmetric sparse matrix lists them), moving both ends of a pulled edge.
fn optimize(g: &graph::Graph, mut emb: Vec<f64>, epochs: usize, seed: u64) -> Vec<f64> {
    let n = g.n();
    let edges: Vec<(usize, usize, f64)> = g
        .adj
        .iter()
        .enumerate()
        .flat_map(|(i, row)| row.iter().map(move |&(j, w)| (i, j, w)))
        .collect();
    let max_w = edges.iter().map(|e| e.2).fold(0.0, f64::max);
    if n < 2 || max_w <= 0.0 || epochs == 0 {
        return emb;
    }
    // Edges too weak to be sampled once in the run are dropped (umap-learn does the same).
    let edges: Vec<(usize, usize, f64)> = edges
        .into_iter()
        .filter(|e| e.2 >= max_w / epochs as f64)
        .collect();
    let per_sample: Vec<f64> = edges.iter().map(|e| max_w / e.2).collect();
    let per_negative: Vec<f64> = per_sample.iter().map(|p| p / NEGATIVE_RATE).collect();
    let mut next_sample = per_sample.clone();
    let mut next_negative = per_negative.clone();
    let mut rng = CounterRng::new(seed, Stream::Split, &[0x0a3a_9000]);
    for epoch in 0..epochs {
        let alpha = 1.0 - epoch as f64 / epochs as f64;
        let now = epoch as f64;
        for (e, &(i, j, _)) in edges.iter().enumerate() {
            if next_sample[e] > now {
                continue;
            }
            let d2 = dist2(&emb, i, j);
            let coeff = if d2 > 0.0 {
                -2.0 * A * B * d2.powf(B - 1.0) / (A * d2.powf(B) + 1.0)
            } else {
                0.0
            };
            for c in 0..2 {
                let grad = (coeff * (emb[2 * i + c] - emb[2 * j + c])).clamp(-CLIP, CLIP);
                emb[2 * i + c] += grad * alpha;
                emb[2 * j + c] -= grad * alpha;
            }
            next_sample[e] += per_sample[e];
            let negatives = ((now - next_negative[e]) / per_negative[e])
                .floor()
                .max(0.0);
            for _ in 0..negatives as usize {
                let k = rng.below(n as u64) as usize;
                if k == i {
                    continue;
                }
                let d2 = dist2(&emb, i, k);
                let coeff = if d2 > 0.0 {
                    2.0 * GAMMA * B / ((0.001 + d2) * (A * d2.powf(B) + 1.0))
                } else {
                    0.0
                };
                for c in 0..2 {
                    let grad = if coeff > 0.0 {
                        (coeff * (emb[2 * i + c] - emb[2 * k + c])).clamp(-CLIP, CLIP)
                    } else {
                        CLIP
                    };
                    emb[2 * i + c] += grad * alpha;
                }
            }
            next_negative[e] += negatives * per_negative[e];
        }
    }
    emb
}

fn dist2(emb: &[f64], i: usize, j: usize) -> f64 {
    let (dx, dy) = (emb[2 * i] - emb[2 * j], emb[2 * i + 1] - emb[2 * j + 1]);
    dx * dx + dy * dy
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five well separated clusters in 8 dimensions, 40 points each, lying along one direction
    /// so that the start (the first two principal components) is nearly one line.
    fn clusters() -> (Vec<f64>, Vec<usize>, usize) {
        let (k, per, dim) = (5, 40, 8);
        let mut rng = CounterRng::new(3, Stream::Synth, &[]);
        let mut x = Vec::new();
        let mut label = Vec::new();
        for c in 0..k {
            for _ in 0..per {
                for d in 0..dim {
                    let centre = if d == 0 { 12.0 * c as f64 } else { 0.0 };
                    x.push(centre + rng.next_f64() - 0.5);
                }
                label.push(c);
            }
        }
        (x, label, dim)
    }

    fn init(x: &[f64], n: usize, dim: usize) -> Vec<f64> {
        super::super::pca::scores(x, n, dim, 2).unwrap()
    }

    #[test]
    fn clusters_stay_apart_and_the_layout_is_seeded() {
        let (x, label, dim) = clusters();
        let n = label.len();
        let start = init(&x, n, dim);
        let a = layout(&x, dim, &start, 0);
        assert_eq!(a.len(), 2 * n);
        assert!(a.iter().all(|v| v.is_finite()));
        // Every point's nearest neighbour in the layout is in its own cluster.
        for i in 0..n {
            let nearest = (0..n)
                .filter(|&j| j != i)
                .min_by(|&p, &q| dist2(&a, i, p).total_cmp(&dist2(&a, i, q)))
                .unwrap();
            assert_eq!(label[nearest], label[i], "point {i}");
        }
        // Clusters are compact against the gaps between them: the largest distance inside a
        // cluster is below the smallest distance between two clusters.
        let (mut inside, mut between) = (0.0f64, f64::INFINITY);
        for i in 0..n {
            for j in i + 1..n {
                let d = dist2(&a, i, j).sqrt();
                if label[i] == label[j] {
                    inside = inside.max(d);
                } else {
                    between = between.min(d);
                }
            }
        }
        assert!(inside < between, "inside {inside} vs between {between}");
        // The optimisation moved the points: the start is not returned.
        assert_ne!(a, scaled(&start));
        // Same seed, same layout; another seed, another one.
        assert_eq!(a, layout(&x, dim, &start, 0));
        assert_ne!(a, layout(&x, dim, &start, 1));
    }

    #[test]
    fn degenerate_inputs_do_not_fail() {
        // One cell, and cells that all coincide.
        assert_eq!(layout(&[1.0, 2.0], 2, &[0.0, 0.0], 0), vec![0.0, 0.0]);
        let same = vec![0.5; 3 * 10];
        let out = layout(&same, 3, &[0.0; 20], 0);
        assert!(out.iter().all(|v| v.is_finite()));
        assert_eq!(scaled(&[1.0, 5.0, 3.0, 5.0]), vec![0.0, 0.0, 10.0, 0.0]);
    }
}

//! Evaluation of pose predictions against ground truth, as sleap-nn 0.3.5's `Evaluator`
//! computes it with `match_method="oks"`:
//!
//! 1. Frame pairing: each prediction video is matched to a ground-truth video (shape rejection,
//!    exact path, then the shortest unique trailing path), and each ground-truth frame with user
//!    instances is paired with the prediction frame of the same index. Ground-truth frames
//!    without a prediction frame are left out entirely (their instances are not false
//!    negatives), as in sleap-nn.
//! 2. Instance matching: predictions in descending score order each take the available
//!    ground-truth instance with the highest OKS above the threshold. A ground-truth instance
//!    whose visible points span a zero-area box is scored by mean pixel distance instead
//!    (`1 - mean / 50`, floored at 0), since OKS would need bit-exact equality there.
//! 3. Metrics over the matched pairs: VOC-style mAP/mAR over OKS (and PCK) thresholds
//!    0.5:0.05:0.95 with 101 recall points, mean OKS, per-node distances and their
//!    percentiles, PCK at 1..10 px, and node visibility precision/recall.
//!
//! Like sleap-nn, unmatched predictions are not counted as false positives anywhere: precision
//! in the VOC metrics is over matched pairs whose score clears the threshold.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::labels::{Instance, InstanceKind, LabeledFrame, Labels, Video, VideoSource};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(
        "no frame pairs: no prediction frame shares a video and frame index with a ground-truth \
         frame that has {what} (ground-truth videos: {gt_videos}; prediction videos: {pred_videos})"
    )]
    NoFramePairs {
        what: &'static str,
        gt_videos: String,
        pred_videos: String,
    },

    #[error("evaluation option {field} = {value}: {problem}")]
    InvalidOption {
        field: &'static str,
        value: f64,
        problem: &'static str,
    },

    #[error(
        "video '{video}' frame {frame_idx}: {side} instance {instance} has {found} points but \
         the ground-truth instances it is compared with have {expected}"
    )]
    PointCount {
        video: String,
        frame_idx: u64,
        side: &'static str,
        instance: usize,
        found: usize,
        expected: usize,
    },

    #[error(
        "video '{video}' frame {frame_idx}: the ground-truth frame has no instances but the \
         prediction frame has some (sleap-nn cannot score this frame either)"
    )]
    EmptyGroundTruthFrame { video: String, frame_idx: u64 },

    #[error(
        "video '{video}' frame {frame_idx}: prediction instance {instance} is a user instance \
         and was matched; predictions must be predicted instances (they carry the score that \
         ranks them)"
    )]
    UserInstanceInPredictions {
        video: String,
        frame_idx: u64,
        instance: usize,
    },
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// The Evaluator's knobs, with sleap-nn's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalOptions {
    /// Per-node OKS spread (`oks_stddev`).
    pub oks_stddev: f64,
    /// OKS scale for every ground-truth instance (`oks_scale`); `None` uses the area of the
    /// bounding box of the instance's visible points.
    pub oks_scale: Option<f64>,
    /// A pair matches only with OKS strictly above this (`match_threshold`).
    pub match_threshold: f64,
    /// Score only user instances of the ground truth, and only frames that have some.
    pub user_labels_only: bool,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            oks_stddev: 0.025,
            oks_scale: None,
            match_threshold: 0.0,
            user_labels_only: true,
        }
    }
}

/// Below this bounding-box area (px²) a ground-truth instance is matched by pixel distance.
pub const DEGENERATE_AREA_EPS: f64 = 1e-9;
/// Mean distance (px) at which the degenerate-instance match score reaches 0.
pub const DEGENERATE_PIXEL_THRESHOLD: f64 = 50.0;

/// One paired frame: indices into the ground truth's and the predictions' `frames`, and the
/// ground-truth instances that take part (all of them, or only user instances).
#[derive(Debug, Clone, PartialEq)]
pub struct FramePair {
    pub gt_frame: usize,
    pub pred_frame: usize,
    pub gt_instances: Vec<usize>,
}

/// A matched (ground truth, prediction) pair: frame and instance indices into each labels'
/// `frames[..].instances`, and the OKS (or pixel-distance score) that matched them.
#[derive(Debug, Clone, PartialEq)]
pub struct MatchedPair {
    pub gt_frame: usize,
    pub gt_instance: usize,
    pub pred_frame: usize,
    pub pred_instance: usize,
    pub oks: f64,
}

/// VOC-style precision/recall over a match score (`oks_voc.*` or `pck_voc.*`).
///
/// With no matched pair at all, sleap-nn reports every entry as 0; here the vectors are then
/// empty and `map`/`mar` are 0, and [`Metrics::to_json`] writes the zeros.
#[derive(Debug, Clone, PartialEq)]
pub struct VocMetrics {
    pub match_score_thresholds: Vec<f64>,
    pub recall_thresholds: Vec<f64>,
    /// Match score of each pair, in descending order of prediction score.
    pub match_scores: Vec<f64>,
    /// `[match threshold][recall threshold]` interpolated precision.
    pub precisions: Vec<Vec<f64>>,
    /// Final recall per match threshold.
    pub recalls: Vec<f64>,
    pub ap: Vec<f64>,
    pub ar: Vec<f64>,
    pub map: f64,
    pub mar: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DistanceMetrics {
    /// Ground-truth frame index of each matched pair.
    pub frame_idxs: Vec<u64>,
    /// Ground-truth video path of each matched pair.
    pub video_paths: Vec<String>,
    /// `[pair][node]` Euclidean error in px, NaN where either point is missing.
    pub dists: Vec<Vec<f64>>,
    pub avg: f64,
    pub p50: f64,
    pub p75: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PckMetrics {
    /// Distance thresholds in px: 1, 2, ..., 10.
    pub thresholds: Vec<f64>,
    /// `[pair][node][threshold]`: the node's error is below the threshold.
    pub pcks: Vec<Vec<Vec<bool>>>,
    /// Per node, the fraction of (pair, threshold) cells that pass.
    pub mpck_parts: Vec<f64>,
    pub mpck: f64,
    pub pck_at_5: f64,
    pub pck_at_10: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VisibilityMetrics {
    /// Nodes visible in both.
    pub tp: u64,
    /// Nodes predicted but missing in the ground truth.
    pub fp: u64,
    /// Nodes missing in both.
    pub tn: u64,
    /// Nodes in the ground truth but not predicted.
    pub fn_: u64,
    pub precision: f64,
    pub recall: f64,
}

/// Everything sleap-nn's `Evaluator.evaluate()` reports for OKS matching.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub oks_voc: VocMetrics,
    pub pck_voc: VocMetrics,
    /// Mean OKS of the matched pairs (NaN without pairs).
    pub moks: f64,
    pub distance: DistanceMetrics,
    pub pck: PckMetrics,
    pub visibility: VisibilityMetrics,
    /// Not in sleap-nn's dict: how many frames were paired, pairs matched, and ground-truth
    /// instances left unmatched.
    pub n_frame_pairs: usize,
    pub n_matched: usize,
    pub n_false_negatives: usize,
}

/// Scores `predictions` against `ground_truth` as sleap-nn's `Evaluator(...).evaluate()` does.
pub fn evaluate(
    ground_truth: &Labels,
    predictions: &Labels,
    opts: &EvalOptions,
) -> Result<Metrics> {
    check_options(opts)?;
    let pairs = find_frame_pairs(ground_truth, predictions, opts.user_labels_only);
    if pairs.is_empty() {
        return Err(EvalError::NoFramePairs {
            what: if opts.user_labels_only {
                "user instances"
            } else {
                "a labeled frame"
            },
            gt_videos: video_list(ground_truth),
            pred_videos: video_list(predictions),
        });
    }
    let (matched, n_false_negatives) = match_frame_pairs(ground_truth, predictions, &pairs, opts)?;
    let distance = distance_metrics(ground_truth, predictions, &matched);
    let pck = pck_metrics(&distance.dists);
    let npig = matched.len() + n_false_negatives;
    let detection_scores: Vec<f64> = matched
        .iter()
        .map(|m| prediction_score(&predictions.frames[m.pred_frame].instances[m.pred_instance]))
        .collect();
    let oks_scores: Vec<f64> = matched.iter().map(|m| m.oks).collect();
    let pck_scores: Vec<f64> = pck
        .pcks
        .iter()
        .map(|nodes| {
            let per_node: Vec<f64> = nodes.iter().map(|t| fraction(t)).collect();
            mean(&per_node)
        })
        .collect();
    let moks = if oks_scores.is_empty() {
        f64::NAN
    } else {
        mean(&oks_scores)
    };
    Ok(Metrics {
        oks_voc: voc_metrics(&oks_scores, &detection_scores, npig),
        pck_voc: voc_metrics(&pck_scores, &detection_scores, npig),
        moks,
        visibility: visibility_metrics(ground_truth, predictions, &matched),
        distance,
        pck,
        n_frame_pairs: pairs.len(),
        n_matched: matched.len(),
        n_false_negatives,
    })
}

fn check_options(opts: &EvalOptions) -> Result<()> {
    if !(opts.oks_stddev.is_finite() && opts.oks_stddev > 0.0) {
        return Err(EvalError::InvalidOption {
            field: "oks_stddev",
            value: opts.oks_stddev,
            problem: "must be a finite number greater than 0",
        });
    }
    if let Some(scale) = opts.oks_scale {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(EvalError::InvalidOption {
                field: "oks_scale",
                value: scale,
                problem: "must be a finite number greater than 0",
            });
        }
    }
    if !opts.match_threshold.is_finite() {
        return Err(EvalError::InvalidOption {
            field: "match_threshold",
            value: opts.match_threshold,
            problem: "must be finite",
        });
    }
    Ok(())
}

fn video_list(labels: &Labels) -> String {
    if labels.videos.is_empty() {
        return "(none)".to_string();
    }
    let keys: Vec<String> = labels.videos.iter().map(video_key).collect();
    keys.join(", ")
}

/// The path sleap-nn reports a video by: the original file of an embedded video, the first
/// image of a sequence, else the filename.
pub fn video_key(video: &Video) -> String {
    match &video.source {
        VideoSource::ImageSequence { files } if !files.is_empty() => files[0].clone(),
        _ => video.filename.clone(),
    }
}

fn video_of(labels: &Labels, frame: &LabeledFrame) -> String {
    labels
        .videos
        .get(frame.video)
        .map(video_key)
        .unwrap_or_else(|| format!("video #{}", frame.video))
}

/// The ground-truth video each prediction video corresponds to (by index), following the
/// parts of sleap-io's AUTO matcher that need no file access: videos whose (frames, height,
/// width) are both known and differ never match; then an exact (normalized) path match wins;
/// then the shortest trailing run of path components that exactly one candidate shares.
/// sleap-io's file-identity and pose-content rungs are not reproduced.
fn same_embedded_frames(a: &Video, b: &Video) -> bool {
    match (&a.source, &b.source) {
        (
            VideoSource::Embedded {
                file: fa,
                dataset: da,
                ..
            },
            VideoSource::Embedded {
                file: fb,
                dataset: db,
                ..
            },
        ) => {
            da == db
                && (fa == fb
                    || matches!((fa.canonicalize(), fb.canonicalize()), (Ok(x), Ok(y)) if x == y))
        }
        _ => false,
    }
}

pub fn match_videos(ground_truth: &Labels, predictions: &Labels) -> Vec<Option<usize>> {
    predictions
        .videos
        .iter()
        .map(|pred| {
            let viable: Vec<usize> = (0..ground_truth.videos.len())
                .filter(|&g| shapes_compatible(&ground_truth.videos[g], pred))
                .collect();
            // The same frames: both read the same dataset of the same HDF5 file (predictions that
            // refer to the embedded frames of the labels they were made from).
            if let Some(&g) = viable
                .iter()
                .find(|&&g| same_embedded_frames(&ground_truth.videos[g], pred))
            {
                return Some(g);
            }
            let pred_parts = path_parts(&video_key(pred));
            if let Some(&g) = viable
                .iter()
                .find(|&&g| path_parts(&video_key(&ground_truth.videos[g])) == pred_parts)
            {
                return Some(g);
            }
            let candidate_parts: Vec<(usize, Vec<String>)> = viable
                .iter()
                .map(|&g| (g, path_parts(&video_key(&ground_truth.videos[g]))))
                .collect();
            let max_depth = ground_truth
                .videos
                .iter()
                .map(|v| path_parts(&video_key(v)).len())
                .chain([pred_parts.len()])
                .max()
                .unwrap_or(0);
            for depth in 1..=max_depth {
                if pred_parts.len() < depth {
                    continue;
                }
                let leaf = &pred_parts[pred_parts.len() - depth..];
                let matches: Vec<usize> = candidate_parts
                    .iter()
                    .filter(|(_, parts)| {
                        parts.len() >= depth && &parts[parts.len() - depth..] == leaf
                    })
                    .map(|(g, _)| *g)
                    .collect();
                if matches.len() == 1 {
                    return Some(matches[0]);
                }
            }
            None
        })
        .collect()
}

fn shapes_compatible(a: &Video, b: &Video) -> bool {
    match (a.shape, b.shape) {
        // Channels are not compared: grayscale detection is unreliable (as in sleap-io).
        (Some(a), Some(b)) => a[..3] == b[..3],
        _ => true,
    }
}

/// A path's components as `pathlib.PurePosixPath(p).parts` gives them after backslashes become
/// slashes: the root "/" first if absolute, empty and "." components dropped.
fn path_parts(path: &str) -> Vec<String> {
    let path = path.replace('\\', "/");
    let mut parts = Vec::new();
    if path.starts_with('/') {
        parts.push("/".to_string());
    }
    parts.extend(
        path.split('/')
            .filter(|p| !p.is_empty() && *p != ".")
            .map(str::to_string),
    );
    parts
}

/// sleap-nn's `find_frame_pairs`: prediction videos in order, and for each the frames of its
/// ground-truth video in ground-truth order, paired with the prediction frame of the same
/// index (the last one if the predictions repeat it). With `user_labels_only`, ground-truth
/// frames without user instances are dropped and only user instances are compared.
pub fn find_frame_pairs(
    ground_truth: &Labels,
    predictions: &Labels,
    user_labels_only: bool,
) -> Vec<FramePair> {
    let mut pred_by_key: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for (i, frame) in predictions.frames.iter().enumerate() {
        // A duplicated frame resolves to its last occurrence, as sleap-io's frame index does.
        pred_by_key.insert((frame.video, frame.frame_idx), i);
    }
    let mut pairs = Vec::new();
    for (pred_video, gt_video) in match_videos(ground_truth, predictions)
        .into_iter()
        .enumerate()
    {
        let Some(gt_video) = gt_video else { continue };
        for (gt_frame, frame) in ground_truth.frames.iter().enumerate() {
            if frame.video != gt_video {
                continue;
            }
            let gt_instances: Vec<usize> = (0..frame.instances.len())
                .filter(|&i| !user_labels_only || frame.instances[i].is_user())
                .collect();
            if user_labels_only && gt_instances.is_empty() {
                continue;
            }
            if let Some(&pred_frame) = pred_by_key.get(&(pred_video, frame.frame_idx)) {
                pairs.push(FramePair {
                    gt_frame,
                    pred_frame,
                    gt_instances,
                });
            }
        }
    }
    pairs
}

/// Area of the bounding box of the non-NaN coordinates (x and y taken separately, as
/// `np.nanmin`/`np.nanmax` do); NaN when a coordinate has no value at all.
pub fn instance_area(points: &[[f64; 2]]) -> f64 {
    let mut extent = [f64::NAN; 2];
    for (axis, e) in extent.iter_mut().enumerate() {
        let values = points.iter().map(|p| p[axis]).filter(|v| !v.is_nan());
        let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
        if lo <= hi {
            *e = hi - lo;
        }
    }
    extent[0] * extent[1]
}

fn missing(p: &[f64; 2]) -> bool {
    p[0].is_nan() || p[1].is_nan()
}

/// Object keypoint similarity of one prediction to one ground-truth instance, COCO-eval style:
/// mean over the ground truth's visible nodes of `exp(-d² / ((2σ)² · 2(s + ε)))`, a missing
/// predicted node counting 0. `scale` defaults to the ground truth's bounding-box area. NaN
/// when the ground truth has no visible node.
pub fn oks(gt: &[[f64; 2]], pred: &[[f64; 2]], scale: Option<f64>, stddev: f64) -> f64 {
    let scale = scale.unwrap_or_else(|| instance_area(gt));
    let spread_factor = (2.0 * stddev).powi(2);
    let scale_factor = 2.0 * (scale + f64::EPSILON);
    let normalization = spread_factor * scale_factor;
    let mut total = 0.0;
    let mut n_visible = 0usize;
    for (g, p) in gt.iter().zip(pred) {
        if missing(g) {
            continue;
        }
        n_visible += 1;
        if missing(p) {
            continue;
        }
        let (dx, dy) = (g[0] - p[0], g[1] - p[1]);
        total += (-((dx * dx + dy * dy) / normalization)).exp();
    }
    total / n_visible as f64
}

/// The match score sleap-nn uses for a ground truth with a zero-area box: `1 - mean / 50` over
/// the nodes visible in both, at least 0; 0 with no such node.
pub fn distance_match_score(gt: &[[f64; 2]], pred: &[[f64; 2]]) -> f64 {
    let dists: Vec<f64> = gt
        .iter()
        .zip(pred)
        .filter(|(g, p)| !missing(g) && !missing(p))
        .map(|(g, p)| ((p[0] - g[0]).powi(2) + (p[1] - g[1]).powi(2)).sqrt())
        .collect();
    if dists.is_empty() {
        return 0.0;
    }
    (1.0 - mean(&dists) / DEGENERATE_PIXEL_THRESHOLD).max(0.0)
}

fn prediction_score(instance: &Instance) -> f64 {
    match instance.kind {
        InstanceKind::Predicted { score } => score as f64,
        InstanceKind::User => f64::NAN,
    }
}

/// Indices of `values` sorted descending, ties kept in order, NaN last (numpy's
/// `argsort(-x, kind="mergesort")`).
fn argsort_descending(values: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (values[a], values[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => std::cmp::Ordering::Equal,
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
        }
    });
    order
}

/// Greedy matching in every frame pair (sleap-nn's `match_instances`). Returns the matched
/// pairs in frame-pair order and the number of ground-truth instances left unmatched.
pub fn match_frame_pairs(
    ground_truth: &Labels,
    predictions: &Labels,
    pairs: &[FramePair],
    opts: &EvalOptions,
) -> Result<(Vec<MatchedPair>, usize)> {
    let mut matched = Vec::new();
    let mut n_false_negatives = 0;
    for pair in pairs {
        let gt_frame = &ground_truth.frames[pair.gt_frame];
        let pred_frame = &predictions.frames[pair.pred_frame];
        let video = || video_of(ground_truth, gt_frame);
        // sleap-nn ranks the predicted instances' scores, then uses those ranks as indices
        // into the frame's whole instance list; mirrored so mixed frames pair identically.
        let scores: Vec<f64> = pred_frame
            .instances
            .iter()
            .filter(|i| !i.is_user())
            .map(prediction_score)
            .collect();
        let mut available = pair.gt_instances.clone();
        for pred_idx in argsort_descending(&scores) {
            if available.is_empty() {
                return Err(EvalError::EmptyGroundTruthFrame {
                    video: video(),
                    frame_idx: gt_frame.frame_idx,
                });
            }
            let pred = &pred_frame.instances[pred_idx];
            let mut best: Option<(usize, f64)> = None;
            for (slot, &gt_idx) in available.iter().enumerate() {
                let gt = &gt_frame.instances[gt_idx];
                if pred.points.len() != gt.points.len() {
                    return Err(EvalError::PointCount {
                        video: video(),
                        frame_idx: gt_frame.frame_idx,
                        side: "prediction",
                        instance: pred_idx,
                        found: pred.points.len(),
                        expected: gt.points.len(),
                    });
                }
                let score = if instance_area(&gt.points) < DEGENERATE_AREA_EPS {
                    distance_match_score(&gt.points, &pred.points)
                } else {
                    oks(&gt.points, &pred.points, opts.oks_scale, opts.oks_stddev)
                };
                // NaN and scores at or under the threshold are no candidates; the first of
                // equal scores wins.
                if score > opts.match_threshold && best.is_none_or(|(_, b)| score > b) {
                    best = Some((slot, score));
                }
            }
            let Some((slot, score)) = best else { continue };
            if pred.is_user() {
                return Err(EvalError::UserInstanceInPredictions {
                    video: video(),
                    frame_idx: gt_frame.frame_idx,
                    instance: pred_idx,
                });
            }
            let gt_instance = available.remove(slot);
            matched.push(MatchedPair {
                gt_frame: pair.gt_frame,
                gt_instance,
                pred_frame: pair.pred_frame,
                pred_instance: pred_idx,
                oks: score,
            });
            if available.is_empty() {
                break;
            }
        }
        n_false_negatives += available.len();
    }
    Ok((matched, n_false_negatives))
}

/// `numpy.linspace(start, stop, num)` to the bit: `i * step + start`, the last one `stop`.
fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    let step = (stop - start) / (num - 1) as f64;
    let mut v: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    v[num - 1] = stop;
    v
}

/// The OKS thresholds 0.5:0.05:0.95 at which a matched pair counts as a true positive.
pub fn match_score_thresholds() -> Vec<f64> {
    linspace(0.5, 0.95, 10)
}

/// COCO's 101 recall points 0:0.01:1.
pub fn recall_thresholds() -> Vec<f64> {
    linspace(0.0, 1.0, 101)
}

/// PCK distance thresholds in px, 1..10.
pub fn pck_thresholds() -> Vec<f64> {
    linspace(1.0, 10.0, 10)
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn fraction(flags: &[bool]) -> f64 {
    flags.iter().filter(|&&f| f).count() as f64 / flags.len() as f64
}

/// sleap-nn's `voc_metrics`: pairs ranked by prediction score; at each match threshold a pair
/// is a true positive when its match score reaches it, recall is over all ground-truth
/// instances of the paired frames (`npig`), precision is made non-increasing and read at the
/// 101 recall points.
pub fn voc_metrics(match_scores: &[f64], detection_scores: &[f64], npig: usize) -> VocMetrics {
    if match_scores.is_empty() {
        return VocMetrics {
            match_score_thresholds: Vec::new(),
            recall_thresholds: Vec::new(),
            match_scores: Vec::new(),
            precisions: Vec::new(),
            recalls: Vec::new(),
            ap: Vec::new(),
            ar: Vec::new(),
            map: 0.0,
            mar: 0.0,
        };
    }
    let order = argsort_descending(detection_scores);
    let ranked: Vec<f64> = order.iter().map(|&i| match_scores[i]).collect();
    let thresholds = match_score_thresholds();
    let recall_points = recall_thresholds();
    let mut precisions = Vec::with_capacity(thresholds.len());
    let mut recalls = Vec::with_capacity(thresholds.len());
    for &threshold in &thresholds {
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut rc = Vec::with_capacity(ranked.len());
        let mut pr = Vec::with_capacity(ranked.len());
        for &s in &ranked {
            // A NaN score is neither (numpy compares it false both ways).
            tp += usize::from(s >= threshold);
            fp += usize::from(s < threshold);
            rc.push(tp as f64 / npig as f64);
            pr.push(tp as f64 / ((fp + tp) as f64 + f64::EPSILON));
        }
        for i in (1..pr.len()).rev() {
            if pr[i] > pr[i - 1] {
                pr[i - 1] = pr[i];
            }
        }
        let precision: Vec<f64> = recall_points
            .iter()
            .map(|&r| {
                let i = rc.partition_point(|&x| x < r);
                pr.get(i).copied().unwrap_or(0.0)
            })
            .collect();
        recalls.push(rc[rc.len() - 1]);
        precisions.push(precision);
    }
    let ap: Vec<f64> = precisions.iter().map(|p| mean(p)).collect();
    let all: Vec<f64> = precisions.iter().flatten().copied().collect();
    VocMetrics {
        map: mean(&all),
        mar: mean(&recalls),
        ar: recalls.clone(),
        ap,
        recalls,
        precisions,
        match_scores: ranked,
        recall_thresholds: recall_points,
        match_score_thresholds: thresholds,
    }
}

/// `numpy.percentile(sorted, q)` with linear interpolation, including numpy's two-sided lerp.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let virtual_index = (n - 1) as f64 * (q / 100.0);
    let lo = (virtual_index.floor() as usize).min(n - 1);
    let hi = (lo + 1).min(n - 1);
    let t = virtual_index - lo as f64;
    let (a, b) = (sorted[lo], sorted[hi]);
    let diff = b - a;
    if t >= 0.5 {
        b - diff * (1.0 - t)
    } else {
        a + diff * t
    }
}

fn distance_metrics(
    ground_truth: &Labels,
    predictions: &Labels,
    matched: &[MatchedPair],
) -> DistanceMetrics {
    let mut frame_idxs = Vec::with_capacity(matched.len());
    let mut video_paths = Vec::with_capacity(matched.len());
    let mut dists = Vec::with_capacity(matched.len());
    for m in matched {
        let gt_frame = &ground_truth.frames[m.gt_frame];
        let gt = &gt_frame.instances[m.gt_instance];
        let pred = &predictions.frames[m.pred_frame].instances[m.pred_instance];
        dists.push(
            gt.points
                .iter()
                .zip(&pred.points)
                .map(|(g, p)| ((p[0] - g[0]).powi(2) + (p[1] - g[1]).powi(2)).sqrt())
                .collect::<Vec<f64>>(),
        );
        frame_idxs.push(gt_frame.frame_idx);
        video_paths.push(video_of(ground_truth, gt_frame));
    }
    let mut finite: Vec<f64> = dists
        .iter()
        .flatten()
        .copied()
        .filter(|d| !d.is_nan())
        .collect();
    finite.sort_by(f64::total_cmp);
    let ptile = |q: f64| {
        if finite.is_empty() {
            f64::NAN
        } else {
            percentile(&finite, q)
        }
    };
    DistanceMetrics {
        avg: if finite.is_empty() {
            f64::NAN
        } else {
            mean(&finite)
        },
        p50: ptile(50.0),
        p75: ptile(75.0),
        p90: ptile(90.0),
        p95: ptile(95.0),
        p99: ptile(99.0),
        frame_idxs,
        video_paths,
        dists,
    }
}

fn pck_metrics(dists: &[Vec<f64>]) -> PckMetrics {
    let thresholds = pck_thresholds();
    // A missing node never counts as within any threshold.
    let pcks: Vec<Vec<Vec<bool>>> = dists
        .iter()
        .map(|nodes| {
            nodes
                .iter()
                .map(|&d| thresholds.iter().map(|&t| !d.is_nan() && d < t).collect())
                .collect()
        })
        .collect();
    let n_nodes = dists.first().map_or(0, Vec::len);
    if pcks.is_empty() || n_nodes == 0 {
        return PckMetrics {
            thresholds,
            pcks,
            mpck_parts: Vec::new(),
            mpck: f64::NAN,
            pck_at_5: f64::NAN,
            pck_at_10: f64::NAN,
        };
    }
    let mpck_parts: Vec<f64> = (0..n_nodes)
        .map(|n| {
            let per_threshold: Vec<f64> = (0..thresholds.len())
                .map(|t| {
                    let column: Vec<bool> = pcks.iter().map(|pair| pair[n][t]).collect();
                    fraction(&column)
                })
                .collect();
            mean(&per_threshold)
        })
        .collect();
    let closest = |target: f64| {
        let mut best = 0;
        for (i, t) in thresholds.iter().enumerate() {
            if (t - target).abs() < (thresholds[best] - target).abs() {
                best = i;
            }
        }
        best
    };
    let at = |t: usize| {
        let cells: Vec<bool> = pcks
            .iter()
            .flat_map(|pair| pair.iter().map(move |node| node[t]))
            .collect();
        fraction(&cells)
    };
    PckMetrics {
        mpck: mean(&mpck_parts),
        pck_at_5: at(closest(5.0)),
        pck_at_10: at(closest(10.0)),
        mpck_parts,
        pcks,
        thresholds,
    }
}

fn visibility_metrics(
    ground_truth: &Labels,
    predictions: &Labels,
    matched: &[MatchedPair],
) -> VisibilityMetrics {
    let (mut tp, mut fp, mut tn, mut fn_) = (0u64, 0u64, 0u64, 0u64);
    for m in matched {
        let gt = &ground_truth.frames[m.gt_frame].instances[m.gt_instance];
        let pred = &predictions.frames[m.pred_frame].instances[m.pred_instance];
        for (g, p) in gt.points.iter().zip(&pred.points) {
            match (missing(g), missing(p)) {
                (true, true) => tn += 1,
                (false, true) => fn_ += 1,
                (true, false) => fp += 1,
                (false, false) => tp += 1,
            }
        }
    }
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            f64::NAN
        } else {
            num as f64 / den as f64
        }
    };
    VisibilityMetrics {
        tp,
        fp,
        tn,
        fn_,
        precision: ratio(tp, tp + fp),
        recall: ratio(tp, tp + fn_),
    }
}

/// A number for JSON: NaN and infinities become null, as sleap-nn's `_metrics_to_json_safe`.
fn num(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn nums(xs: &[f64]) -> Value {
    Value::Array(xs.iter().map(|&x| num(x)).collect())
}

impl VocMetrics {
    fn insert_json(&self, prefix: &str, out: &mut Map<String, Value>) {
        let empty = self.match_scores.is_empty();
        // sleap-nn writes a bare 0 for every entry when nothing matched.
        let arr = |v: Value| if empty { json!(0) } else { v };
        out.insert(
            format!("{prefix}.match_score_thresholds"),
            arr(nums(&self.match_score_thresholds)),
        );
        out.insert(
            format!("{prefix}.recall_thresholds"),
            arr(nums(&self.recall_thresholds)),
        );
        out.insert(
            format!("{prefix}.match_scores"),
            arr(nums(&self.match_scores)),
        );
        out.insert(
            format!("{prefix}.precisions"),
            arr(Value::Array(
                self.precisions.iter().map(|p| nums(p)).collect(),
            )),
        );
        out.insert(format!("{prefix}.recalls"), arr(nums(&self.recalls)));
        out.insert(format!("{prefix}.AP"), arr(nums(&self.ap)));
        out.insert(format!("{prefix}.AR"), arr(nums(&self.ar)));
        out.insert(
            format!("{prefix}.mAP"),
            if empty { json!(0) } else { num(self.map) },
        );
        out.insert(
            format!("{prefix}.mAR"),
            if empty { json!(0) } else { num(self.mar) },
        );
    }
}

impl Metrics {
    /// The metrics under sleap-nn's keys, as its `metrics.*.json` holds them (`pck_metrics.pcks`
    /// left out as sleap-nn does; NaN as null).
    pub fn to_json(&self) -> Value {
        let mut voc = Map::new();
        self.oks_voc.insert_json("oks_voc", &mut voc);
        self.pck_voc.insert_json("pck_voc", &mut voc);
        let d = &self.distance;
        let dists = if d.dists.is_empty() {
            json!([])
        } else {
            Value::Array(d.dists.iter().map(|r| nums(r)).collect())
        };
        let v = &self.visibility;
        json!({
            "voc_metrics": Value::Object(voc),
            "mOKS": { "mOKS": num(self.moks) },
            "distance_metrics": {
                "frame_idxs": d.frame_idxs,
                "video_paths": d.video_paths,
                "dists": dists,
                "avg": num(d.avg),
                "p50": num(d.p50),
                "p75": num(d.p75),
                "p90": num(d.p90),
                "p95": num(d.p95),
                "p99": num(d.p99),
            },
            "pck_metrics": {
                "thresholds": nums(&self.pck.thresholds),
                "mPCK_parts": nums(&self.pck.mpck_parts),
                "mPCK": num(self.pck.mpck),
                "PCK@5": num(self.pck.pck_at_5),
                "PCK@10": num(self.pck.pck_at_10),
            },
            "visibility_metrics": {
                "tp": v.tp,
                "fp": v.fp,
                "tn": v.tn,
                "fn": v.fn_,
                "precision": num(v.precision),
                "recall": num(v.recall),
            },
        })
    }

    /// A short summary table (Markdown) of the headline numbers.
    pub fn to_markdown(&self) -> String {
        let f = |x: f64, digits: usize| {
            if x.is_nan() {
                "n/a".to_string()
            } else {
                format!("{x:.digits$}")
            }
        };
        let d = &self.distance;
        let rows = [
            ("frame pairs", self.n_frame_pairs.to_string()),
            ("matched instances", self.n_matched.to_string()),
            (
                "unmatched ground-truth instances",
                self.n_false_negatives.to_string(),
            ),
            ("mOKS", f(self.moks, 4)),
            ("mAP (OKS 0.5:0.95)", f(self.oks_voc.map, 4)),
            ("mAR (OKS 0.5:0.95)", f(self.oks_voc.mar, 4)),
            ("mAP (PCK)", f(self.pck_voc.map, 4)),
            ("mean distance (px)", f(d.avg, 2)),
            (
                "distance p50 / p90 / p95 / p99 (px)",
                format!(
                    "{} / {} / {} / {}",
                    f(d.p50, 2),
                    f(d.p90, 2),
                    f(d.p95, 2),
                    f(d.p99, 2)
                ),
            ),
            ("mPCK (1..10 px)", f(self.pck.mpck, 4)),
            (
                "PCK@5 / PCK@10",
                format!("{} / {}", f(self.pck.pck_at_5, 4), f(self.pck.pck_at_10, 4)),
            ),
            (
                "visibility precision / recall",
                format!(
                    "{} / {}",
                    f(self.visibility.precision, 4),
                    f(self.visibility.recall, 4)
                ),
            ),
        ];
        let mut out = String::from("| metric | value |\n| --- | --- |\n");
        for (name, value) in rows {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pose::labels::Skeleton;

    const NAN: f64 = f64::NAN;

    fn user(points: &[[f64; 2]]) -> Instance {
        Instance {
            skeleton: 0,
            points: points.to_vec(),
            point_scores: Vec::new(),
            kind: InstanceKind::User,
            track: None,
            tracking_score: 0.0,
        }
    }

    fn predicted(points: &[[f64; 2]], score: f32) -> Instance {
        Instance {
            point_scores: vec![1.0; points.len()],
            kind: InstanceKind::Predicted { score },
            ..user(points)
        }
    }

    fn labels(video: &str, frames: Vec<(u64, Vec<Instance>)>) -> Labels {
        Labels {
            skeletons: vec![Skeleton {
                name: "s".into(),
                nodes: vec!["a".into(), "b".into()],
                edges: vec![(0, 1)],
                symmetries: Vec::new(),
            }],
            videos: vec![Video {
                filename: video.into(),
                source: VideoSource::External {
                    filename: video.into(),
                    backend: "MediaVideo".into(),
                    dataset: None,
                },
                shape: None,
            }],
            frames: frames
                .into_iter()
                .map(|(frame_idx, instances)| LabeledFrame {
                    video: 0,
                    frame_idx,
                    instances,
                })
                .collect(),
            tracks: Vec::new(),
        }
    }

    #[test]
    fn perfect_prediction_has_oks_one() {
        let gt = [[0.0, 0.0], [10.0, 10.0], [3.0, 7.0]];
        assert_eq!(oks(&gt, &gt, None, 0.025), 1.0);
        assert_eq!(oks(&gt, &gt, Some(5.0), 0.1), 1.0);
    }

    #[test]
    fn oks_of_known_offsets() {
        // Box area 100: normalization (2·0.025)² · 2·100 = 0.5.
        let gt = [[0.0, 0.0], [10.0, 10.0]];
        let pred = [[1.0, 0.0], [10.0, 10.0]];
        let expected = ((-2.0f64).exp() + 1.0) / 2.0;
        assert!((oks(&gt, &pred, None, 0.025) - expected).abs() < 1e-12);
        // A 3-4-5 offset on both nodes with scale 400 and σ 0.05: 25 / (0.01 · 800).
        let pred = [[3.0, 4.0], [13.0, 14.0]];
        let expected = (-25.0f64 / 8.0).exp();
        assert!((oks(&gt, &pred, Some(400.0), 0.05) - expected).abs() < 1e-12);
    }

    #[test]
    fn oks_counts_missing_predicted_nodes_as_zero_and_skips_missing_ground_truth() {
        let gt = [[0.0, 0.0], [10.0, 10.0], [NAN, NAN]];
        let pred = [[0.0, 0.0], [NAN, NAN], [5.0, 5.0]];
        assert!((oks(&gt, &pred, None, 0.025) - 0.5).abs() < 1e-12);
        assert!(oks(&[[NAN, NAN], [NAN, NAN]], &gt[..2], None, 0.025).is_nan());
    }

    #[test]
    fn zero_area_ground_truth_is_scored_by_pixel_distance() {
        let gt = [[10.0, 10.0], [NAN, NAN]];
        assert_eq!(instance_area(&gt), 0.0);
        let pred = [[13.0, 14.0], [0.0, 0.0]];
        assert!((distance_match_score(&gt, &pred) - 0.9).abs() < 1e-12);
        assert_eq!(distance_match_score(&gt, &[[100.0, 10.0], [0.0, 0.0]]), 0.0);
        assert_eq!(distance_match_score(&gt, &[[NAN, NAN], [0.0, 0.0]]), 0.0);
    }

    #[test]
    fn thresholds_and_percentiles_are_numpys() {
        let t = match_score_thresholds();
        assert_eq!(t[8], 0.8999999999999999);
        assert_eq!(t[9], 0.95);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 75.0), 3.25);
        assert_eq!(percentile(&[0.5, 1.0, 7.0], 90.0), 5.800000000000001);
    }

    #[test]
    fn highest_score_prediction_takes_the_best_ground_truth() {
        let a = [[0.0, 0.0], [10.0, 10.0]];
        let b = [[100.0, 100.0], [110.0, 110.0]];
        let gt = labels("v.mp4", vec![(0, vec![user(&a), user(&b)])]);
        // Both predictions sit on `a`; the 0.9 one takes it, the other finds `b` too far
        // (OKS 0) and stays unmatched, so `b` is a false negative.
        let near = [[0.5, 0.0], [10.0, 10.0]];
        let pred = labels(
            "v.mp4",
            vec![(0, vec![predicted(&near, 0.2), predicted(&a, 0.9)])],
        );
        let m = evaluate(&gt, &pred, &EvalOptions::default()).unwrap();
        assert_eq!((m.n_matched, m.n_false_negatives), (1, 1));
        assert_eq!(m.moks, 1.0);
        assert_eq!(m.oks_voc.recalls, vec![0.5; 10]);
        assert_eq!(m.distance.dists, vec![vec![0.0, 0.0]]);
        assert_eq!(m.visibility.tp, 2);
    }

    #[test]
    fn ground_truth_frames_without_prediction_frames_are_not_scored() {
        let a = [[0.0, 0.0], [10.0, 10.0]];
        let gt = labels(
            "v.mp4",
            vec![(0, vec![user(&a)]), (5, vec![user(&a), user(&a)])],
        );
        let pred = labels("/elsewhere/v.mp4", vec![(0, vec![predicted(&a, 0.5)])]);
        let m = evaluate(&gt, &pred, &EvalOptions::default()).unwrap();
        assert_eq!(
            (m.n_frame_pairs, m.n_matched, m.n_false_negatives),
            (1, 1, 0)
        );
        // Precision is tp / (tp + fp + ε), so a perfect one is one ulp short of 1, as in sleap-nn.
        assert!((m.oks_voc.map - 1.0).abs() < 1e-15);
        assert_eq!(m.pck.mpck, 1.0);
    }

    #[test]
    fn no_shared_frame_is_an_error_naming_the_videos() {
        let a = [[0.0, 0.0], [10.0, 10.0]];
        let gt = labels("one.mp4", vec![(0, vec![user(&a)])]);
        let pred = labels("two.mp4", vec![(0, vec![predicted(&a, 0.5)])]);
        let err = evaluate(&gt, &pred, &EvalOptions::default()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("one.mp4") && text.contains("two.mp4"),
            "{text}"
        );
    }

    #[test]
    fn invalid_stddev_is_refused() {
        let a = [[0.0, 0.0], [10.0, 10.0]];
        let gt = labels("v.mp4", vec![(0, vec![user(&a)])]);
        let opts = EvalOptions {
            oks_stddev: 0.0,
            ..EvalOptions::default()
        };
        let err = evaluate(&gt, &gt, &opts).unwrap_err();
        assert!(err.to_string().contains("oks_stddev"), "{err}");
    }

    #[test]
    fn nothing_matched_reports_zeros_and_nan_like_sleap_nn() {
        let gt = labels("v.mp4", vec![(0, vec![user(&[[0.0, 0.0], [10.0, 10.0]])])]);
        let pred = labels(
            "v.mp4",
            vec![(0, vec![predicted(&[[300.0, 300.0], [310.0, 310.0]], 0.5)])],
        );
        let m = evaluate(&gt, &pred, &EvalOptions::default()).unwrap();
        assert_eq!(m.n_false_negatives, 1);
        let j = m.to_json();
        assert_eq!(j["voc_metrics"]["oks_voc.mAP"], json!(0));
        assert_eq!(j["voc_metrics"]["pck_voc.precisions"], json!(0));
        assert_eq!(j["mOKS"]["mOKS"], Value::Null);
        assert_eq!(j["distance_metrics"]["dists"], json!([]));
        assert!(m.to_markdown().contains("| mOKS | n/a |"));
    }

    fn with_videos(paths: &[(&str, Option<[usize; 4]>)]) -> Labels {
        let mut l = labels("unused.mp4", Vec::new());
        l.videos = paths
            .iter()
            .map(|(p, shape)| Video {
                filename: p.to_string(),
                source: VideoSource::External {
                    filename: p.to_string(),
                    backend: "MediaVideo".into(),
                    dataset: None,
                },
                shape: *shape,
            })
            .collect();
        l
    }

    #[test]
    fn videos_match_by_path_then_by_the_shortest_unique_tail() {
        let gt = with_videos(&[
            ("/data/a/cam.mp4", None),
            ("/data/b/cam.mp4", None),
            ("C:\\videos\\side.mp4", None),
        ]);
        let pred = with_videos(&[
            ("/data/b/cam.mp4", None),
            ("/elsewhere/a/cam.mp4", None),
            ("/x/side.mp4", None),
            ("/x/cam.mp4", None),
            ("/x/top.mp4", None),
        ]);
        // "cam.mp4" alone is ambiguous and "x/cam.mp4" matches nothing: no match.
        assert_eq!(
            match_videos(&gt, &pred),
            vec![Some(1), Some(0), Some(2), None, None]
        );
    }

    #[test]
    fn videos_of_different_frame_size_never_match() {
        let gt = with_videos(&[("/d/cam.mp4", Some([10, 384, 384, 1]))]);
        let pred = with_videos(&[
            ("/d/cam.mp4", Some([10, 384, 512, 1])),
            ("/d/cam.mp4", Some([10, 384, 384, 3])),
        ]);
        assert_eq!(match_videos(&gt, &pred), vec![None, Some(0)]);
    }

    #[test]
    fn a_repeated_prediction_frame_resolves_to_its_last_occurrence() {
        let a = [[0.0, 0.0], [10.0, 10.0]];
        let gt = labels("v.mp4", vec![(3, vec![user(&a)])]);
        let pred = labels(
            "v.mp4",
            vec![(3, vec![predicted(&a, 0.5)]), (3, Vec::new())],
        );
        let pairs = find_frame_pairs(&gt, &pred, true);
        assert_eq!(
            pairs,
            vec![FramePair {
                gt_frame: 0,
                pred_frame: 1,
                gt_instances: vec![0],
            }]
        );
    }
}

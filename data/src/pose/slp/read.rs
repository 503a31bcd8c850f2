//! Reading SLEAP labels (`.slp`, `.pkg.slp`) as sleap-io 0.9.5's `read_labels` does: tracks,
//! videos, skeletons, then frames → instances → points.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::h5::{f64_attr, field_names, h5, json_rows, open_hdf5, read_rows, str_attr};
use super::{skeleton, video};
use crate::error::{DataError, Result};
use crate::pose::{Instance, InstanceKind, LabeledFrame, Labels, VideoSource};

/// sleap-io refuses files at or above this `format_id` (a columnar layout it cannot read).
const FORMAT_ID_LIMIT: f64 = 3.0;

#[derive(hdf5::H5Type, Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct FrameRow {
    pub frame_id: u64,
    pub video: u32,
    pub frame_idx: u64,
    pub instance_id_start: u64,
    pub instance_id_end: u64,
}

/// The instance fields every format version has (`tracking_score` arrived in 1.2).
#[derive(hdf5::H5Type, Clone, Copy, Debug)]
#[repr(C)]
struct InstanceRow {
    instance_id: i64,
    instance_type: u8,
    frame_id: u64,
    skeleton: u32,
    track: i32,
    from_predicted: i64,
    score: f32,
    point_id_start: u64,
    point_id_end: u64,
}

#[derive(hdf5::H5Type, Clone, Copy, Debug)]
#[repr(C)]
struct TrackingScoreRow {
    tracking_score: f32,
}

#[derive(hdf5::H5Type, Clone, Copy, Debug)]
#[repr(C)]
struct PointRow {
    x: f64,
    y: f64,
    visible: bool,
}

#[derive(hdf5::H5Type, Clone, Copy, Debug)]
#[repr(C)]
struct PointScoreRow {
    score: f64,
}

const USER: u8 = 0;
const PREDICTED: u8 = 1;

/// Read a SLEAP labels file. Points a file marks invisible are NaN; files older than format
/// 1.1 (pixel corners at integers) are shifted by -0.5 to SLEAP's pixel-centre convention.
pub fn read_labels(path: &Path) -> Result<Labels> {
    let file = open_hdf5(path)?;
    if !file.link_exists("metadata") {
        return Err(DataError::NotLabels {
            path: path.to_path_buf(),
            detail: "no 'metadata' group (an HDF5 file, but not one SLEAP wrote)".into(),
        });
    }
    let md_group = file.group("metadata").map_err(h5(path, "metadata"))?;
    // Files without a format_id predate the 1.0 numbering: treat them as the oldest layout.
    let format_id = f64_attr(&md_group, "format_id").unwrap_or(1.0);
    if format_id >= FORMAT_ID_LIMIT {
        return Err(DataError::invalid(
            path,
            "metadata",
            format!("SLP format {format_id} is newer than the 2.x layout this reader supports"),
        ));
    }
    let md_text = str_attr(&md_group, "json").ok_or_else(|| {
        DataError::invalid(
            path,
            "metadata",
            "no readable 'json' attribute (corrupt file?)",
        )
    })?;
    let md: Value = serde_json::from_str(&md_text)
        .map_err(|e| DataError::invalid(path, "metadata/json", format!("not JSON: {e}")))?;
    let skeletons =
        skeleton::decode(&md).map_err(|e| DataError::invalid(path, "metadata/json", e))?;

    let tracks = json_rows(path, &file, "tracks_json")?
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let v: Value = serde_json::from_str(row).map_err(|e| {
                DataError::invalid(path, format!("tracks_json[{i}]"), format!("not JSON: {e}"))
            })?;
            v.get(1)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    DataError::invalid(
                        path,
                        format!("tracks_json[{i}]"),
                        "expected [spawned_on, name]",
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;

    let videos = json_rows(path, &file, "videos_json")?
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let object = format!("videos_json[{i}]");
            let v: Value = serde_json::from_str(row)
                .map_err(|e| DataError::invalid(path, &object, format!("not JSON: {e}")))?;
            video::decode(path, &file, &v).map_err(|e| DataError::invalid(path, &object, e))
        })
        .collect::<Result<Vec<_>>>()?;

    let frames: Vec<FrameRow> = read_rows(
        path,
        &file,
        "frames",
        &[
            "frame_id",
            "video",
            "frame_idx",
            "instance_id_start",
            "instance_id_end",
        ],
    )?;
    let inst_fields = [
        "instance_id",
        "instance_type",
        "frame_id",
        "skeleton",
        "track",
        "from_predicted",
        "score",
        "point_id_start",
        "point_id_end",
    ];
    let inst_rows: Vec<InstanceRow> = read_rows(path, &file, "instances", &inst_fields)?;
    let has_tracking_score = file
        .dataset("instances")
        .map_err(h5(path, "instances"))
        .and_then(|ds| field_names(path, &ds, "instances"))?
        .iter()
        .any(|f| f == "tracking_score");
    let tracking: Vec<TrackingScoreRow> = if format_id >= 1.2 && has_tracking_score {
        read_rows(path, &file, "instances", &["tracking_score"])?
    } else {
        Vec::new()
    };
    let points: Vec<PointRow> = read_rows(path, &file, "points", &["x", "y", "visible"])?;
    let pred_points: Vec<PointRow> = read_rows(path, &file, "pred_points", &["x", "y", "visible"])?;
    let pred_scores: Vec<PointScoreRow> = if pred_points.is_empty() {
        Vec::new()
    } else {
        read_rows(path, &file, "pred_points", &["score"])?
    };
    let shift = if format_id < 1.1 { 0.5 } else { 0.0 };

    let mut instances = Vec::with_capacity(inst_rows.len());
    for (i, r) in inst_rows.iter().enumerate() {
        let object = || format!("instances[{i}]");
        let skel = skeletons.get(r.skeleton as usize).ok_or_else(|| {
            DataError::invalid(
                path,
                object(),
                format!("skeleton {} of {} in metadata", r.skeleton, skeletons.len()),
            )
        })?;
        let track = match r.track {
            t if t < 0 => None,
            t if (t as usize) < tracks.len() => Some(t as usize),
            t => {
                return Err(DataError::invalid(
                    path,
                    object(),
                    format!("track {t} of {} in tracks_json", tracks.len()),
                ))
            }
        };
        let (table, name) = match r.instance_type {
            USER => (&points, "points"),
            PREDICTED => (&pred_points, "pred_points"),
            t => {
                return Err(DataError::invalid(
                    path,
                    object(),
                    format!("instance_type {t} (0 user, 1 predicted)"),
                ))
            }
        };
        let (lo, hi) = (r.point_id_start as usize, r.point_id_end as usize);
        if lo > hi || hi > table.len() {
            return Err(DataError::invalid(
                path,
                object(),
                format!("points {lo}..{hi} outside {name} ({} rows)", table.len()),
            ));
        }
        if hi - lo != skel.nodes.len() {
            return Err(DataError::invalid(
                path,
                object(),
                format!(
                    "{} points for skeleton '{}' of {} nodes",
                    hi - lo,
                    skel.name,
                    skel.nodes.len()
                ),
            ));
        }
        let pts = table[lo..hi]
            .iter()
            .map(|p| {
                if p.visible {
                    [p.x - shift, p.y - shift]
                } else {
                    [f64::NAN, f64::NAN]
                }
            })
            .collect();
        let (kind, point_scores) = if r.instance_type == USER {
            (InstanceKind::User, Vec::new())
        } else {
            (
                InstanceKind::Predicted { score: r.score },
                pred_scores[lo..hi].iter().map(|s| s.score).collect(),
            )
        };
        instances.push(Instance {
            skeleton: r.skeleton as usize,
            points: pts,
            point_scores,
            kind,
            track,
            tracking_score: tracking.get(i).map_or(0.0, |t| t.tracking_score),
        });
    }

    // frames.video is a list index, or for files whose embedded videos are sparse
    // (video0, video15, ...) the N of videoN: sleap-io maps the latter back by dataset name.
    let ids: std::collections::BTreeSet<u32> = frames.iter().map(|f| f.video).collect();
    let list_indices = ids.len() == videos.len()
        && ids.iter().next_back().copied().unwrap_or(0) as usize + 1 == videos.len();
    let mut id_to_index: HashMap<u32, usize> = HashMap::new();
    for (i, v) in videos.iter().enumerate() {
        let id = match &v.source {
            VideoSource::Embedded { dataset, .. } if !list_indices => dataset
                .split_once('/')
                .and_then(|(g, _)| g.strip_prefix("video"))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .unwrap_or(i as u32),
            _ => i as u32,
        };
        id_to_index.insert(id, i);
    }
    let mut labeled = Vec::with_capacity(frames.len());
    for (k, f) in frames.iter().enumerate() {
        let object = || format!("frames[{k}]");
        let video = id_to_index
            .get(&f.video)
            .copied()
            .unwrap_or(f.video as usize);
        if video >= videos.len() {
            return Err(DataError::invalid(
                path,
                object(),
                format!("video {} of {} in videos_json", f.video, videos.len()),
            ));
        }
        let (lo, hi) = (f.instance_id_start as usize, f.instance_id_end as usize);
        if lo > hi || hi > instances.len() {
            return Err(DataError::invalid(
                path,
                object(),
                format!(
                    "instances {lo}..{hi} outside instances ({} rows)",
                    instances.len()
                ),
            ));
        }
        labeled.push(LabeledFrame {
            video,
            frame_idx: f.frame_idx,
            instances: instances[lo..hi].to_vec(),
        });
    }

    Ok(Labels {
        skeletons,
        videos,
        frames: labeled,
        tracks,
    })
}

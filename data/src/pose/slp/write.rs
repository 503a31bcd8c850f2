//! Writing labels as sleap-io 0.9.5's `write_labels` does for skeletons, videos, tracks,
//! frames and instances (format 1.4), so that `sio.load_slp` opens the result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hdf5::types::{VarLenArray, VarLenUnicode};
use serde_json::json;

use super::h5::h5;
use super::{skeleton, video};
use crate::error::{DataError, Result};
use crate::pose::{Image, InstanceKind, Labels, Video, VideoSource};

/// The layout written here: format 1.4 is what sleap-io writes for labels without ROIs,
/// masks or identities (it added `channel_order` to embedded frames, which are referred
/// to here, not copied).
const FORMAT_ID: f64 = 1.4;

#[derive(hdf5::H5Type, Clone, Copy)]
#[repr(C, packed)]
struct FrameOut {
    frame_id: u64,
    video: u32,
    frame_idx: u64,
    instance_id_start: u64,
    instance_id_end: u64,
}

#[derive(hdf5::H5Type, Clone, Copy)]
#[repr(C, packed)]
struct InstanceOut {
    instance_id: i64,
    instance_type: u8,
    frame_id: u64,
    skeleton: u32,
    track: i32,
    from_predicted: i64,
    score: f32,
    point_id_start: u64,
    point_id_end: u64,
    tracking_score: f32,
}

#[derive(hdf5::H5Type, Clone, Copy)]
#[repr(C, packed)]
struct PointOut {
    x: f64,
    y: f64,
    visible: bool,
    complete: bool,
}

#[derive(hdf5::H5Type, Clone, Copy)]
#[repr(C, packed)]
struct PredPointOut {
    x: f64,
    y: f64,
    visible: bool,
    complete: bool,
    score: f64,
}

/// Write `labels` to `path` (a temporary name beside it, then a rename, so a failed write
/// leaves no partial file). Refuses to replace a file the labels' videos read frames from
/// (e.g. the `.pkg.slp` that predictions were made on). Embedded videos are written as
/// references to the HDF5 file holding their frames, not copied.
pub fn write_labels(path: &Path, labels: &Labels) -> Result<()> {
    write_labels_with_frames(path, labels, &[])
}

/// Write `labels` to `path` as [`write_labels`] does, embedding `frames` in it as sleap-io's
/// `embed_frames` does (a `.pkg.slp`): each `(video, frame_idx, image)` is PNG-encoded into
/// the `video{video}/video` dataset, and every video that receives frames is recorded as
/// embedded in this file, whatever its source was. All frames of one video must share a size
/// and channel count (1 or 3).
pub fn write_labels_with_frames(
    path: &Path,
    labels: &Labels,
    frames: &[(usize, u64, Image)],
) -> Result<()> {
    check_labels(path, labels)?;
    let embed = group_frames(path, labels, frames)?;
    if let Ok(out) = std::fs::canonicalize(path) {
        for (i, v) in labels.videos.iter().enumerate() {
            if embed.contains_key(&i) {
                continue;
            }
            let source = match &v.source {
                VideoSource::Embedded { file, .. } => Some(file.clone()),
                VideoSource::External { filename, .. } => Some(PathBuf::from(filename)),
                VideoSource::ImageSequence { .. } => None,
            };
            if source.and_then(|s| std::fs::canonicalize(s).ok()).as_ref() == Some(&out) {
                return Err(DataError::invalid(
                    path,
                    "output",
                    "is the file these labels' frames come from; write the labels to another path",
                ));
            }
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| DataError::invalid(path, "output", "names a directory, not a file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = write_file(&tmp, labels, &embed)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The frames to embed, per video index, in the order given.
type EmbedPlan<'a> = BTreeMap<usize, Vec<(u64, &'a Image)>>;

/// Group `frames` by video, refusing what sleap-io could not read back: unknown videos,
/// repeated frames, and frames of one video that differ in size or channels.
fn group_frames<'a>(
    path: &Path,
    labels: &Labels,
    frames: &'a [(usize, u64, Image)],
) -> Result<EmbedPlan<'a>> {
    let mut plan: EmbedPlan = BTreeMap::new();
    for (k, (video, frame_idx, image)) in frames.iter().enumerate() {
        let object = || format!("embedded frame {k} (video {video}, frame {frame_idx})");
        if *video >= labels.videos.len() {
            return Err(DataError::invalid(
                path,
                object(),
                format!("video {video} of {}", labels.videos.len()),
            ));
        }
        if !matches!(image.channels, 1 | 3)
            || image.data.len() != image.height * image.width * image.channels
            || image.height == 0
            || image.width == 0
        {
            return Err(DataError::invalid(
                path,
                object(),
                format!(
                    "{} bytes for {}x{}x{} (1 or 3 channels, non-empty)",
                    image.data.len(),
                    image.height,
                    image.width,
                    image.channels
                ),
            ));
        }
        let entry = plan.entry(*video).or_default();
        if let Some((_, first)) = entry.first() {
            if (first.height, first.width, first.channels)
                != (image.height, image.width, image.channels)
            {
                return Err(DataError::invalid(
                    path,
                    object(),
                    format!(
                        "{}x{}x{} differs from the video's first frame, {}x{}x{}",
                        image.height,
                        image.width,
                        image.channels,
                        first.height,
                        first.width,
                        first.channels
                    ),
                ));
            }
        }
        if entry.iter().any(|(f, _)| f == frame_idx) {
            return Err(DataError::invalid(path, object(), "given more than once"));
        }
        entry.push((*frame_idx, image));
    }
    Ok(plan)
}

fn png_bytes(path: &Path, object: &str, image: &Image) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, image.width as u32, image.height as u32);
    enc.set_color(if image.channels == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()
        .and_then(|mut w| w.write_image_data(&image.data))
        .map_err(|e| DataError::invalid(path, object, format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

/// `video{index}/video` (PNG bytes as variable-length int8 rows, as h5py stores them),
/// `video{index}/frame_numbers` and the attributes sleap-io's `embed_frames` writes.
fn write_embedded(
    file: &hdf5::File,
    path: &Path,
    index: usize,
    video: &Video,
    frames: &[(u64, &Image)],
) -> Result<()> {
    let group = format!("video{index}");
    let name = format!("{group}/video");
    file.create_group(&group).map_err(h5(path, &group))?;
    let mut rows = Vec::with_capacity(frames.len());
    for (frame_idx, image) in frames {
        let bytes = png_bytes(path, &format!("{name} (frame {frame_idx})"), image)?;
        let signed: Vec<i8> = bytes.into_iter().map(|b| b as i8).collect();
        rows.push(VarLenArray::from_slice(&signed));
    }
    let ds = file
        .new_dataset::<VarLenArray<i8>>()
        .shape(rows.len())
        .create(name.as_str())
        .map_err(h5(path, &name))?;
    ds.write_raw(&rows).map_err(h5(path, &name))?;
    let str_attr = |attr: &str, value: &str| -> Result<()> {
        let object = format!("{name}.{attr}");
        let v = value
            .parse::<VarLenUnicode>()
            .map_err(|e| DataError::invalid(path, &object, e.to_string()))?;
        ds.new_attr::<VarLenUnicode>()
            .create(attr)
            .and_then(|a| a.write_scalar(&v))
            .map_err(h5(path, &object))
    };
    str_attr("format", "png")?;
    // The png crate writes the channels in the order given, which is RGB here.
    str_attr("channel_order", "RGB")?;
    let [n, h, w, c] = embedded_shape(video, frames);
    for (attr, value) in [("frames", n), ("height", h), ("width", w), ("channels", c)] {
        ds.new_attr::<i64>()
            .create(attr)
            .and_then(|a| a.write_scalar(&(value as i64)))
            .map_err(h5(path, &format!("{name}.{attr}")))?;
    }
    let numbers: Vec<i64> = frames.iter().map(|(f, _)| *f as i64).collect();
    let numbers_name = format!("{group}/frame_numbers");
    file.new_dataset::<i64>()
        .shape(numbers.len())
        .create(numbers_name.as_str())
        .and_then(|d| d.write_raw(&numbers))
        .map_err(h5(path, &numbers_name))?;
    Ok(())
}

/// (frames, height, width, channels): the video's recorded frame count when it has one, the
/// embedded frames' size otherwise.
fn embedded_shape(video: &Video, frames: &[(u64, &Image)]) -> [usize; 4] {
    let first = frames[0].1;
    let n = video.shape.map_or(frames.len(), |s| s[0]);
    [n, first.height, first.width, first.channels]
}

/// Indices in range and point counts matching the skeletons, so the file is consistent.
fn check_labels(path: &Path, labels: &Labels) -> Result<()> {
    for (k, f) in labels.frames.iter().enumerate() {
        if f.video >= labels.videos.len() {
            return Err(DataError::invalid(
                path,
                format!("frames[{k}]"),
                format!("video {} of {}", f.video, labels.videos.len()),
            ));
        }
        for (i, inst) in f.instances.iter().enumerate() {
            let object = || format!("frames[{k}].instances[{i}]");
            let skel = labels.skeletons.get(inst.skeleton).ok_or_else(|| {
                DataError::invalid(
                    path,
                    object(),
                    format!("skeleton {} of {}", inst.skeleton, labels.skeletons.len()),
                )
            })?;
            if inst.points.len() != skel.nodes.len() {
                return Err(DataError::invalid(
                    path,
                    object(),
                    format!(
                        "{} points for {} nodes",
                        inst.points.len(),
                        skel.nodes.len()
                    ),
                ));
            }
            if !inst.is_user()
                && !inst.point_scores.is_empty()
                && inst.point_scores.len() != inst.points.len()
            {
                return Err(DataError::invalid(
                    path,
                    object(),
                    format!(
                        "{} point scores for {} points",
                        inst.point_scores.len(),
                        inst.points.len()
                    ),
                ));
            }
            if inst.track.is_some_and(|t| t >= labels.tracks.len()) {
                return Err(DataError::invalid(
                    path,
                    object(),
                    format!("track {:?} of {}", inst.track, labels.tracks.len()),
                ));
            }
        }
    }
    Ok(())
}

fn json_rows(file: &hdf5::File, path: &Path, name: &str, rows: &[String]) -> Result<()> {
    let values = rows
        .iter()
        .map(|r| r.parse::<VarLenUnicode>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| DataError::invalid(path, name, format!("string not storable: {e}")))?;
    let ds = file
        .new_dataset::<VarLenUnicode>()
        .shape(values.len())
        .create(name)
        .map_err(h5(path, name))?;
    if !values.is_empty() {
        ds.write_raw(&values).map_err(h5(path, name))?;
    }
    Ok(())
}

fn table<T: hdf5::H5Type>(file: &hdf5::File, path: &Path, name: &str, rows: &[T]) -> Result<()> {
    let ds = file
        .new_dataset::<T>()
        .shape(rows.len())
        .create(name)
        .map_err(h5(path, name))?;
    if !rows.is_empty() {
        ds.write_raw(rows).map_err(h5(path, name))?;
    }
    Ok(())
}

fn write_file(path: &Path, labels: &Labels, embed: &EmbedPlan) -> Result<()> {
    let file = hdf5::File::create(path).map_err(h5(path, "file"))?;

    let (skeletons, nodes) = skeleton::encode(&labels.skeletons);
    let md = json!({
        "version": "2.0.0",
        "skeletons": skeletons,
        "nodes": nodes,
        "videos": [],
        "tracks": [],
        "suggestions": [],
        "negative_anchors": {},
        "provenance": {},
    });
    let md_group = file
        .create_group("metadata")
        .map_err(h5(path, "metadata"))?;
    md_group
        .new_attr::<f64>()
        .create("format_id")
        .and_then(|a| a.write_scalar(&FORMAT_ID))
        .map_err(h5(path, "metadata/format_id"))?;
    let md_text = md
        .to_string()
        .parse::<VarLenUnicode>()
        .map_err(|e| DataError::invalid(path, "metadata/json", e.to_string()))?;
    md_group
        .new_attr::<VarLenUnicode>()
        .create("json")
        .and_then(|a| a.write_scalar(&md_text))
        .map_err(h5(path, "metadata/json"))?;

    let videos: Vec<String> = labels
        .videos
        .iter()
        .enumerate()
        .map(|(i, v)| match embed.get(&i) {
            Some(frames) => video::encode_self_embedded(i, embedded_shape(v, frames)).to_string(),
            None => video::encode(v).to_string(),
        })
        .collect();
    json_rows(&file, path, "videos_json", &videos)?;
    let tracks: Vec<String> = labels
        .tracks
        .iter()
        .map(|t| json!([0, t]).to_string())
        .collect();
    json_rows(&file, path, "tracks_json", &tracks)?;
    json_rows(&file, path, "suggestions_json", &[])?;

    let video_ids: Vec<u32> = labels
        .videos
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if embed.contains_key(&i) {
                i as u32
            } else {
                video::frame_video_id(v, i)
            }
        })
        .collect();
    // frames.video names a videoN group; two videos with one N would read as one.
    for (i, id) in video_ids.iter().enumerate() {
        if let Some(j) = video_ids[..i].iter().position(|other| other == id) {
            return Err(DataError::invalid(
                path,
                format!("videos[{i}]"),
                format!("has the frame video id {id} of videos[{j}]"),
            ));
        }
    }
    for (&i, frames) in embed {
        write_embedded(&file, path, i, &labels.videos[i], frames)?;
    }
    let (mut frames, mut instances, mut points, mut pred_points) = (vec![], vec![], vec![], vec![]);
    for f in &labels.frames {
        let frame_id = frames.len() as u64;
        let instance_id_start = instances.len() as u64;
        for inst in &f.instances {
            let (instance_type, score, start, end) = match inst.kind {
                InstanceKind::User => {
                    let start = points.len() as u64;
                    points.extend(inst.points.iter().map(|p| {
                        let visible = p[0].is_finite() && p[1].is_finite();
                        PointOut {
                            x: p[0],
                            y: p[1],
                            visible,
                            complete: visible,
                        }
                    }));
                    (0u8, 0.0, start, points.len() as u64)
                }
                InstanceKind::Predicted { score } => {
                    let start = pred_points.len() as u64;
                    pred_points.extend(inst.points.iter().enumerate().map(|(n, p)| PredPointOut {
                        x: p[0],
                        y: p[1],
                        visible: p[0].is_finite() && p[1].is_finite(),
                        complete: false,
                        score: inst.point_scores.get(n).copied().unwrap_or(f64::NAN),
                    }));
                    (1u8, score, start, pred_points.len() as u64)
                }
            };
            instances.push(InstanceOut {
                instance_id: instances.len() as i64,
                instance_type,
                frame_id,
                skeleton: inst.skeleton as u32,
                track: inst.track.map_or(-1, |t| t as i32),
                from_predicted: -1,
                score,
                point_id_start: start,
                point_id_end: end,
                tracking_score: inst.tracking_score,
            });
        }
        frames.push(FrameOut {
            frame_id,
            video: video_ids[f.video],
            frame_idx: f.frame_idx,
            instance_id_start,
            instance_id_end: instances.len() as u64,
        });
    }
    table(&file, path, "points", &points)?;
    table(&file, path, "pred_points", &pred_points)?;
    table(&file, path, "instances", &instances)?;
    table(&file, path, "frames", &frames)?;
    file.close().map_err(h5(path, "file"))
}

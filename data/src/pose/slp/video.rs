//! `videos_json` rows: which video each row is (frames embedded in this file, an HDF5 file
//! with embedded frames elsewhere, an image sequence or a media file), as sleap-io's
//! `make_video` reads them and `video_to_dict` writes them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::h5::{f64_attr, str_attr};
use crate::pose::{Video, VideoSource};

/// sleap-io's `HDF5Video.EXTS`: files with these extensions open as HDF5 videos.
const HDF5_EXTS: [&str; 3] = ["h5", "hdf5", "slp"];

/// Decode one `videos_json` row of the labels file `labels` (open as `file`).
pub(crate) fn decode(labels: &Path, file: &hdf5::File, row: &Value) -> Result<Video, String> {
    let backend = row.get("backend").ok_or("no 'backend'")?;
    let filename = backend
        .get("filename")
        .or_else(|| row.get("filename"))
        .and_then(Value::as_str)
        .ok_or("no 'filename'")?
        .to_string();
    let shape = backend.get("shape").and_then(shape_of);

    if filename == "." {
        let dataset = embedded_dataset(file, backend)?;
        let group = dataset.strip_suffix("/video").unwrap_or(&dataset);
        let source_name = source_video_filename(file, group, row);
        let info = embedded_info(file, &dataset).map_err(|e| format!("{dataset}: {e}"))?;
        return Ok(Video {
            filename: source_name.unwrap_or_else(|| labels.display().to_string()),
            source: VideoSource::Embedded {
                file: labels.to_path_buf(),
                dataset,
                format: info.format,
                frame_numbers: info.frame_numbers,
            },
            shape: shape.or(info.shape),
        });
    }

    if let Some(files) = backend.get("filenames").and_then(Value::as_array) {
        let files = files
            .iter()
            .map(|f| {
                f.as_str()
                    .map(sanitize)
                    .ok_or("'filenames' holds a non-string")
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(Video {
            filename: files.first().cloned().unwrap_or_default(),
            source: VideoSource::ImageSequence { files },
            shape,
        });
    }

    let filename = sanitize(&filename);
    let ext = Path::new(&filename)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let dataset = backend
        .get("dataset")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    if HDF5_EXTS.contains(&ext.as_str()) {
        // An HDF5 video outside this file, e.g. the `.pkg.slp` a predictions file refers to.
        if let (Some(resolved), Some(ds)) = (resolve(labels, &filename), dataset.as_ref()) {
            if let Ok(other) = hdf5::File::open(&resolved) {
                if let Ok(ds) = embedded_dataset_name(&other, ds) {
                    if let Ok(info) = embedded_info(&other, &ds) {
                        return Ok(Video {
                            filename,
                            source: VideoSource::Embedded {
                                file: resolved,
                                dataset: ds,
                                format: info.format,
                                frame_numbers: info.frame_numbers,
                            },
                            shape: shape.or(info.shape),
                        });
                    }
                }
            }
        }
    }
    let kind = backend
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            if HDF5_EXTS.contains(&ext.as_str()) {
                "HDF5Video".into()
            } else if ["tif", "tiff"].contains(&ext.as_str()) {
                "TiffVideo".into()
            } else {
                "MediaVideo".into()
            }
        });
    Ok(Video {
        filename: filename.clone(),
        source: VideoSource::External {
            filename,
            backend: kind,
            dataset,
        },
        shape,
    })
}

/// The files the videos of `labels` (read from `labels_path`) refer to that cannot be found
/// where a reader looks for them (as recorded, or beside the labels file): media files, TIFF
/// stacks, HDF5 videos, image-sequence images and other files holding embedded frames. Only
/// videos with labeled frames count. Empty when every frame source is in place.
pub fn missing_videos(labels_path: &Path, labels: &crate::pose::Labels) -> Vec<String> {
    let mut missing = Vec::new();
    for (i, v) in labels.videos.iter().enumerate() {
        if !labels.frames.iter().any(|f| f.video == i) {
            continue;
        }
        let files: Vec<String> = match &v.source {
            VideoSource::Embedded { file, .. } => vec![file.display().to_string()],
            VideoSource::ImageSequence { files } => files.clone(),
            VideoSource::External { filename, .. } => vec![filename.clone()],
        };
        for f in files {
            if resolve(labels_path, &f).is_none() && !missing.contains(&f) {
                missing.push(f);
            }
        }
    }
    missing
}

/// sleap-io's `sanitize_filename`: forward slashes.
fn sanitize(f: &str) -> String {
    f.replace('\\', "/")
}

fn shape_of(v: &Value) -> Option<[usize; 4]> {
    let a = v.as_array()?;
    if a.len() != 4 {
        return None;
    }
    let mut s = [0usize; 4];
    for (o, x) in s.iter_mut().zip(a) {
        *o = x.as_u64()? as usize;
    }
    Some(s)
}

/// Where a video file recorded as `filename` is: as recorded (absolute, or relative to the
/// working directory), else beside the labels file (as sleap-io looks), else relative to it.
pub(crate) fn resolve(labels: &Path, filename: &str) -> Option<PathBuf> {
    let p = PathBuf::from(filename);
    if p.is_file() {
        return Some(p);
    }
    let dir = labels.parent().unwrap_or(Path::new("."));
    let beside = dir.join(p.file_name()?);
    if beside.is_file() {
        return Some(beside);
    }
    let relative = dir.join(&p);
    (p.is_relative() && relative.is_file()).then_some(relative)
}

fn embedded_dataset(file: &hdf5::File, backend: &Value) -> Result<String, String> {
    let ds = backend
        .get("dataset")
        .and_then(Value::as_str)
        .ok_or("embedded video without 'dataset'")?;
    embedded_dataset_name(file, ds)
}

/// `videoN` names the group; the encoded frames are its `video` dataset.
fn embedded_dataset_name(file: &hdf5::File, ds: &str) -> Result<String, String> {
    if file.group(ds).is_ok() && file.link_exists(&format!("{ds}/video")) {
        return Ok(format!("{ds}/video"));
    }
    if file.dataset(ds).is_ok() {
        Ok(ds.to_string())
    } else {
        Err(format!("embedded video dataset '{ds}' missing"))
    }
}

/// What the `videoN/video` dataset of embedded frames records about them.
struct EmbeddedInfo {
    /// `format` attribute: "png" or "jpg".
    format: String,
    /// The video frame each row holds (`videoN/frame_numbers`).
    frame_numbers: Vec<u64>,
    /// From the `height`, `width`, `channels` attributes.
    shape: Option<[usize; 4]>,
}

fn embedded_info(file: &hdf5::File, dataset: &str) -> Result<EmbeddedInfo, String> {
    let ds = file.dataset(dataset).map_err(|e| e.to_string())?;
    let format = str_attr(&ds, "format").ok_or("no 'format' attribute (png/jpg)")?;
    let n = ds.shape().first().copied().unwrap_or(0);
    let group = dataset.strip_suffix("/video").unwrap_or(dataset);
    let numbers_name = format!("{group}/frame_numbers");
    let frame_numbers: Vec<u64> = if file.link_exists(&numbers_name) {
        let fnds = file.dataset(&numbers_name).map_err(|e| e.to_string())?;
        fnds.read_raw::<i64>()
            .map_err(|e| format!("{numbers_name}: {e}"))?
            .into_iter()
            .map(|v| {
                u64::try_from(v).map_err(|_| format!("{numbers_name}: negative frame number {v}"))
            })
            .collect::<Result<_, _>>()?
    } else {
        (0..n as u64).collect()
    };
    let dim = |name: &str| f64_attr(&ds, name).map(|v| v as usize);
    let shape = match (dim("height"), dim("width"), dim("channels")) {
        (Some(h), Some(w), Some(c)) => Some([frame_numbers.len(), h, w, c]),
        _ => None,
    };
    Ok(EmbeddedInfo {
        format,
        frame_numbers,
        shape,
    })
}

/// The original video of embedded frames: `videoN/source_video` (a `json` attribute, or a
/// `json` dataset when too large), legacy `original_video`, or the row's own `source_video`.
fn source_video_filename(file: &hdf5::File, group: &str, row: &Value) -> Option<String> {
    let from_json = |v: &Value| -> Option<String> {
        let b = v.get("backend")?;
        b.get("filename")
            .or_else(|| v.get("filename"))
            .and_then(Value::as_str)
            .map(sanitize)
    };
    for name in ["source_video", "original_video"] {
        let path = format!("{group}/{name}");
        if let Ok(g) = file.group(&path) {
            let text = str_attr(&g, "json").or_else(|| {
                g.dataset("json")
                    .ok()
                    .and_then(|d| d.read_scalar::<hdf5::types::VarLenUnicode>().ok())
                    .map(|s| s.as_str().to_string())
            });
            if let Some(v) = text.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
                if let Some(f) = from_json(&v) {
                    return Some(f);
                }
            }
        }
    }
    row.get("source_video").and_then(from_json)
}

/// The `videos_json` row for `video`. Embedded frames are referred to in the HDF5 file that
/// holds them (sleap-io's HDF5Video convention), so predictions written beside a `.pkg.slp`
/// point at the same frames.
pub(crate) fn encode(video: &Video) -> Value {
    let shape = video.shape.map(|s| json!(s)).unwrap_or(Value::Null);
    let grayscale = video.shape.map(|s| json!(s[3] == 1)).unwrap_or(Value::Null);
    match &video.source {
        VideoSource::Embedded { file, dataset, .. } => {
            let file = absolute(file);
            let mut row = json!({
                "filename": file,
                "backend": {
                    "type": "HDF5Video",
                    "shape": shape,
                    "filename": file,
                    "dataset": dataset,
                    "input_format": "channels_last",
                    "convert_range": false,
                    "has_embedded_images": true,
                    "grayscale": grayscale,
                    "fps": null,
                },
            });
            if video.filename != file {
                row["source_video"] = media_row(&video.filename, &Value::Null, &grayscale);
            }
            row
        }
        VideoSource::ImageSequence { files } => {
            let (h, w, c) = match video.shape {
                Some(s) => (json!(s[1]), json!(s[2]), json!(s[3])),
                None => (Value::Null, Value::Null, json!(3)),
            };
            let first = files.first().cloned().unwrap_or_default();
            json!({
                "filename": files,
                "backend": {
                    "type": "ImageVideo",
                    "shape": shape,
                    "filename": first,
                    "filenames": files,
                    "height_": h,
                    "width_": w,
                    "channels_": c,
                    "grayscale": grayscale,
                    "fps": null,
                },
            })
        }
        VideoSource::External {
            filename,
            backend,
            dataset,
        } => {
            if backend == "HDF5Video" {
                json!({
                    "filename": filename,
                    "backend": {
                        "type": "HDF5Video",
                        "shape": shape,
                        "filename": filename,
                        "dataset": dataset,
                        "input_format": "channels_last",
                        "convert_range": false,
                        "has_embedded_images": false,
                        "grayscale": grayscale,
                        "fps": null,
                    },
                })
            } else if backend == "MediaVideo" {
                media_row(filename, &shape, &grayscale)
            } else {
                json!({
                    "filename": filename,
                    "backend": {"type": backend, "shape": shape, "filename": filename,
                                "grayscale": grayscale, "fps": null},
                })
            }
        }
    }
}

/// The `videos_json` row of frames embedded in the labels file being written: sleap-io's
/// self-reference (`"."`) to the `video{index}/video` dataset.
pub(crate) fn encode_self_embedded(index: usize, shape: [usize; 4]) -> Value {
    json!({
        "filename": ".",
        "backend": {
            "type": "HDF5Video",
            "shape": shape,
            "filename": ".",
            "dataset": format!("video{index}/video"),
            "input_format": "channels_last",
            "convert_range": false,
            "has_embedded_images": true,
            "grayscale": shape[3] == 1,
            "fps": null,
        },
    })
}

fn media_row(filename: &str, shape: &Value, grayscale: &Value) -> Value {
    json!({
        "filename": filename,
        "backend": {
            "type": "MediaVideo",
            "shape": shape,
            "filename": filename,
            "grayscale": grayscale,
            "bgr": true,
            "dataset": "",
            "input_format": "",
            "fps": null,
        },
    })
}

fn absolute(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
        .replace('\\', "/")
}

/// The video id `frames.video` holds for this video: sleap-io writes the N of an HDF5
/// video's `videoN/...` dataset, and the list index for any other video.
pub(crate) fn frame_video_id(video: &Video, index: usize) -> u32 {
    let dataset = match &video.source {
        VideoSource::Embedded { dataset, .. } => Some(dataset.as_str()),
        VideoSource::External {
            dataset: Some(d), ..
        } => Some(d.as_str()),
        _ => None,
    };
    dataset
        .and_then(|d| d.split('/').next())
        .and_then(|g| g.strip_prefix("video"))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(index as u32)
}

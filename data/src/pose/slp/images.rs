//! A labels file's frames as images: PNG/JPEG bytes embedded in an HDF5 file (`.pkg.slp` or an
//! HDF5 video), raw frames of an HDF5 video (a rank-4 uint8 dataset), image files of an image
//! sequence (PNG, JPEG, TIFF), pages of a multi-page TIFF stack ([`super::tiff`]), or frames of
//! a media file (mp4, avi, ...) decoded by ffmpeg ([`super::media`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5::types::{TypeDescriptor, VarLenArray};

use super::h5::{f64_attr, h5, open_hdf5, str_attr};
use super::media;
use super::tiff;
use super::video::resolve;
use crate::error::{DataError, Result};
use crate::pose::{Image, Labels, Video, VideoSource};

/// Embedded frames: one encoded image per row of `dataset`.
struct Embedded {
    file_path: PathBuf,
    dataset: hdf5::Dataset,
    name: String,
    format: String,
    rows: HashMap<u64, usize>,
    /// The stored bytes decode to BGR (older SLEAP encoded with OpenCV without saying so).
    bgr: bool,
}

/// Raw frames of an HDF5 video outside the labels file (sleap-io's `HDF5Video` with a rank-4
/// uint8 dataset): [frames, height, width, channels], or SLEAP's channels_first [frames,
/// channels, width, height] (told apart by where the 1 or 3 channels are).
struct RawFrames {
    file_path: PathBuf,
    dataset: hdf5::Dataset,
    name: String,
    channels_first: bool,
}

enum Reader {
    Embedded(Embedded),
    Raw(RawFrames),
    Images(Vec<PathBuf>),
    /// A media file or a TIFF stack: its labeled frames decoded once when the labels are opened
    /// (as sleap-nn's in-memory cache holds them); any other frame is decoded when asked for.
    Decoded {
        path: PathBuf,
        file: FrameFile,
        frames: HashMap<u64, Image>,
    },
    /// Why this video's frames cannot be read (returned on each read).
    Unavailable(String),
}

/// A video file whose frames are decoded here rather than read from HDF5.
#[derive(Clone, Copy)]
enum FrameFile {
    /// mp4, avi, ... through ffmpeg.
    Media,
    /// A multi-page TIFF: frame i is page i.
    Tiff,
}

impl FrameFile {
    /// Frames `wanted` of `path`, decoded in one pass.
    fn read(self, path: &Path, wanted: &[u64]) -> std::result::Result<HashMap<u64, Image>, String> {
        match self {
            FrameFile::Media => media::read_frames(path, wanted),
            FrameFile::Tiff => {
                let mut wanted = wanted.to_vec();
                wanted.sort_unstable();
                wanted.dedup();
                let mut frames = HashMap::new();
                tiff::for_each_page(path, Some(&wanted), |i, img| {
                    frames.insert(i, img);
                    Ok(())
                })?;
                Ok(frames)
            }
        }
    }
}

struct VideoFrames {
    reader: Reader,
    name: String,
    /// From the recorded shape; None detects per frame (first channel equal to the last).
    grayscale: Option<bool>,
}

/// The frames of a labels file's videos, decoded on request.
pub struct SlpImages {
    labels_path: PathBuf,
    videos: Vec<VideoFrames>,
}

impl SlpImages {
    /// Prepare reading the frames of `labels` (read from `labels_path`). Fails when a video
    /// that has labeled frames cannot be read, with an error saying what to do; videos
    /// without labeled frames fail only when a frame of theirs is requested.
    pub fn open(labels_path: &Path, labels: &Labels) -> Result<Self> {
        let mut files: HashMap<PathBuf, hdf5::File> = HashMap::new();
        let mut videos = Vec::with_capacity(labels.videos.len());
        for (i, v) in labels.videos.iter().enumerate() {
            let labeled: Vec<u64> = labels
                .frames
                .iter()
                .filter(|f| f.video == i)
                .map(|f| f.frame_idx)
                .collect();
            let reader = open_video(labels_path, v, &labeled, &mut files)?;
            videos.push(VideoFrames {
                reader,
                name: v.filename.clone(),
                grayscale: v.shape.map(|s| s[3] == 1),
            });
        }
        let images = SlpImages {
            labels_path: labels_path.to_path_buf(),
            videos,
        };
        for f in &labels.frames {
            if let Some(VideoFrames {
                reader: Reader::Unavailable(problem),
                name,
                ..
            }) = images.videos.get(f.video)
            {
                return Err(images.unavailable(name, problem));
            }
        }
        Ok(images)
    }

    pub fn n_videos(&self) -> usize {
        self.videos.len()
    }

    fn unavailable(&self, video: &str, problem: &str) -> DataError {
        DataError::VideoUnavailable {
            labels: self.labels_path.clone(),
            video: video.to_string(),
            problem: problem.to_string(),
        }
    }

    /// Frame `frame_idx` of video `video` (an index into `Labels::videos`): grayscale as 1
    /// channel, colour as 3 (RGB).
    pub fn frame(&self, video: usize, frame_idx: u64) -> Result<Image> {
        let v = self.videos.get(video).ok_or_else(|| {
            DataError::invalid(
                &self.labels_path,
                "videos_json",
                format!("video {video} of {}", self.videos.len()),
            )
        })?;
        let img = match &v.reader {
            Reader::Unavailable(problem) => return Err(self.unavailable(&v.name, problem)),
            Reader::Embedded(e) => {
                let row = *e.rows.get(&frame_idx).ok_or_else(|| {
                    DataError::invalid(
                        &e.file_path,
                        &e.name,
                        format!("frame {frame_idx} is not embedded (frame_numbers lacks it)"),
                    )
                })?;
                let bytes = read_row(&e.file_path, &e.dataset, &e.name, row)?;
                let object = format!("{}[{row}] (frame {frame_idx})", e.name);
                let mut img = decode(&bytes, Some(&e.format))
                    .map_err(|p| DataError::invalid(&e.file_path, &object, p))?;
                if e.bgr && img.channels == 3 {
                    img.data.chunks_exact_mut(3).for_each(|p| p.swap(0, 2));
                }
                img
            }
            Reader::Raw(r) => read_raw_frame(r, frame_idx)?,
            Reader::Decoded { path, file, frames } => match frames.get(&frame_idx) {
                Some(img) => img.clone(),
                None => file
                    .read(path, &[frame_idx])
                    .map_err(|p| self.unavailable(&v.name, &p))?
                    .remove(&frame_idx)
                    .ok_or_else(|| self.unavailable(&v.name, "the decoder returned no frame"))?,
            },
            Reader::Images(files) => {
                let f = files.get(frame_idx as usize).ok_or_else(|| {
                    self.unavailable(
                        &v.name,
                        &format!("frame {frame_idx} of an image sequence of {}", files.len()),
                    )
                })?;
                let bytes = std::fs::read(f).map_err(|e| DataError::io(f, e))?;
                let ext = f
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_ascii_lowercase);
                decode(&bytes, ext.as_deref()).map_err(|p| DataError::invalid(f, "image", p))?
            }
        };
        Ok(to_grayscale_if(img, v.grayscale))
    }
}

/// sleap-io keeps the first channel of a grayscale video; with no recorded shape it calls a
/// frame grayscale when its first and last channels are equal.
pub fn to_grayscale_if(img: Image, grayscale: Option<bool>) -> Image {
    if img.channels == 1 {
        return img;
    }
    let c = img.channels;
    let gray = grayscale.unwrap_or_else(|| img.data.chunks_exact(c).all(|p| p[0] == p[c - 1]));
    if !gray {
        return img;
    }
    Image {
        data: img.data.chunks_exact(c).map(|p| p[0]).collect(),
        channels: 1,
        ..img
    }
}

fn open_video(
    labels_path: &Path,
    v: &Video,
    labeled: &[u64],
    files: &mut HashMap<PathBuf, hdf5::File>,
) -> Result<Reader> {
    Ok(match &v.source {
        VideoSource::Embedded {
            file,
            dataset,
            format,
            frame_numbers,
        } => {
            if !file.is_file() {
                return Ok(Reader::Unavailable(format!(
                    "its frames are embedded in {}, which does not exist; put that file at this path",
                    file.display()
                )));
            }
            let h = match files.get(file) {
                Some(h) => h.clone(),
                None => {
                    let h = open_hdf5(file)?;
                    files.insert(file.clone(), h.clone());
                    h
                }
            };
            let ds = h.dataset(dataset).map_err(h5(file, dataset))?;
            // Format 1.4 added channel_order; before it, colour frames were stored BGR.
            let bgr = match str_attr(&ds, "channel_order") {
                Some(order) => order.eq_ignore_ascii_case("BGR"),
                None => h
                    .group("metadata")
                    .ok()
                    .and_then(|g| f64_attr(&g, "format_id"))
                    .is_none_or(|id| id < 1.4),
            };
            Reader::Embedded(Embedded {
                file_path: file.clone(),
                dataset: ds,
                name: dataset.clone(),
                format: format.clone(),
                rows: frame_numbers
                    .iter()
                    .enumerate()
                    .map(|(r, &f)| (f, r))
                    .collect(),
                bgr,
            })
        }
        VideoSource::ImageSequence { files: names } => {
            let mut found = Vec::with_capacity(names.len());
            for n in names {
                match resolve(labels_path, n) {
                    Some(p) => found.push(p),
                    None => {
                        return Ok(Reader::Unavailable(format!(
                            "image file {n} not found (as given, nor beside the labels file); \
                             put the images at that path, or embed the frames with sleap-io: \
                             sio.save_slp(sio.load_slp(\"{}\"), \"labels.pkg.slp\", embed=\"user\")",
                            labels_path.display()
                        )))
                    }
                }
            }
            Reader::Images(found)
        }
        VideoSource::External {
            filename,
            backend,
            dataset,
        } => {
            let labels_name = labels_path.display();
            let Some(path) = resolve(labels_path, filename) else {
                return Ok(Reader::Unavailable(format!(
                    "{filename} does not exist (as given, nor beside the labels file); put the \
                     video there, or point the labels at where it is with sleap-io: python -c \
                     'import sleap_io as sio; l = sio.load_slp(\"{labels_name}\"); \
                     l.replace_filenames(filename_map={{\"{filename}\": \"NEW/PATH\"}}); \
                     l.save(\"remapped.slp\")'"
                )));
            };
            if let (Some(ds), true) = (dataset, backend == "HDF5Video") {
                if let Some(raw) = open_raw_frames(&path, ds) {
                    return Ok(Reader::Raw(raw));
                }
            }
            let stack =
                backend == "TiffVideo" || (backend != "MediaVideo" && tiff::is_tiff_file(&path));
            if !stack && backend != "MediaVideo" && !media::is_media_file(&path) {
                return Ok(Reader::Unavailable(format!(
                    "{} exists, but anvil does not read {backend} videos; embed the labeled \
                     frames into a .pkg.slp with sleap-io: python -c 'import sleap_io as sio; \
                     sio.save_slp(sio.load_slp(\"{labels_name}\"), \"labels.pkg.slp\", \
                     embed=\"user\")' and use that file",
                    path.display()
                )));
            }
            let file = if stack {
                FrameFile::Tiff
            } else {
                FrameFile::Media
            };
            if !labeled.is_empty() && !stack {
                tracing::info!(
                    video = %path.display(),
                    frames = labeled.len(),
                    "decoding the labeled frames with ffmpeg"
                );
            }
            // Kept as the frames will be read: one channel for a grayscale video.
            let grayscale = v.shape.map(|s| s[3] == 1);
            match file.read(&path, labeled) {
                Ok(frames) => Reader::Decoded {
                    path,
                    file,
                    frames: frames
                        .into_iter()
                        .map(|(i, img)| (i, to_grayscale_if(img, grayscale)))
                        .collect(),
                },
                Err(problem) => Reader::Unavailable(format!("{}: {problem}", path.display())),
            }
        }
    })
}

/// `dataset` of the HDF5 file `path` as raw frames, or None when it is not a rank-4 uint8
/// dataset (then it is reported as a video anvil cannot read).
fn open_raw_frames(path: &Path, dataset: &str) -> Option<RawFrames> {
    let ds = open_hdf5(path).ok()?.dataset(dataset).ok()?;
    let unsigned_byte = matches!(
        ds.dtype().and_then(|t| t.to_descriptor()),
        Ok(TypeDescriptor::Unsigned(hdf5::types::IntSize::U1))
    );
    let shape = ds.shape();
    if shape.len() != 4 || !unsigned_byte {
        return None;
    }
    let is_channels = |n: usize| n == 1 || n == 3;
    let channels_first = !is_channels(shape[3]) && is_channels(shape[1]);
    Some(RawFrames {
        file_path: path.to_path_buf(),
        dataset: ds,
        name: dataset.to_string(),
        channels_first,
    })
}

/// Frame `frame_idx` of a raw HDF5 video as height × width × channels.
fn read_raw_frame(r: &RawFrames, frame_idx: u64) -> Result<Image> {
    let shape = r.dataset.shape();
    let i = frame_idx as usize;
    let object = format!("{}[{frame_idx}]", r.name);
    if i >= shape[0] {
        return Err(DataError::invalid(
            &r.file_path,
            &object,
            format!("the video has {} frames", shape[0]),
        ));
    }
    let a = r
        .dataset
        .read_slice::<u8, _, ndarray::Ix4>((i..i + 1, .., .., ..))
        .map_err(h5(&r.file_path, &object))?;
    let (_, d1, d2, d3) = a.dim();
    Ok(if r.channels_first {
        // SLEAP's channels_first frames are [channels, width, height] (sleap-io transposes
        // them with (2, 1, 0)).
        let (c, w, h) = (d1, d2, d3);
        let mut data = Vec::with_capacity(h * w * c);
        for y in 0..h {
            for x in 0..w {
                for ch in 0..c {
                    data.push(a[[0, ch, x, y]]);
                }
            }
        }
        Image {
            height: h,
            width: w,
            channels: c,
            data,
        }
    } else {
        Image {
            height: d1,
            width: d2,
            channels: d3,
            data: a.iter().copied().collect(),
        }
    })
}

/// The encoded bytes of one embedded frame: a variable-length byte row, or a row of a
/// fixed-width 2-D byte dataset (the padding after the image's end marker is left to the
/// decoder, as OpenCV does: a PNG or JPEG may itself end in zero bytes).
fn read_row(path: &Path, ds: &hdf5::Dataset, name: &str, row: usize) -> Result<Vec<u8>> {
    let object = || format!("{name}[{row}]");
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(h5(path, &object()))?;
    // h5py stores the bytes as int8; reading them as the other signedness would make HDF5
    // clamp every byte >= 0x80, so read them as stored.
    let unsigned = match &desc {
        TypeDescriptor::VarLenArray(base) => matches!(**base, TypeDescriptor::Unsigned(_)),
        d => matches!(d, TypeDescriptor::Unsigned(_)),
    };
    if ds.ndim() == 2 {
        let sel = (row..row + 1, ..);
        return if unsigned {
            ds.read_slice_2d::<u8, _>(sel)
                .map(|a| a.iter().copied().collect())
        } else {
            ds.read_slice_2d::<i8, _>(sel)
                .map(|a| a.iter().map(|&b| b as u8).collect())
        }
        .map_err(h5(path, &object()));
    }
    let sel = row..row + 1;
    if unsigned {
        let a = ds
            .read_slice_1d::<VarLenArray<u8>, _>(sel)
            .map_err(h5(path, &object()))?;
        Ok(a.first().map(|r| r.as_slice().to_vec()).unwrap_or_default())
    } else {
        let a = ds
            .read_slice_1d::<VarLenArray<i8>, _>(sel)
            .map_err(h5(path, &object()))?;
        Ok(a.first()
            .map(|r| r.as_slice().iter().map(|&b| b as u8).collect())
            .unwrap_or_default())
    }
}

/// Decode PNG, JPEG or TIFF bytes (by their signature) to 8-bit, 1 or 3 channels.
pub(crate) fn decode(bytes: &[u8], format: Option<&str>) -> std::result::Result<Image, String> {
    let is_png = bytes.starts_with(&[0x89, b'P', b'N', b'G']);
    let is_jpeg = bytes.starts_with(&[0xff, 0xd8]);
    if tiff::is_tiff(bytes) {
        return tiff::decode_tiff(bytes);
    }
    match (format, is_png, is_jpeg) {
        (_, true, _) => decode_png(bytes),
        (_, _, true) => decode_jpeg(bytes),
        (Some(f), _, _) => Err(format!(
            "{} bytes are not a PNG, JPEG or TIFF image (format '{f}')",
            bytes.len()
        )),
        (None, _, _) => Err(format!(
            "{} bytes are not a PNG, JPEG or TIFF image",
            bytes.len()
        )),
    }
}

fn decode_png(bytes: &[u8]) -> std::result::Result<Image, String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = dec.read_info().map_err(|e| format!("PNG: {e}"))?;
    let size = reader.output_buffer_size().ok_or("PNG: image too large")?;
    let mut buf = vec![0u8; size];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("PNG: {e}"))?;
    buf.truncate(info.buffer_size());
    let (h, w) = (info.height as usize, info.width as usize);
    let (channels, data) = match info.color_type {
        png::ColorType::Grayscale => (1, buf),
        png::ColorType::Rgb => (3, buf),
        // Alpha is dropped: frames are images of the scene, not overlays.
        png::ColorType::GrayscaleAlpha => (1, buf.chunks_exact(2).map(|p| p[0]).collect()),
        png::ColorType::Rgba => (
            3,
            buf.chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        ),
        png::ColorType::Indexed => return Err("PNG: palette not expanded".into()),
    };
    Ok(Image {
        height: h,
        width: w,
        channels,
        data,
    })
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<Image, String> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    let mut dec = zune_jpeg::JpegDecoder::new(std::io::Cursor::new(bytes));
    dec.decode_headers().map_err(|e| format!("JPEG: {e:?}"))?;
    let gray = dec.input_colorspace() == Some(ColorSpace::Luma);
    let (out, channels) = if gray {
        (ColorSpace::Luma, 1)
    } else {
        (ColorSpace::RGB, 3)
    };
    dec.set_options(dec.options().jpeg_set_out_colorspace(out));
    let data = dec.decode().map_err(|e| format!("JPEG: {e:?}"))?;
    let info = dec.info().ok_or("JPEG: no header")?;
    Ok(Image {
        height: info.height as usize,
        width: info.width as usize,
        channels,
        data,
    })
}

#[cfg(test)]
mod tests {
    /// Loaders read frames from several threads through one `SlpImages`.
    #[test]
    fn slp_images_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<super::SlpImages>();
    }
}

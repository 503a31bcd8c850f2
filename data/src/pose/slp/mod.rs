//! SLEAP labels files (`.slp`, `.pkg.slp`): reading them as sleap-io 0.9.5 does, decoding the
//! frames they embed or refer to, and writing labels (predictions) that sleap-io opens.
//!
//! - [`read_labels`]: skeletons, videos, tracks, frames and instances of a labels file.
//! - [`SlpImages`]: a labels file's frames as [`crate::pose::Image`]s.
//! - [`media`]: frames of media files (mp4, avi, ...) through ffmpeg.
//! - [`tiff`]: pages of multi-page TIFF stacks and `.tif` images.
//! - [`write_labels`]: a labels file, written to a temporary name and renamed.
//! - [`write_labels_with_frames`]: the same with frames embedded as PNG (a `.pkg.slp`).

mod h5;
mod images;
pub mod media;
mod read;
mod skeleton;
pub mod tiff;
mod video;
mod write;

pub use images::{to_grayscale_if, SlpImages};
pub use read::read_labels;
pub use video::missing_videos;
pub use write::{write_labels, write_labels_with_frames};

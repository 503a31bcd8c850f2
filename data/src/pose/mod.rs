//! Pose data for anvil: SLEAP labels files (`.slp`) and everything between them and a batch of
//! images with confidence-map targets, plus the evaluation of predictions against ground truth.
//!
//! - [`labels`]: the in-memory labels (skeletons, videos, frames, instances, tracks).
//! - [`slp`]: reading `.slp` (HDF5) files, decoding their frames, writing labels.
//! - [`dataset`]: labeled frames as samples: split, input images and target maps in batches.
//! - [`frame`]: a decoded frame to the network's input (scale, channels, padding).
//! - [`augment`]: intensity and geometric augmentation of a frame and its keypoints together.
//! - [`targets`]: confidence maps and centroids.
//! - [`peaks`]: peak finding on confidence maps, instance crops and the automatic crop size.
//! - [`viz`]: pictures of predictions during training (PNG).
//! - [`synth`]: synthetic labels with known keypoints (moving shapes), written as `.pkg.slp`.
//! - [`eval`]: OKS matching, mAP/mAR, distances, PCK and visibility, as sleap-nn evaluates.

pub mod augment;
pub mod dataset;
pub mod eval;
pub mod frame;
pub mod labels;
pub mod peaks;
pub mod slp;
pub mod synth;
pub mod targets;
pub mod viz;

pub use eval::{evaluate, EvalError, EvalOptions, Metrics};
pub use labels::{
    Image, Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video, VideoSource,
};

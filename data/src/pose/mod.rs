//! Pose data for anvil: SLEAP labels files (`.slp`) and everything between them and a batch of
//! images with confidence-map targets, plus the evaluation of predictions against ground truth.
//!
//! - [`labels`]: the in-memory labels (skeletons, videos, frames, instances, tracks).
//! - [`slp`]: reading `.slp` (HDF5) files, decoding their embedded images, writing predictions.
//! - [`eval`]: OKS matching, mAP/mAR, distances, PCK and visibility, as sleap-nn evaluates.

pub mod labels;
pub mod slp;

pub use labels::{
    Image, Instance, InstanceKind, LabeledFrame, Labels, Skeleton, Video, VideoSource,
};

//! Pose estimation: sleap-nn's UNet models trained on SLEAP labels.
//!
//! - [`spec`]: from a sleap-nn config to the network plan and sample spec, refusing by name
//!   what anvil cannot honour yet.
//! - [`unet`]: the UNet + confidence-map head on a [`kernels::backend::ConvDevice`].
//! - [`loss`]: the mean squared error on confidence maps and online hard keypoint mining.
//! - [`train`]: one worker's training loop.

pub mod loss;
pub mod predict;
pub mod spec;
pub mod train;
pub mod unet;

pub use train::train_pose;

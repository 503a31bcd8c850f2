//! Pose estimation: sleap-nn's UNet models ([`unet`]) trained on SLEAP labels.

pub mod unet;

//! The worker: data loading, models, the training step, gradient all-reduce and checkpoints.

pub mod ring;

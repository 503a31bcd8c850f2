//! The worker: data loading, models, the training step, gradient all-reduce and checkpoints.

pub mod alloc;
pub mod bench;
pub mod checkpoint;
pub mod device;
pub mod embed;
pub mod embed_parts;
pub mod export;
pub mod finetune;
pub mod join;
pub mod loggers;
pub mod model;
#[cfg(feature = "cuda")]
pub mod nccl;
pub mod overlap;
pub mod pose;
pub mod preempt;
pub mod ring;
pub mod schedule;
pub mod sync;
pub mod telemetry;
pub mod threads;
pub mod train;

//! The training loop of one worker: data → model → gradient sync → AdamW, with validation,
//! checkpoints, resume and metrics. No networking here: the caller passes a [`GradientSync`]
//! ([`NoSync`] for one process, the CPU ring for several) and the trainer calls it once per
//! optimizer step, on the last micro-batch of gradient accumulation.
//!
//! `trainer.rs` reads top to bottom: [`train`], the whole loop, then each step it takes as a
//! method of [`Trainer`].
//!
//! **World-size invariance.** A model's backward accumulates the gradient of its loss *sum*
//! over the micro-batch's targets (masked genes). This rank's loss sum, target count, cells,
//! tokens and stop vote ([`StepTotals`]) travel after the gradients in the same all-reduce
//! (mean), which so also yields their global means. Dividing the reduced gradient by the
//! reduced count gives the gradient of the mean loss over every target of the global batch —
//! exactly what one worker with the whole batch computes, up to floating-point reduction order.
//!
//! **Determinism.** Data order, masking and dropout derive from (seed, epoch, step, …) with
//! counter-based generators, so the loss sequence is a function of the config, and a run
//! resumed from a checkpoint repeats the uninterrupted one.
//!
//! **Masked positions are hidden.** The model sees neither the gene nor the expression value
//! at any masked position (issue 4: [MASK] id and the mask value, as scGPT does), in training
//! and validation alike, so the task cannot be solved by reading the input. The masker's
//! `random_replace_ratio` / `keep_ratio` choices are therefore overridden at the model's input:
//! a kept or replaced gene would let the loss be lowered by copying it (measured: training loss
//! 0.4 nats below the frequency baseline while the hidden-input validation loss stayed above it).

mod baseline;
mod events;
mod param_groups;
mod totals;
mod trainer;

pub use crate::sync::{GradientSync, NoSync};
pub use baseline::frequency_baseline;
pub use events::{Control, TrainError, TrainEvent, TrainOptions, TrainSummary};
pub use param_groups::{decay_free, decay_free_ranges};
pub use totals::StepTotals;
pub use trainer::{params_hash, train, train_on, MicroStep, Reduced, Trainer};

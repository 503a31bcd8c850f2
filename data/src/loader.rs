//! Batches for one rank, prefetched on background threads, from a resumable position.
//!
//! Thread w of W prepares steps start+w, start+w+W, ... into its own bounded channel and the
//! consumer takes step s from thread (s - start) mod W, so batches arrive in step order and
//! their contents never depend on W or on timing. A loader covers one epoch (from its start
//! step); make a new one per epoch. [`Loader::position`] is where to resume.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::pipeline::{Batch, Pipeline, Workspace};
use crate::plan::{rank_slice, ShardPlan, Split};

/// Where a run is in the data: the next batch to train is `step` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub step: u64,
}

/// Masking key for validation batches: fixed, so validation loss is comparable across epochs.
pub const VAL_MASK_EPOCH: u64 = u64::MAX;

#[derive(Debug, Clone, Copy)]
pub struct LoaderOptions {
    pub rank: usize,
    pub world_size: usize,
    /// Cells per rank per step (`training.batch_size`).
    pub batch_size: usize,
    /// Prefetch threads (`data.num_workers`); 0 builds batches on the calling thread.
    pub num_workers: usize,
    pub split: Split,
    /// Apply masking (pretraining). Without it labels are all ignored.
    pub mask: bool,
}

impl LoaderOptions {
    /// Training options from a config: `training.batch_size` per rank, `data.num_workers`
    /// prefetch threads, masking on.
    pub fn from_config(
        cfg: &configs::scmodelforge::ScModelForgeConfig,
        rank: usize,
        world_size: usize,
        split: Split,
    ) -> Self {
        LoaderOptions {
            rank,
            world_size,
            batch_size: cfg.training.batch_size,
            num_workers: cfg.data.num_workers,
            split,
            mask: true,
        }
    }
}

struct Shared {
    pipeline: Arc<Pipeline>,
    order: Vec<u64>,
    opts: LoaderOptions,
    epoch: u64,
}

impl Shared {
    fn make(&self, step: u64, ws: &mut Workspace) -> Result<Batch> {
        let o = &self.opts;
        let cells = rank_slice(&self.order, step, o.rank, o.batch_size, o.world_size);
        let mask_epoch = match (o.mask, o.split) {
            (false, _) => None,
            (true, Split::Train) => Some(self.epoch),
            (true, Split::Val) => Some(VAL_MASK_EPOCH),
        };
        let mut b = self.pipeline.batch(cells, mask_epoch, ws)?;
        b.epoch = self.epoch;
        b.step = step;
        Ok(b)
    }
}

pub struct Loader {
    shared: Arc<Shared>,
    next: u64,
    start: u64,
    end: u64,
    rx: Vec<Receiver<Result<Batch>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    ws: Workspace,
    failed: bool,
}

impl Loader {
    /// A loader over `start.epoch` beginning at `start.step`.
    pub fn new(
        pipeline: Arc<Pipeline>,
        plan: &ShardPlan,
        opts: LoaderOptions,
        start: Position,
    ) -> Result<Self> {
        if opts.world_size == 0 || opts.rank >= opts.world_size || opts.batch_size == 0 {
            return Err(DataError::Config(format!(
                "bad loader layout: rank {} of world size {}, batch size {}",
                opts.rank, opts.world_size, opts.batch_size
            )));
        }
        let g = opts.batch_size * opts.world_size;
        let end = plan.steps(opts.split, g);
        let order = plan.order(opts.split, start.epoch);
        let shared = Arc::new(Shared {
            pipeline,
            order,
            opts,
            epoch: start.epoch,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let mut rx = Vec::new();
        let mut threads = Vec::new();
        let first = start.step.min(end);
        for w in 0..opts.num_workers as u64 {
            let (tx, r) = sync_channel::<Result<Batch>>(2);
            rx.push(r);
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            let h = std::thread::Builder::new()
                .name(format!("anvil-data-{w}"))
                .spawn(move || {
                    let mut ws = Workspace::default();
                    let mut step = first + w;
                    while step < end && !stop.load(Ordering::Relaxed) {
                        let b = shared.make(step, &mut ws);
                        let is_err = b.is_err();
                        if tx.send(b).is_err() || is_err {
                            break;
                        }
                        step += shared.opts.num_workers as u64;
                    }
                })
                .map_err(|e| {
                    DataError::Config(format!("cannot start a data loader thread: {e}"))
                })?;
            threads.push(h);
        }
        Ok(Loader {
            shared,
            next: first,
            start: first,
            end,
            rx,
            stop,
            threads,
            ws: Workspace::default(),
            failed: false,
        })
    }

    /// Steps in this epoch (for this split and layout).
    pub fn steps_per_epoch(&self) -> u64 {
        self.end
    }

    /// The position of the next batch this loader will yield; after the last batch of an
    /// epoch, step 0 of the next epoch.
    pub fn position(&self) -> Position {
        if self.next >= self.end {
            Position {
                epoch: self.shared.epoch + 1,
                step: 0,
            }
        } else {
            Position {
                epoch: self.shared.epoch,
                step: self.next,
            }
        }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end || self.failed {
            return None;
        }
        let step = self.next;
        let out = if self.rx.is_empty() {
            self.shared.make(step, &mut self.ws)
        } else {
            let w = ((step - self.start) % self.rx.len() as u64) as usize;
            match self.rx[w].recv() {
                Ok(b) => b,
                Err(_) => Err(DataError::Config(
                    "a data loader thread stopped unexpectedly".into(),
                )),
            }
        };
        if out.is_err() {
            self.failed = true;
        } else {
            self.next += 1;
        }
        Some(out)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Dropping the receivers unblocks threads waiting to send.
        self.rx.clear();
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

//! Gradient all-reduce overlapped with backward.
//!
//! On the micro-batch that ends an optimizer step, backward reports each encoder layer's
//! gradient range as soon as the layer is done (`ScModel::train_batch`'s `ready` hook). Those
//! gradients are copied into buckets of at least `bucket_floats` (adjacent layers coalesce,
//! as PyTorch DDP's buckets do) and averaged on a communication thread while backward goes on
//! with the layers below. What no layer covers (embeddings, heads, norms, and the trainer's step
//! totals appended after the gradients) is averaged last, once backward is done. Every rank cuts the same buckets in the same
//! order, because they follow the parameter layout, so the collective calls match.
//!
//! The communication thread owns copies, never the gradient buffer itself, so backward keeps
//! writing the layers below while the ones above are on the wire; the results are copied back
//! when the step's last bucket has arrived.

use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kernels::Device;

use crate::sync::{GradDtype, GradientSync};

/// Default bucket size: 1 MiB of f32 gradients.
pub const BUCKET_FLOATS: usize = 256 * 1024;

/// Gradients of `range`, as the pieces backward reported, highest first (joined once, on the
/// communication thread).
struct Bucket {
    range: Range<usize>,
    pieces: Vec<Vec<f32>>,
}

/// A reduced bucket on its way back.
struct Reduced {
    range: Range<usize>,
    data: Vec<f32>,
}

/// One optimizer step's overlapped all-reduce, bound to a scope's communication thread.
pub struct Overlap {
    to_comm: Option<mpsc::Sender<Bucket>>,
    from_comm: mpsc::Receiver<Result<Reduced, String>>,
    /// Ranges reported but not sent yet (coalescing towards `bucket_floats`).
    pending: Option<Bucket>,
    sent: Vec<Range<usize>>,
    bucket_floats: usize,
}

impl Overlap {
    /// Starts the communication thread in `scope`; it averages each bucket it is sent with
    /// `sync`, in order, until the step is finished.
    pub fn start<'scope, 'env>(
        scope: &'scope std::thread::Scope<'scope, 'env>,
        sync: &'scope mut dyn GradientSync,
        bucket_floats: usize,
    ) -> Overlap {
        let (to_comm, rx) = mpsc::channel::<Bucket>();
        let (tx, from_comm) = mpsc::channel();
        scope.spawn(move || {
            for b in rx {
                let mut data = Vec::with_capacity(b.range.len());
                b.pieces
                    .iter()
                    .rev()
                    .for_each(|p| data.extend_from_slice(p));
                let range = b.range;
                let r =
                    reduce_bucket(sync, &mut data, range.len()).map(|()| Reduced { range, data });
                let failed = r.is_err();
                if tx.send(r).is_err() || failed {
                    break;
                }
            }
        });
        Overlap {
            to_comm: Some(to_comm),
            from_comm,
            pending: None,
            sent: Vec::new(),
            bucket_floats: bucket_floats.max(1),
        }
    }

    /// Backward finished `range`, whose gradients are `grads` (the hook's arguments).
    pub fn ready(&mut self, range: Range<usize>, grads: &[f32]) {
        if range.is_empty() {
            return;
        }
        // Backward walks the layout downwards: a range that ends where the pending bucket
        // starts joins it; anything else starts a new bucket.
        if self
            .pending
            .as_ref()
            .is_some_and(|p| range.end != p.range.start)
        {
            self.flush();
        }
        let p = self.pending.get_or_insert(Bucket {
            range: range.end..range.end,
            pieces: Vec::new(),
        });
        p.range.start = range.start;
        p.pieces.push(grads.to_vec());
        if p.range.len() >= self.bucket_floats {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if let Some(b) = self.pending.take() {
            self.send(b);
        }
    }

    fn send(&mut self, b: Bucket) {
        self.sent.push(b.range.clone());
        if let Some(tx) = &self.to_comm {
            // A closed channel means the thread stopped on an error; `finish` reports it.
            let _ = tx.send(b);
        }
    }

    /// Sends everything in `grads` not sent yet, with `tail` (the step's totals) appended to
    /// the last piece, waits for every bucket and writes the averages back into `grads` and
    /// `tail`. Returns how long it waited after backward (the exposed communication time).
    pub fn finish<D: Device<f32>>(
        mut self,
        dev: &D,
        grads: &mut D::Mem,
        tail: &mut [f32],
    ) -> Result<Duration, String> {
        self.flush();
        let len = dev.len(grads);
        let mut tail_sent = tail.is_empty();
        for gap in gaps(&self.sent, len) {
            let mut pieces = vec![dev.read(grads, gap.clone()).into_owned()];
            if gap.end == len && !tail_sent {
                // Pieces are joined highest first: the tail goes after the last gradients.
                pieces.insert(0, tail.to_vec());
                tail_sent = true;
            }
            self.send(Bucket { range: gap, pieces });
        }
        if !tail_sent {
            let pieces = vec![tail.to_vec()];
            self.send(Bucket {
                range: len..len,
                pieces,
            });
        }
        let waiting = Instant::now();
        let expected = self.sent.len();
        self.to_comm = None;
        for _ in 0..expected {
            let b = self
                .from_comm
                .recv()
                .map_err(|_| "the all-reduce thread stopped".to_string())??;
            let (g, t) = b.data.split_at(b.range.len());
            dev.write(grads, b.range.start, g);
            if !t.is_empty() {
                tail.copy_from_slice(t);
            }
        }
        Ok(waiting.elapsed())
    }
}

/// Averages one bucket: its first `grads` floats are gradients (in the run's gradient dtype),
/// the rest the step's totals (always f32). In f32 both go in one call.
fn reduce_bucket(
    sync: &mut dyn GradientSync,
    data: &mut [f32],
    grads: usize,
) -> Result<(), String> {
    let (g, tail) = data.split_at_mut(grads);
    match sync.grad_dtype() {
        GradDtype::F32 if !g.is_empty() => sync.all_reduce_mean(data),
        _ if tail.is_empty() => sync.all_reduce_grads_mean(g),
        _ => {
            if !g.is_empty() {
                sync.all_reduce_grads_mean(g)?;
            }
            sync.all_reduce_mean(tail)
        }
    }
}

/// The parts of `0..len` that no range in `covered` touches, in ascending order.
pub(crate) fn gaps(covered: &[Range<usize>], len: usize) -> Vec<Range<usize>> {
    let mut sorted: Vec<Range<usize>> = covered.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut at = 0;
    for r in sorted {
        if r.start > at {
            out.push(at..r.start);
        }
        at = at.max(r.end);
    }
    if at < len {
        out.push(at..len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the bucket sizes it sees and "averages" with a peer whose gradients are all 1.
    struct HalfWithOnes {
        calls: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl GradientSync for HalfWithOnes {
        fn all_reduce_mean(&mut self, g: &mut [f32]) -> Result<(), String> {
            self.calls.lock().unwrap().push(g.len());
            g.iter_mut().for_each(|x| *x = (*x + 1.0) / 2.0);
            Ok(())
        }
    }

    #[test]
    fn gaps_cover_the_rest() {
        assert_eq!(gaps(&[3..5, 8..10], 12), vec![0..3, 5..8, 10..12]);
        let whole = vec![0..6, 6..12];
        assert_eq!(gaps(&whole, 12), Vec::<Range<usize>>::new());
        assert_eq!(gaps(&[], 4), vec![0..4]);
    }

    #[test]
    fn every_element_is_reduced_once_in_layout_order_buckets() {
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sync = HalfWithOnes {
            calls: calls.clone(),
        };
        let mut grads: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let want: Vec<f32> = grads.iter().map(|x| (x + 1.0) / 2.0).collect();
        std::thread::scope(|s| {
            let mut ov = Overlap::start(s, &mut sync, 25);
            // Layers 70..90, 50..70, 30..50, 10..30 finish in this order (backward).
            for r in [70..90, 50..70, 30..50, 10..30] {
                ov.ready(r.clone(), &grads[r.clone()]);
            }
            ov.finish(&kernels::Cpu, &mut grads, &mut []).unwrap();
        });
        assert_eq!(grads, want);
        // 20-float layers coalesce in pairs to reach 25; then 0..10 and 90..100.
        assert_eq!(*calls.lock().unwrap(), vec![40, 40, 10, 10]);
    }

    #[test]
    fn an_all_reduce_error_surfaces_from_finish() {
        struct Broken;
        impl GradientSync for Broken {
            fn all_reduce_mean(&mut self, _: &mut [f32]) -> Result<(), String> {
                Err("lost rank 1".into())
            }
        }
        let mut grads = vec![1.0f32; 10];
        let mut broken = Broken;
        let r = std::thread::scope(|s| {
            let mut ov = Overlap::start(s, &mut broken, 4);
            ov.ready(5..10, &grads[5..10]);
            ov.finish(&kernels::Cpu, &mut grads, &mut [])
        });
        assert_eq!(r.unwrap_err(), "lost rank 1");
    }

    #[test]
    fn the_tail_travels_with_the_last_gap_in_one_call() {
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sync = HalfWithOnes {
            calls: calls.clone(),
        };
        let mut grads: Vec<f32> = (0..30).map(|i| i as f32).collect();
        let mut tail = [3.0f32, 5.0];
        std::thread::scope(|s| {
            let mut ov = Overlap::start(s, &mut sync, 100);
            ov.ready(10..20, &grads[10..20]);
            ov.finish(&kernels::Cpu, &mut grads, &mut tail).unwrap();
        });
        let want: Vec<f32> = (0..30).map(|i| (i as f32 + 1.0) / 2.0).collect();
        assert_eq!(grads, want);
        assert_eq!(tail, [2.0, 3.0]);
        // 10..20 from backward, then 0..10, then 20..30 with the 2 tail values.
        assert_eq!(*calls.lock().unwrap(), vec![10, 10, 12]);

        // Layers covering the end: the tail goes alone, last.
        calls.lock().unwrap().clear();
        let mut grads = vec![1.0f32; 8];
        let mut tail = [7.0f32];
        std::thread::scope(|s| {
            let mut ov = Overlap::start(s, &mut sync, 100);
            ov.ready(4..8, &grads[4..8]);
            ov.finish(&kernels::Cpu, &mut grads, &mut tail).unwrap();
        });
        assert_eq!(grads, vec![1.0; 8]);
        assert_eq!(tail, [4.0]);
        assert_eq!(*calls.lock().unwrap(), vec![4, 4, 1]);
    }

    /// Under bf16 the gradients and the totals go in separate calls: gradients through
    /// `all_reduce_grads_mean` (rounded, as the wire would), the totals exactly.
    #[test]
    fn under_bf16_the_tail_is_reduced_apart_and_exactly() {
        struct Bf16Ones {
            calls: Vec<(&'static str, usize)>,
        }
        impl GradientSync for Bf16Ones {
            fn all_reduce_mean(&mut self, g: &mut [f32]) -> Result<(), String> {
                self.calls.push(("f32", g.len()));
                g.iter_mut().for_each(|x| *x = (*x + 1.0) / 2.0);
                Ok(())
            }
            fn grad_dtype(&self) -> GradDtype {
                GradDtype::Bf16
            }
            fn all_reduce_grads_mean(&mut self, g: &mut [f32]) -> Result<(), String> {
                self.calls.push(("bf16", g.len()));
                g.iter_mut()
                    .for_each(|x| *x = kernels::precision::round_bf16((*x + 1.0) / 2.0));
                Ok(())
            }
        }
        let mut sync = Bf16Ones { calls: Vec::new() };
        let mut grads: Vec<f32> = (0..30).map(|i| i as f32 * 1.001).collect();
        // Token counts bf16 could not hold exactly (257 rounds to 256 in bf16).
        let mut tail = [513.0f32, 1.0];
        std::thread::scope(|s| {
            let mut ov = Overlap::start(s, &mut sync, 100);
            ov.ready(10..20, &grads[10..20]);
            ov.finish(&kernels::Cpu, &mut grads, &mut tail).unwrap();
        });
        assert_eq!(tail, [257.0, 1.0]);
        assert!(grads.iter().all(|g| g.to_bits() & 0xFFFF == 0), "{grads:?}");
        assert_eq!(
            sync.calls,
            vec![("bf16", 10), ("bf16", 10), ("bf16", 10), ("f32", 2)]
        );
    }
}

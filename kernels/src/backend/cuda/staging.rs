//! The next batch's arrays (token ids, positions, targets) copied to the GPU ahead of time.
//!
//! Ops get their index arrays as host slices. Uploading one at the op means a copy from
//! pageable memory on the compute stream, which the host waits for. Instead the trainer hands
//! the next batch's arrays to [`Staging::prefetch`] while the current step's backward runs:
//! they go through pinned buffers on a copy stream of their own, overlapping the compute. When
//! an op later asks for an array with exactly those bytes ([`Staging::find`]), the compute
//! stream waits for that copy's event and uses the device copy; anything else is uploaded at
//! the op as before, so a stale or missing prefetch changes no result.
//!
//! Two slots alternate: the batch being computed uses one while the next is copied into the
//! other. A slot is refilled only after the compute stream has finished every op of the step
//! that used it (an event recorded when the following step first used the other slot).

use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError, PinnedHostSlice};

/// One array of a slot: what was copied (to compare against), its pinned source and its
/// device copy, with the event that marks the copy done.
struct Staged {
    host: Vec<u8>,
    pinned: PinnedHostSlice<u8>,
    dev: CudaSlice<u8>,
    ready: Option<CudaEvent>,
}

#[derive(Default)]
struct Slot {
    arrays: Vec<Staged>,
    /// Recorded on the compute stream after the last op that could read this slot.
    released: Option<CudaEvent>,
    /// Whether an op has read this slot since it was filled.
    used: bool,
}

pub struct Staging {
    copy: Arc<CudaStream>,
    slots: [Slot; 2],
    /// The slot the compute stream read last (the other one is refilled).
    current: usize,
    /// Arrays found staged and arrays uploaded at the op, for the tests and the benchmark.
    pub hits: u64,
    pub misses: u64,
}

impl Staging {
    pub fn new(copy: Arc<CudaStream>) -> Self {
        Staging {
            copy,
            slots: Default::default(),
            current: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Starts copying `arrays` (raw bytes) into the slot the compute stream is not reading.
    pub fn prefetch(&mut self, compute: &CudaStream, arrays: &[&[u8]]) -> Result<(), DriverError> {
        let fill = 1 - self.current;
        let slot = &mut self.slots[fill];
        // Not read since the last fill: nothing of the compute stream can be using it.
        // Read but not released (the step after it was not prefetched): wait for everything
        // issued so far, which is correct if slower.
        let wait = match (slot.used, slot.released.take()) {
            (_, Some(e)) => Some(e),
            (true, None) => Some(compute.record_event(None)?),
            (false, None) => None,
        };
        if let Some(e) = &wait {
            self.copy.wait(e)?;
        }
        slot.used = false;
        slot.arrays.truncate(arrays.len());
        for (i, bytes) in arrays.iter().enumerate() {
            let fits = slot
                .arrays
                .get(i)
                .is_some_and(|s| s.pinned.len() >= bytes.len());
            if !fits {
                // A quarter more than asked, so slightly longer batches reuse it.
                let cap = (bytes.len() + bytes.len() / 4).max(1);
                // SAFETY: written below before any copy reads it.
                let pinned = unsafe { self.copy.context().alloc_pinned_with_flags::<u8>(cap, 0)? };
                let dev = self.copy.alloc_zeros::<u8>(cap)?;
                let s = Staged {
                    host: Vec::new(),
                    pinned,
                    dev,
                    ready: None,
                };
                if i < slot.arrays.len() {
                    slot.arrays[i] = s;
                } else {
                    slot.arrays.push(s);
                }
            }
            let s = &mut slot.arrays[i];
            // Waits for this pinned buffer's previous copy (two prefetches ago) to finish.
            s.pinned.as_mut_slice()?[..bytes.len()].copy_from_slice(bytes);
            s.host.clear();
            s.host.extend_from_slice(bytes);
            self.copy.memcpy_htod(&s.pinned, &mut s.dev)?;
            s.ready = Some(self.copy.record_event(None)?);
        }
        Ok(())
    }

    /// The device address of a staged copy of exactly `bytes`, after making `compute` wait
    /// for its copy; None when it was not prefetched.
    pub fn find(&mut self, compute: &CudaStream, bytes: &[u8]) -> Result<Option<u64>, DriverError> {
        let found = (0..2).find_map(|k| {
            let i = self.slots[k]
                .arrays
                .iter()
                .position(|s| s.host.len() == bytes.len() && s.host == bytes)?;
            Some((k, i))
        });
        let Some((k, i)) = found else {
            self.misses += 1;
            return Ok(None);
        };
        self.hits += 1;
        if k != self.current {
            // The first read of a newly filled slot starts a step: everything the previous
            // step issued is before this point, so the other slot may be refilled after it.
            let other = &mut self.slots[self.current];
            if other.used {
                other.released = Some(compute.record_event(None)?);
            }
            self.current = k;
        }
        let slot = &mut self.slots[k];
        slot.used = true;
        let s = &slot.arrays[i];
        if let Some(e) = &s.ready {
            compute.wait(e)?;
        }
        Ok(Some(s.dev.device_ptr(compute).0))
    }
}

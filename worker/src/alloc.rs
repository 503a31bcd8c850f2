//! Allocator settings for training processes.

/// Every training step allocates and frees activation buffers of the same sizes. glibc serves
/// large ones with fresh mmaps and returns them on free, so each step paid for page faults and
/// the kernel zeroing pages (~8% of a quickstart step). Keep freed memory in the heap instead;
/// the peak footprint is unchanged. Call once at start, before other threads exist.
pub fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator thresholds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

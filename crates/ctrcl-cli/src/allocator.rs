//! Keeps freed memory in the process for reuse instead of returning it to the kernel.
//!
//! A training step allocates and frees the same few hundred tensor buffers every iteration, many
//! of them megabytes large. glibc's defaults serve such blocks with `mmap` and hand them back with
//! `munmap` (or trim them off the heap top), so every step faults the same memory in again and the
//! kernel zeroes each page: `clear_page_erms` was 16% of a Swin-UNet step under `perf`. Raising
//! the mmap and trim thresholds makes the heap keep and reuse the blocks; peak RSS is unchanged
//! (the working set is the same every step). `CTRCL_SYSTEM_MALLOC=1` keeps glibc's defaults (for
//! A/B benchmarks). Other C libraries and platforms: nothing to do.

/// Largest block glibc will serve from the heap rather than with its own `mmap`, and the free
/// space at the top of the heap it keeps before trimming: 1 GiB each (`mallopt` takes an `int`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const KEEP_BYTES: libc::c_int = 1 << 30;

/// Call once at start-up, before any thread allocates.
pub fn keep_freed_memory() {
    if std::env::var_os("CTRCL_SYSTEM_MALLOC").is_some_and(|v| v != "0") {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before other threads
    // exist. A refused value (return 0) leaves glibc's default, which is still correct.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, KEEP_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, KEEP_BYTES);
    }
}

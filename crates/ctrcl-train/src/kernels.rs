//! How many GPU kernels this process compiled, and how many it loaded from the kernel cache
//! (issue #17: on a fresh card the first step is minutes of kernel compilation on one CPU core,
//! and that cost must stay visible in every run's `log.jsonl`).
//!
//! cubecl compiles each kernel the first time it is launched (NVRTC on CUDA, SPIR-V plus the
//! driver's pipeline compiler on Vulkan) and says so only through the `log` crate, at trace and
//! debug level, right before it compiles or right after it found the kernel in its persistent
//! cache. [`install`] puts a `log` hook in place that recognises exactly those records of the
//! cubecl version we pin (0.10.0; [`classify`] lists them) and counts them; every other record
//! is dropped, as it was before (ctrcl installs no other logger). The GPU builds of the binary
//! call [`install`] before any device exists; the CPU build never does, so [`counts`] is `None`
//! there and CPU logs carry no kernel keys.
//!
//! The counters are process-wide because cubecl's compilation is: a run reads them at its start
//! and logs the difference (an experiment runs many cells in one process). cubecl reports when
//! a compilation starts, not how long it took, so the seconds a run logs beside the count are
//! its first step's wall time, which on a cold GPU is almost all compilation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ACTIVE: AtomicBool = AtomicBool::new(false);
static COMPILED: AtomicU64 = AtomicU64::new(0);
static FROM_CACHE: AtomicU64 = AtomicU64::new(0);

/// What one cubecl log record says about a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// Compiled now (NVRTC on CUDA; cubecl's SPIR-V compiler on Vulkan).
    Compiled,
    /// Loaded from cubecl's persistent compilation cache (PTX or SPIR-V) instead.
    FromCache,
}

/// The kernels counted so far in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct KernelCounts {
    pub compiled: u64,
    pub from_cache: u64,
}

impl KernelCounts {
    /// The kernels counted between `start` and `self`.
    pub fn since(self, start: KernelCounts) -> KernelCounts {
        KernelCounts {
            compiled: self.compiled - start.compiled,
            from_cache: self.from_cache - start.from_cache,
        }
    }
}

/// Which kernel event a `log` record of cubecl 0.10.0 reports, if any. The records, from its
/// sources: `cubecl_cuda::compute::context` traces "Compiling kernel" before NVRTC and "Using
/// PTX cache" on a cache hit; `cubecl_wgpu::backend::vulkan` debugs "Compiling {name}" before
/// its SPIR-V compiler and `cubecl_wgpu::backend::base` traces "Using SPIR-V cache".
pub fn classify(target: &str, message: &str) -> Option<KernelEvent> {
    match (target, message) {
        ("cubecl_cuda::compute::context", "Compiling kernel") => Some(KernelEvent::Compiled),
        ("cubecl_cuda::compute::context", "Using PTX cache") => Some(KernelEvent::FromCache),
        ("cubecl_wgpu::backend::vulkan", m) if m.starts_with("Compiling ") => {
            Some(KernelEvent::Compiled)
        }
        ("cubecl_wgpu::backend::base", "Using SPIR-V cache") => Some(KernelEvent::FromCache),
        _ => None,
    }
}

/// The kernels counted since `start` (a reading of [`counts`]), or `None` where nothing counts.
pub fn since(start: Option<KernelCounts>) -> Option<KernelCounts> {
    Some(counts()?.since(start?))
}

/// Counts one event (the `log` hook calls this; tests may too).
pub fn note(event: KernelEvent) {
    match event {
        KernelEvent::Compiled => COMPILED.fetch_add(1, Ordering::Relaxed),
        KernelEvent::FromCache => FROM_CACHE.fetch_add(1, Ordering::Relaxed),
    };
}

/// The counts so far, or `None` where nothing counts them (the CPU build).
pub fn counts() -> Option<KernelCounts> {
    ACTIVE.load(Ordering::Relaxed).then(|| KernelCounts {
        compiled: COMPILED.load(Ordering::Relaxed),
        from_cache: FROM_CACHE.load(Ordering::Relaxed),
    })
}

struct KernelLog;

impl log::Log for KernelLog {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.target().starts_with("cubecl_")
    }

    fn log(&self, record: &log::Record) {
        let target = record.target();
        if !target.starts_with("cubecl_") {
            return;
        }
        // Literal messages need no formatting; only Vulkan's carries the kernel's name.
        let event = match record.args().as_str() {
            Some(message) => classify(target, message),
            None => classify(target, &record.args().to_string()),
        };
        if let Some(event) = event {
            note(event);
        }
    }

    fn flush(&self) {}
}

/// Starts counting: installs the `log` hook and lets trace records through to it. Returns
/// false (and counts nothing) where another logger was installed first.
pub fn install() -> bool {
    if log::set_logger(&KernelLog).is_err() {
        return false;
    }
    log::set_max_level(log::LevelFilter::Trace);
    ACTIVE.store(true, Ordering::Relaxed);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cubecls_records_are_classified_and_nothing_else_is() {
        use KernelEvent::*;
        let cuda = "cubecl_cuda::compute::context";
        assert_eq!(classify(cuda, "Compiling kernel"), Some(Compiled));
        assert_eq!(classify(cuda, "Using PTX cache"), Some(FromCache));
        let vulkan = "cubecl_wgpu::backend::vulkan";
        assert_eq!(classify(vulkan, "Compiling matmul_entry"), Some(Compiled));
        assert_eq!(classify(vulkan, "Supported CMMA sizes: []"), None);
        assert_eq!(
            classify("cubecl_wgpu::backend::base", "Using SPIR-V cache"),
            Some(FromCache)
        );
        // The same words from another module (or crate) are not kernel events.
        assert_eq!(classify("wgpu_core::device", "Compiling kernel"), None);
        assert_eq!(classify("cubecl_wgpu::backend::base", "Compiling x"), None);
    }

    /// Through the real `log` macros, as cubecl emits them: counted after `install`, and the
    /// run-relative difference is what `since` gives.
    #[test]
    fn the_hook_counts_what_cubecl_logs() {
        assert!(install(), "no other logger in this test binary");
        let start = counts().expect("counting after install");
        log::trace!(target: "cubecl_cuda::compute::context", "Compiling kernel");
        log::trace!(target: "cubecl_cuda::compute::context", "Compiling kernel");
        log::trace!(target: "cubecl_cuda::compute::context", "Using PTX cache");
        log::debug!(target: "cubecl_wgpu::backend::vulkan", "Compiling {}", "reduce_kernel");
        log::trace!(target: "wgpu_core::present", "Compiling kernel");
        let run = since(Some(start)).unwrap();
        assert_eq!(
            run,
            KernelCounts {
                compiled: 3,
                from_cache: 1
            }
        );
        assert_eq!(
            serde_json::json!(run),
            serde_json::json!({"compiled": 3, "from_cache": 1})
        );
    }
}

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
//! and logs the difference (an experiment runs many cells in one process). Upstream cubecl says
//! when a compilation starts, not how long it took; ctrcl's patched cubecl-cuda
//! (third_party/README.md) also traces "Compiled kernel in {µs} us" after each compilation, on
//! the server's serial path and on the compile pool's threads alike, so CUDA runs log
//! `compile_seconds` too: the compilations' own durations summed (with a compile pool, over its
//! threads, so it can exceed the wall time it cost). The Vulkan path is not timed
//! (`compile_seconds` is absent until a timing record was seen).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static ACTIVE: AtomicBool = AtomicBool::new(false);
static COMPILED: AtomicU64 = AtomicU64::new(0);
static FROM_CACHE: AtomicU64 = AtomicU64::new(0);
static COMPILE_MICROS: AtomicU64 = AtomicU64::new(0);
static TIMED: AtomicBool = AtomicBool::new(false);

/// What one cubecl log record says about a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEvent {
    /// Compiled now (NVRTC on CUDA; cubecl's SPIR-V compiler on Vulkan).
    Compiled,
    /// Loaded from cubecl's persistent compilation cache (PTX or SPIR-V) instead.
    FromCache,
    /// One compilation took this many microseconds (ctrcl's patched cubecl-cuda).
    CompileTime(u64),
}

/// The kernels counted so far in this process.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct KernelCounts {
    pub compiled: u64,
    pub from_cache: u64,
    /// Seconds the compilations took, summed; `None` where they are not timed (Vulkan).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compile_seconds: Option<f64>,
}

impl KernelCounts {
    /// The kernels counted between `start` and `self`.
    pub fn since(self, start: KernelCounts) -> KernelCounts {
        KernelCounts {
            compiled: self.compiled - start.compiled,
            from_cache: self.from_cache - start.from_cache,
            compile_seconds: self
                .compile_seconds
                .map(|s| s - start.compile_seconds.unwrap_or(0.0)),
        }
    }
}

/// Which kernel event a `log` record of cubecl 0.10.0 reports, if any. The records, from its
/// sources: `cubecl_cuda::compute::context` traces "Compiling kernel" before NVRTC and "Using
/// PTX cache" on a cache hit; `cubecl_wgpu::backend::vulkan` debugs "Compiling {name}" before
/// its SPIR-V compiler and `cubecl_wgpu::backend::base` traces "Using SPIR-V cache". ctrcl's
/// patch adds "Compiled kernel in {µs} us" to the CUDA context's records.
pub fn classify(target: &str, message: &str) -> Option<KernelEvent> {
    match (target, message) {
        ("cubecl_cuda::compute::context", "Compiling kernel") => Some(KernelEvent::Compiled),
        ("cubecl_cuda::compute::context", "Using PTX cache") => Some(KernelEvent::FromCache),
        ("cubecl_cuda::compute::context", m) if m.starts_with("Compiled kernel in ") => m
            .strip_prefix("Compiled kernel in ")?
            .strip_suffix(" us")?
            .parse()
            .ok()
            .map(KernelEvent::CompileTime),
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
        KernelEvent::CompileTime(micros) => {
            TIMED.store(true, Ordering::Relaxed);
            COMPILE_MICROS.fetch_add(micros, Ordering::Relaxed)
        }
    };
}

/// The counts so far, or `None` where nothing counts them (the CPU build).
pub fn counts() -> Option<KernelCounts> {
    ACTIVE.load(Ordering::Relaxed).then(|| KernelCounts {
        compiled: COMPILED.load(Ordering::Relaxed),
        from_cache: FROM_CACHE.load(Ordering::Relaxed),
        compile_seconds: TIMED
            .load(Ordering::Relaxed)
            .then(|| COMPILE_MICROS.load(Ordering::Relaxed) as f64 * 1e-6),
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
        // Literal messages need no formatting; Vulkan's carries the kernel's name, the timing
        // record its microseconds.
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
        assert_eq!(
            classify(cuda, "Compiled kernel in 1520034 us"),
            Some(CompileTime(1_520_034))
        );
        assert_eq!(classify(cuda, "Compiled kernel in 1.5 s"), None);
        assert_eq!(classify(cuda, "Compiled kernel in  us"), None);
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
    /// run-relative difference is what `since` gives; compile seconds appear with the first
    /// timing record and are summed.
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
                from_cache: 1,
                compile_seconds: None
            }
        );
        assert_eq!(
            serde_json::json!(run),
            serde_json::json!({"compiled": 3, "from_cache": 1})
        );
        // The patched cubecl-cuda's timing records (as `format!` arguments, as it emits them).
        for micros in [1_250_000u128, 750_000] {
            log::trace!(target: "cubecl_cuda::compute::context", "Compiled kernel in {micros} us");
        }
        let run = since(Some(start)).unwrap();
        assert_eq!(run.compiled, 3);
        assert!((run.compile_seconds.unwrap() - 2.0).abs() < 1e-9, "{run:?}");
        assert_eq!(
            serde_json::json!(run),
            serde_json::json!({"compiled": 3, "from_cache": 1, "compile_seconds": 2.0})
        );
    }
}

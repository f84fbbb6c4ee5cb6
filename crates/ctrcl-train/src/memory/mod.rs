//! Will a training step fit in this machine's memory? Estimated before training starts, so that
//! a run too large for the machine stops with a clear error naming the keys to change, instead
//! of aborting in its first step ("memory allocation of … bytes failed") or being killed by the
//! kernel's OOM killer.
//!
//! Measured, not modelled. [`Counting`] (the `ctrcl` binary's global allocator) keeps the bytes
//! live and their peak. Before the run, the real pair of students with the run's optimizers,
//! method and batch takes real steps on a synthetic batch at the three smallest image sizes the
//! students can tile (e.g. 32, 64, 128), each from a fresh build: the peak above the bytes live
//! before the build is the step's memory at that size. What does not grow with the image (the
//! parameters, their gradients, the optimizer state) is separated from what does (activations)
//! by fitting `peak(p) = a + b·p` on the pixel count `p` — and `+ c·p²` when a student is a
//! SegFormer, whose efficient self-attention is quadratic in the tokens. The image-dependent part
//! scales with the images per forward (`batch_size / peers`), the whole with the replicas on this
//! machine (`parallel.devices`). The estimate is checked in `tests/memory.rs` against a step
//! measured at the extrapolated size.
//!
//! Only on the CPU backend (host memory; a GPU's memory is the device's) and only when the run's
//! image size is above the calibration sizes: below them a step costs no more than calibrating.
//! The calibration draws random numbers before the run seeds its own streams, so a run's results
//! do not depend on it. `skip_memory_check = true` skips it.

use std::any::TypeId;

use anyhow::{bail, Result};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::cpu::CpuTrain;

use crate::config::TrainConfig;
use crate::role::Role;
use crate::student::{materialize_params, StudentOptimizer};

pub mod counter;
use crate::step::{pair_step, StepRates};
use crate::student::build_student;
pub use counter::{live_bytes, Counting};
use counter::{GRADIENT_PEAK, LIVE, PEAK};
use std::sync::atomic::Ordering::Relaxed;

/// Memory this process may still take, and what limits it: the smallest of the kernel's
/// `MemAvailable`, the cgroup's limit minus its usage (containers), and the address-space limit
/// (`ulimit -v`) minus this process's virtual size. `None` where none can be read.
pub fn available_bytes() -> Option<(u64, &'static str)> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let field = |text: &str, key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kib: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    let mut limits: Vec<(u64, &'static str)> = Vec::new();
    if let Some(v) = read("/proc/meminfo").and_then(|m| field(&m, "MemAvailable:")) {
        limits.push((v, "MemAvailable in /proc/meminfo"));
    }
    let number = |p: &str| read(p).and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(current)) = (
        number("/sys/fs/cgroup/memory.max"),
        number("/sys/fs/cgroup/memory.current"),
    ) {
        limits.push((max.saturating_sub(current), "the cgroup's memory.max"));
    } else if let (Some(max), Some(used)) = (
        number("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        number("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ) {
        limits.push((max.saturating_sub(used), "the cgroup's memory limit"));
    }
    let address_limit = read("/proc/self/limits").and_then(|l| {
        let line = l.lines().find(|l| l.starts_with("Max address space"))?;
        line.split_whitespace().nth(3)?.parse::<u64>().ok()
    });
    if let (Some(limit), Some(size)) = (
        address_limit,
        read("/proc/self/status").and_then(|s| field(&s, "VmSize:")),
    ) {
        limits.push((
            limit.saturating_sub(size),
            "the address-space limit (ulimit -v)",
        ));
    }
    limits.into_iter().min_by_key(|(v, _)| *v)
}

/// A training step's memory, measured at small sizes and extrapolated to the run's.
#[derive(Debug, Clone)]
pub struct Estimate {
    /// Predicted peak bytes of the run: the step's and the loader queue's.
    pub bytes: u64,
    /// Of which the training step (all replicas on this machine).
    pub step_bytes: u64,
    /// The calibration: (image size, its step's peaks) at the calibration batch.
    pub measured: Vec<(usize, StepPeak)>,
    /// Images per forward in the calibration steps.
    pub calibration_batch: usize,
}

/// Calibration sizes for a run at `size`: the largest size both students can tile at most half
/// of `size`, then at most half of that, then half again — largest first; `None` below two.
/// Halving keeps each calibration step at a quarter of the next one's pixels, so the largest
/// costs a quarter of one step of the run.
fn calibration_sizes(cfg: &TrainConfig, size: usize) -> Option<Vec<usize>> {
    let archs = [cfg.students.cnn, cfg.students.transformer];
    let valid = |s: usize| archs.iter().all(|&a| cfg.models.validate(a, s, 1).is_ok());
    let mut sizes: Vec<usize> = Vec::with_capacity(3);
    let mut bound = size / 2;
    while sizes.len() < 3 {
        let Some(s) = (1..=bound).rev().find(|&s| valid(s)) else {
            break;
        };
        sizes.push(s);
        bound = s / 2;
    }
    (sizes.len() >= 2).then_some(sizes)
}

/// One calibration step's memory, in bytes above what was live before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPeak {
    /// The peak of the forward and backward passes (activations, gradients).
    pub gradients: u64,
    /// The peak of the optimizer steps.
    pub optimizer: u64,
}

impl StepPeak {
    pub fn max(&self) -> u64 {
        self.gradients.max(self.optimizer)
    }
}

/// The memory of a training step (both students, the run's method, optimizers, accumulation) at
/// image size `s` with `b` images per forward, from a fresh build of everything (parameters
/// included). One step: the optimizer state it creates once its activations are freed is added
/// to both peaks, as every later step holds it. Single-threaded callers only (the peaks are
/// process-wide); needs [`Counting`] as the global allocator (else zeros).
pub fn measure_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    s: usize,
    b: usize,
    k: usize,
    device: &B::Device,
) -> Result<StepPeak> {
    let mut at = cfg.clone();
    at.data.image_size = s;
    let c = cfg.data.channels;
    // Every class present, in vertical bands, so CFCL's prototypes are all live.
    let mut onehot = vec![0f32; b * k * s * s];
    for n in 0..b {
        for p in 0..s * s {
            let class = (p % s) * k / s;
            onehot[(n * k + class) * s * s + p] = 1.0;
        }
    }
    let batch = || {
        let x = Tensor::<B, 4>::zeros([b, c, s, s], device);
        let y = Tensor::from_data(TensorData::new(onehot.clone(), [b, k, s, s]), device);
        (x, y)
    };
    let rates = StepRates {
        lrs: [1e-6, 1e-6],
        beta_r: 1.0,
        beta_f: 1.0,
        beta_u: 1.0,
    };
    let start = LIVE.load(Relaxed);
    PEAK.store(start, Relaxed);
    GRADIENT_PEAK.store(start, Relaxed);
    let mut students = [
        build_student::<B>(&at, Role::Cnn, k, device),
        build_student::<B>(&at, Role::Transformer, k, device),
    ];
    for s in &students {
        materialize_params(s);
    }
    let mut optims = [
        StudentOptimizer::<B>::new(&at.optim.cnn),
        StudentOptimizer::<B>::new(&at.optim.transformer),
    ];
    let before = LIVE.load(Relaxed);
    let input = (0..cfg.optim.accumulate.max(1)).map(|_| batch()).collect();
    pair_step(&at, &mut students, &mut optims, input, rates, None)?;
    let state = LIVE.load(Relaxed).saturating_sub(before);
    let above = |peak: usize| (peak.saturating_sub(start) + state) as u64;
    Ok(StepPeak {
        gradients: above(GRADIENT_PEAK.load(Relaxed)),
        optimizer: above(PEAK.load(Relaxed)),
    })
}

/// Extrapolates the measurements (ascending sizes, at least two) to `p_run` pixels: the
/// forward/backward peak linearly in the pixel count, through the two largest sizes; the
/// optimizer's peak as the largest measured (it does not grow with the image); the larger of the
/// two. SegFormer's efficient attention has a term quadratic in the tokens, small at the
/// calibration sizes: for it the estimate is a lower bound at very large images.
fn extrapolate(measured: &[(usize, StepPeak)], p_run: f64) -> f64 {
    let n = measured.len();
    let point = |(s, m): (usize, StepPeak)| ((s * s) as f64, m.gradients as f64);
    let ((p2, m2), (p3, m3)) = (point(measured[n - 2]), point(measured[n - 1]));
    let slope = ((m3 - m2) / (p3 - p2)).max(0.0);
    let gradients = m3 + (p_run - p3) * slope;
    let optimizer = measured.iter().map(|(_, m)| m.optimizer).max().unwrap_or(0) as f64;
    gradients.max(optimizer)
}

/// The estimate of one training step's memory for `cfg` with `k` classes, or `None` where it
/// does not apply (see the module doc). Calibrates from the smallest size up and stops early when
/// the next size would take more than half of what is available (then the estimate is already
/// far above it).
pub fn estimate<B: AutodiffBackend>(
    cfg: &TrainConfig,
    k: usize,
    device: &B::Device,
) -> Result<Option<Estimate>> {
    if TypeId::of::<B>() != TypeId::of::<CpuTrain>() || live_bytes().is_none() {
        return Ok(None);
    }
    let size = cfg.data.image_size;
    let Some(mut sizes) = calibration_sizes(cfg, size) else {
        return Ok(None);
    };
    sizes.reverse();
    let per_forward = (cfg.data.batch_size / cfg.parallel.peers()).max(1);
    let available = available_bytes().map(|(v, _)| v as f64);
    let mut measured: Vec<(usize, StepPeak)> = Vec::with_capacity(3);
    for s in sizes {
        if measured.len() >= 2 {
            let next = extrapolate(&measured, (s * s) as f64);
            if available.is_some_and(|a| next > a / 2.0) {
                break;
            }
        }
        measured.push((s, measure_step::<B>(cfg, s, per_forward, k, device)?));
    }
    if measured.len() < 2 {
        return Ok(None);
    }
    let replica = extrapolate(&measured, (size * size) as f64);
    let step_bytes = (replica * cfg.parallel.devices.max(1) as f64) as u64;
    // The loader's queue: a few batches of images and labels (i64) ahead of the step.
    let queued = (cfg.data.workers.max(1) + 2)
        * cfg.data.batch_size
        * size
        * size
        * (4 * cfg.data.channels + 8);
    Ok(Some(Estimate {
        bytes: step_bytes + queued as u64,
        step_bytes,
        measured,
        calibration_batch: per_forward,
    }))
}

/// `n` bytes in GiB (or MiB below one GiB), for messages.
pub fn human(n: u64) -> String {
    if n >= 1 << 30 {
        format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", n as f64 / (1u64 << 20) as f64)
    }
}

/// Refuses `estimate` if it exceeds what this process can still take; the error names the keys
/// that shrink a step and the switch that skips the check.
pub fn check(cfg: &TrainConfig, estimate: &Estimate) -> Result<Option<(u64, &'static str)>> {
    let Some((available, source)) = available_bytes() else {
        return Ok(None);
    };
    if estimate.bytes > available {
        let sizes: Vec<String> = estimate
            .measured
            .iter()
            .map(|(s, _)| s.to_string())
            .collect();
        bail!(
            "a training step at data.image_size = {} with data.batch_size = {} needs about {} of \
             memory (measured at image sizes {} and extrapolated), but only {} is available ({}). \
             Lower data.image_size or data.batch_size (optim.accumulate keeps the effective \
             batch), or set skip_memory_check = true to try anyway",
            cfg.data.image_size,
            cfg.data.batch_size,
            human(estimate.bytes),
            sizes.join(", "),
            human(available),
            source
        );
    }
    Ok(Some((available, source)))
}

/// What `train` and `resume` run before anything else heavy: the estimate (unless
/// `skip_memory_check`), refused if too big, else said on stderr when `progress` is on.
pub fn gate<B: AutodiffBackend>(
    cfg: &TrainConfig,
    k: usize,
    device: &B::Device,
    progress: bool,
) -> Result<Option<(Estimate, u64)>> {
    if cfg.skip_memory_check {
        return Ok(None);
    }
    let Some(estimate) = estimate::<B>(cfg, k, device)? else {
        return Ok(None);
    };
    let Some((available, _)) = check(cfg, &estimate)? else {
        return Ok(None);
    };
    if progress {
        eprintln!(
            "memory: a training step needs about {} ({} available)",
            human(estimate.bytes),
            human(available)
        );
    }
    Ok(Some((estimate, available)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peak(gradients: u64, optimizer: u64) -> StepPeak {
        StepPeak {
            gradients,
            optimizer,
        }
    }

    #[test]
    fn extrapolation_is_linear_in_pixels_through_the_two_largest_sizes() {
        // 1000 bytes fixed + 10 per pixel at 64 and 128; the 32 point (optimizer-bound) ignored.
        let measured = [
            (32, peak(5000, 9000)),
            (64, peak(1000 + 10 * 64 * 64, 9000)),
            (128, peak(1000 + 10 * 128 * 128, 9000)),
        ];
        let at = |s: usize| extrapolate(&measured, (s * s) as f64);
        assert_eq!(at(512), (1000 + 10 * 512 * 512) as f64);
        // Below the activations' crossing the optimizer's peak rules.
        assert_eq!(at(16), 9000.0);
        // A falling curve (noise) never extrapolates below the largest measurement.
        let falling = [(64, peak(2000, 0)), (128, peak(1900, 0))];
        assert_eq!(extrapolate(&falling, 1e6), 1900.0);
    }

    #[test]
    fn calibration_sizes_halve_and_stay_tileable() {
        let mut cfg = TrainConfig::default();
        cfg.models.swin_unet.window = 8;
        // U-Net needs multiples of 16, Swin-UNet (patch 4, window 8) 32, 64, 128, 256, ...
        assert_eq!(calibration_sizes(&cfg, 1024), Some(vec![512, 256, 128]));
        assert_eq!(calibration_sizes(&cfg, 256), Some(vec![128, 64, 32]));
        assert_eq!(calibration_sizes(&cfg, 128), Some(vec![64, 32]));
        assert_eq!(calibration_sizes(&cfg, 64), None);
    }

    #[test]
    fn available_memory_is_read_on_linux() {
        let (bytes, source) = available_bytes().expect("/proc/meminfo");
        assert!(bytes > 0, "{source}");
    }
}

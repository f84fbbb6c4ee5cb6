//! `ctrcl bench`: the time of one training step (forward + backward + optimizer) of a student or
//! of the collaborative pair, and of inference, on synthetic batches of the configured sizes.
//! The pair step is the trainer's own [`pair_step`]; a single student runs L_seg only.

use crate::config::{Method, TrainConfig};
use crate::losses::seg::seg_loss;
use crate::role::Role;
use crate::step::{check_precision, pair_step, StepRates};
use crate::student::{build_student, eval_net, StudentOptimizer, TrainStudent};
use anyhow::{Context, Result};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::precision::autocast;
use ctrcl_models::Architecture;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::time::Instant;

/// What one benchmark times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTarget {
    /// One student with L_seg.
    Student(Architecture),
    /// The configured CNN + Transformer pair with the configured method (the trainer's step).
    Pair,
}

impl BenchTarget {
    pub fn name(self) -> String {
        match self {
            BenchTarget::Student(a) => a.name().to_string(),
            BenchTarget::Pair => "pair".into(),
        }
    }
}

/// Sizes and repetitions.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    pub target: BenchTarget,
    pub steps: usize,
    pub warmup: usize,
}

/// One benchmark's result (`--json` prints it as one line).
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model: String,
    pub method: String,
    pub size: usize,
    pub batch: usize,
    pub classes: usize,
    pub backend: String,
    pub optimizer: String,
    /// Dtype of the products (`f32`, `bf16`, `f16`: `precision` of the config).
    pub precision: String,
    /// Median over the timed steps.
    pub ms_per_step: f64,
    pub ms_per_step_min: f64,
    pub images_per_s: f64,
    /// Median forward time of a batch in inference mode, per image.
    pub infer_ms_per_image: f64,
    /// Multiply-adds ×2 of one forward pass per image, counted from the architecture.
    pub forward_gflop_per_image: f64,
    /// Training-step FLOPs (3 × forward: the backward costs about twice the forward) per second.
    pub train_gflop_per_s: f64,
    /// The process's peak resident memory so far (`VmHWM`), MiB.
    pub peak_rss_mb: f64,
    /// The first (untimed) step: on a GPU build, mostly kernel compilation (issue #17).
    pub first_step_ms: f64,
    /// GPU builds: the kernels compiled and loaded from the cache during this benchmark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernels: Option<crate::kernels::KernelCounts>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Nominal single-precision peak of this machine: logical CPUs × clock × FLOP per cycle (32 with
/// AVX2 FMA: two 8-wide FMA units; 64 with AVX-512), from /proc/cpuinfo. A ceiling, not a goal:
/// hyper-threads share units and clocks vary.
pub fn machine_peak_gflops() -> Option<(f64, String)> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
    };
    let mhz: f64 = field("cpu MHz")?.parse().ok()?;
    let flags = field("flags").unwrap_or_default();
    let per_cycle = if flags.contains("avx512f") {
        64.0
    } else if flags.contains("avx2") && flags.contains("fma") {
        32.0
    } else {
        8.0
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    Some((
        cpus as f64 * mhz / 1e3 * per_cycle,
        format!("{cpus} logical CPUs, {model}, {mhz:.0} MHz, {per_cycle} FLOP/cycle"),
    ))
}

/// The host in a few stable words, "2 logical CPUs, AMD EPYC" (no clock: /proc/cpuinfo's MHz
/// moves between readings), for run.json; the architecture where /proc/cpuinfo is unreadable.
pub fn host_description() -> String {
    let Ok(info) = std::fs::read_to_string("/proc/cpuinfo") else {
        return std::env::consts::ARCH.to_string();
    };
    let cpus = info.lines().filter(|l| l.starts_with("processor")).count();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(
            || std::env::consts::ARCH.to_string(),
            |v| v.trim().to_string(),
        );
    format!("{cpus} logical CPUs, {model}")
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Synthetic batch: N(0, 1) images and uniformly random labels as one-hot.
///
/// # Shapes
/// → (`[B, 1, S, S]`, `[B, K, S, S]`).
fn batch<B: Backend>(
    b: usize,
    s: usize,
    k: usize,
    seed: u64,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let image: Vec<f32> = (0..b * s * s)
        .map(|_| {
            // Box–Muller.
            let (u1, u2): (f32, f32) = (rng.random::<f32>().max(1e-7), rng.random());
            (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect();
    let mut onehot = vec![0f32; b * k * s * s];
    for n in 0..b {
        for p in 0..s * s {
            let c = rng.random_range(0..k);
            onehot[(n * k + c) * s * s + p] = 1.0;
        }
    }
    (
        Tensor::from_data(TensorData::new(image, [b, 1, s, s]), device),
        Tensor::from_data(TensorData::new(onehot, [b, k, s, s]), device),
    )
}

/// Times `spec` with the models, sizes (`data.image_size`, `data.batch_size`) and optimizers of
/// `cfg`, for `classes` classes.
pub fn run_bench<B: AutodiffBackend>(
    cfg: &TrainConfig,
    spec: &BenchSpec,
    classes: usize,
    backend: &str,
    device: &B::Device,
) -> Result<BenchResult> {
    check_precision::<B>(cfg, device, backend)?;
    let (s, b, k) = (cfg.data.image_size, cfg.data.batch_size, classes);
    let (x, onehot) = batch::<B>(b, s, k, cfg.seed, device);
    let kernels_at_start = crate::kernels::counts();
    let mut times = Vec::with_capacity(spec.steps);
    let mut first_step_ms = f64::NAN;
    let lr = [cfg.optim.cnn.lr, cfg.optim.transformer.lr];
    let (forward_flop, infer_ms, optimizer, method) = match spec.target {
        BenchTarget::Student(arch) => {
            let role = if arch == cfg.students.transformer && arch != cfg.students.cnn {
                Role::Transformer
            } else {
                Role::Cnn
            };
            let optim_cfg = match role {
                Role::Cnn => &cfg.optim.cnn,
                Role::Transformer => &cfg.optim.transformer,
            };
            let mut one = cfg.clone();
            one.method = Method::Independent;
            match role {
                Role::Cnn => one.students.cnn = arch,
                Role::Transformer => one.students.transformer = arch,
            }
            let mut student: TrainStudent<B> = build_student(&one, role, k, device);
            let mut optim = StudentOptimizer::<B>::new(optim_cfg);
            for i in 0..spec.warmup + spec.steps {
                let t0 = Instant::now();
                let out = {
                    let _autocast = autocast(cfg.precision);
                    student.net.forward(x.clone())
                };
                let loss = seg_loss(
                    out.logits,
                    onehot.clone(),
                    cfg.seg.ce_weight,
                    cfg.seg.dice_weight,
                );
                let mut grads = loss.total.backward();
                let g = GradientsParams::from_module(&mut grads, &student);
                student = optim.step(lr[role as usize], student, g);
                B::sync(device)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if i == 0 {
                    first_step_ms = ms;
                }
                if i >= spec.warmup {
                    times.push(ms);
                }
            }
            let infer = time_inference::<B>(cfg, &student, &x, spec, device)?;
            let flop = 2.0 * cfg.models.forward_macs(arch, s, 1, k);
            (
                flop,
                infer,
                format!("{:?}", optim_cfg.optimizer).to_lowercase(),
                "independent",
            )
        }
        BenchTarget::Pair => {
            let mut students = Role::BOTH.map(|r| build_student::<B>(cfg, r, k, device));
            let mut optims = [
                StudentOptimizer::<B>::new(&cfg.optim.cnn),
                StudentOptimizer::<B>::new(&cfg.optim.transformer),
            ];
            for i in 0..spec.warmup + spec.steps {
                let t0 = Instant::now();
                // Transfer weights at full strength: the ramp-up only scales them.
                pair_step(
                    cfg,
                    &mut students,
                    &mut optims,
                    vec![(x.clone(), onehot.clone())],
                    StepRates {
                        lrs: lr,
                        beta_r: cfg.transfer_weight(),
                        beta_f: cfg.cfcl.weight,
                        beta_u: cfg.semi.weight,
                    },
                    None,
                )?;
                B::sync(device)?;
                let ms = t0.elapsed().as_secs_f64() * 1e3;
                if i == 0 {
                    first_step_ms = ms;
                }
                if i >= spec.warmup {
                    times.push(ms);
                }
            }
            let infer = time_inference::<B>(cfg, &students[0], &x, spec, device)?
                + time_inference::<B>(cfg, &students[1], &x, spec, device)?;
            let flop = 2.0
                * (cfg.models.forward_macs(cfg.students.cnn, s, 1, k)
                    + cfg.models.forward_macs(cfg.students.transformer, s, 1, k));
            let optimizer = format!(
                "{:?}+{:?}",
                cfg.optim.cnn.optimizer, cfg.optim.transformer.optimizer
            )
            .to_lowercase();
            (flop, infer, optimizer, cfg.method.name())
        }
    };
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let ms = median(&mut times);
    Ok(BenchResult {
        model: spec.target.name(),
        method: method.into(),
        size: s,
        batch: b,
        classes: k,
        backend: backend.into(),
        optimizer,
        precision: cfg.precision.name().into(),
        ms_per_step: ms,
        ms_per_step_min: min,
        images_per_s: b as f64 / (ms / 1e3),
        infer_ms_per_image: infer_ms,
        forward_gflop_per_image: forward_flop / 1e9,
        train_gflop_per_s: 3.0 * forward_flop * b as f64 / 1e9 / (ms / 1e3),
        peak_rss_mb: peak_rss_mb(),
        first_step_ms,
        kernels: crate::kernels::since(kernels_at_start),
    })
}

/// Median inference time per image of a batch forward (no autodiff; products in
/// `cfg.precision`), in ms.
fn time_inference<B: AutodiffBackend>(
    cfg: &TrainConfig,
    student: &TrainStudent<B>,
    x: &Tensor<B, 4>,
    spec: &BenchSpec,
    device: &B::Device,
) -> Result<f64> {
    let net = eval_net(student);
    let x = x.clone().inner();
    let b = x.dims()[0] as f64;
    let mut times = Vec::new();
    for i in 0..spec.warmup + spec.steps {
        let t0 = Instant::now();
        let out = {
            let _autocast = autocast(cfg.precision);
            net.forward(x.clone())
        };
        drop(out.logits.argmax(1));
        B::sync(device)?;
        if i >= spec.warmup {
            times.push(t0.elapsed().as_secs_f64() * 1e3 / b);
        }
    }
    Ok(median(&mut times))
}

/// What the loader benchmark measured (`ctrcl bench --model data`); serialised as its JSON line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoaderBench {
    /// Always `"data"`, so the line reads like the model benchmarks' lines.
    pub model: &'static str,
    pub dataset: std::path::PathBuf,
    pub layout: &'static str,
    pub training_samples: usize,
    pub size: usize,
    pub batch: usize,
    pub workers: usize,
    pub augment: ctrcl_data::loader::Augment,
    /// Whether any `[augmentation]` transform is on.
    pub extra_augmentation: bool,
    pub ms_per_batch: f64,
    pub slices_per_s: f64,
    /// The one-time resampling of the training slices to the run's size.
    pub resample_s: f64,
    pub backend: &'static str,
}

/// Loader throughput: `steps` batches after `warmup`, produced by `data.workers` threads with the
/// config's augmentation, consumed as fast as they come (the trainer's side does nothing), so the
/// time is what the loader alone needs per batch.
pub fn bench_loader(cfg: &TrainConfig, warmup: usize, steps: usize) -> Result<LoaderBench> {
    use ctrcl_data::dataset::Dataset;
    use ctrcl_data::loader::{BatchLoader, Plan};
    use ctrcl_data::split::Split;
    let dataset = Dataset::open(&cfg.data.dataset, cfg.data.open_options()).with_context(|| {
        format!(
            "opening {} (prepare one with `ctrcl data prepare`, or --set data.dataset=DIR)",
            cfg.data.dataset.display()
        )
    })?;
    let size = cfg.data.image_size;
    let prep = Instant::now();
    let samples = std::sync::Arc::new(dataset.samples(Split::Train, size));
    let resample_s = prep.elapsed().as_secs_f64();
    let plan = Plan {
        geometric: cfg.data.augment,
        extra: cfg.augmentation,
        foreground: cfg.data.foreground_oversample,
    };
    let total = warmup + steps;
    let mut loader = BatchLoader::start(
        samples.clone(),
        size,
        cfg.data.batch_size,
        cfg.seed,
        plan,
        0,
        total,
        cfg.data.workers,
    );
    let mut started = Instant::now();
    for (i, _batch) in loader.by_ref().enumerate() {
        if i + 1 == warmup {
            started = Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let timed = if warmup == 0 { total } else { steps };
    Ok(LoaderBench {
        model: "data",
        dataset: cfg.data.dataset.clone(),
        layout: dataset.layout,
        training_samples: samples.len(),
        size,
        batch: cfg.data.batch_size,
        workers: cfg.data.workers,
        augment: cfg.data.augment,
        extra_augmentation: cfg.augmentation != ctrcl_data::augment::Augmentations::default(),
        ms_per_batch: seconds * 1e3 / timed as f64,
        slices_per_s: (timed * cfg.data.batch_size) as f64 / seconds,
        resample_s,
        backend: "cpu threads",
    })
}

//! `ctrcl bench`: step and inference times of the students and of the CTRCL pair on synthetic
//! batches, with achieved GFLOP/s next to the machine's nominal peak. Each model of `--model all`
//! runs in its own process so that its peak memory is its own.

use crate::backend;
use anyhow::{bail, Context, Result};
use ctrcl_models::Architecture;
use ctrcl_train::bench::{BenchSpec, BenchTarget};
use ctrcl_train::TrainConfig;
use std::path::PathBuf;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelArg {
    Unet,
    Resunet,
    SwinUnet,
    Segformer,
    /// The CNN + Transformer pair of the config with its method (CTRCL by default).
    Pair,
    /// unet, resunet, swin-unet, segformer and pair, each in its own process.
    All,
    /// The batch loader on the config's dataset (`data.dataset`, `data.workers`, the
    /// augmentation): slices/s and ms per batch, to set against a training step's time.
    Data,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adamw,
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = ModelArg::All)]
    model: ModelArg,
    /// Square input side.
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 9)]
    classes: usize,
    /// Optimizer of every benchmarked student (default: the config's, SGD for both).
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Dtype of the students' products in the timed steps and inference: f32, or bf16 mixed
    /// precision (default: the config's `precision`, f32). Meant for GPUs; on the CPU backend
    /// bf16 products are slower than f32.
    #[arg(long, value_parser = ["f32", "bf16"])]
    precision: Option<String>,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Model sizes and method from a training config (default: built-in defaults — U-Net
    /// [16..256], Swin-UNet embed 96, depths 2, heads [3,6,12,24], window 7).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a configuration key, e.g. --set models.swin_unet.embed_dim=32 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// One JSON object per model on stdout instead of a table.
    #[arg(long)]
    json: bool,
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

/// The one architecture a benchmark builds, if it builds one: the config is then validated for
/// that model only (the other slot takes it too), so `--model unet --size 128` is not refused
/// for a Swin-UNet it never builds. The loader benchmark builds none.
fn only_model(model: ModelArg) -> Option<Architecture> {
    match model {
        ModelArg::Unet | ModelArg::Data => Some(Architecture::Unet),
        ModelArg::Resunet => Some(Architecture::Resunet),
        ModelArg::SwinUnet => Some(Architecture::SwinUnet),
        ModelArg::Segformer => Some(Architecture::Segformer),
        ModelArg::Pair | ModelArg::All => None,
    }
}

fn config(args: &Args) -> Result<TrainConfig> {
    let mut sets = args.set.clone();
    if let Some(arch) = only_model(args.model) {
        sets.push(format!("students.cnn={}", arch.name()));
        sets.push(format!("students.transformer={}", arch.name()));
    }
    sets.push(format!("data.image_size={}", args.size));
    sets.push(format!("data.batch_size={}", args.batch));
    if let Some(o) = args.optimizer {
        let name = match o {
            OptimizerArg::Sgd => "sgd",
            OptimizerArg::Adamw => "adamw",
        };
        sets.push(format!("optim.cnn.optimizer={name}"));
        sets.push(format!("optim.transformer.optimizer={name}"));
    }
    if let Some(p) = &args.precision {
        sets.push(format!("precision={p}"));
    }
    match &args.config {
        Some(path) => TrainConfig::load(path, &sets),
        None => TrainConfig::from_toml_in("", "the built-in bench defaults", &sets),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let peak = machine_peak_gflops();
    if args.model == ModelArg::All {
        // Each model's process validates the config for itself.
        return run_each(&args, peak);
    }
    let cfg = config(&args)?;
    if args.model == ModelArg::Data {
        return bench_loader(&cfg, &args);
    }
    let target = match args.model {
        ModelArg::Unet => BenchTarget::Student(Architecture::Unet),
        ModelArg::Resunet => BenchTarget::Student(Architecture::Resunet),
        ModelArg::Segformer => BenchTarget::Student(Architecture::Segformer),
        ModelArg::SwinUnet => BenchTarget::Student(Architecture::SwinUnet),
        _ => BenchTarget::Pair,
    };
    let spec = BenchSpec {
        target,
        steps: args.steps,
        warmup: args.warmup,
    };
    let result = backend::bench(&cfg, &spec, args.classes)?;
    let mut v = serde_json::to_value(&result)?;
    if let Some((gflops, machine)) = &peak {
        v["machine_peak_gflop_s"] = serde_json::json!(gflops);
        v["machine"] = serde_json::json!(machine);
    }
    if args.json {
        println!("{v}");
    } else {
        print_header(peak.as_ref());
        print_row(&v);
    }
    Ok(())
}

/// Loader throughput: `steps` batches after `warmup`, produced by `data.workers` threads with the
/// config's augmentation, consumed as fast as they come (the trainer's side does nothing), so the
/// time is what the loader alone needs per batch.
fn bench_loader(cfg: &TrainConfig, args: &Args) -> Result<()> {
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
    let prep = std::time::Instant::now();
    let samples = std::sync::Arc::new(dataset.samples(Split::Train, size));
    let resample_s = prep.elapsed().as_secs_f64();
    let plan = Plan {
        geometric: cfg.data.augment,
        extra: cfg.augmentation,
        foreground: cfg.data.foreground_oversample,
    };
    let total = args.warmup + args.steps;
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
    let mut started = std::time::Instant::now();
    for (i, _batch) in loader.by_ref().enumerate() {
        if i + 1 == args.warmup {
            started = std::time::Instant::now();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let timed = if args.warmup == 0 { total } else { args.steps };
    let ms_per_batch = seconds * 1e3 / timed as f64;
    let slices_per_s = (timed * cfg.data.batch_size) as f64 / seconds;
    let extra_on = cfg.augmentation != ctrcl_data::augment::Augmentations::default();
    let v = serde_json::json!({
        "model": "data",
        "dataset": cfg.data.dataset,
        "layout": dataset.layout,
        "training_samples": samples.len(),
        "size": size,
        "batch": cfg.data.batch_size,
        "workers": cfg.data.workers,
        "augment": cfg.data.augment,
        "extra_augmentation": extra_on,
        "ms_per_batch": ms_per_batch,
        "slices_per_s": slices_per_s,
        "resample_s": resample_s,
        "backend": "cpu threads",
    });
    if args.json {
        println!("{v}");
    } else {
        println!(
            "loader on {} ({} training slices at {size}×{size}, resampled once in {resample_s:.2} s):",
            cfg.data.dataset.display(),
            samples.len()
        );
        println!(
            "  {slices_per_s:.0} slices/s = {ms_per_batch:.2} ms per batch of {} with {} worker(s), \
             augment {:?}{}",
            cfg.data.batch_size,
            cfg.data.workers,
            cfg.data.augment,
            if extra_on { " + [augmentation]" } else { "" }
        );
        println!(
            "  training never waits on the loader while a step takes longer than {ms_per_batch:.2} ms \
             (compare `ctrcl bench --model pair` with the same --size/--batch)"
        );
    }
    Ok(())
}

fn print_header(peak: Option<&(f64, String)>) {
    println!("backend: {}", backend::NAME);
    if let Some((gflops, machine)) = peak {
        println!("machine: {machine}; nominal f32 peak {gflops:.0} GFLOP/s");
    }
    println!(
        "{:<10} {:>5} {:>5} {:>12} {:>10} {:>9} {:>13} {:>10} {:>9}",
        "model",
        "size",
        "batch",
        "ms/step",
        "min ms",
        "img/s",
        "infer ms/img",
        "GFLOP/s",
        "peak MiB"
    );
}

fn print_row(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<10} {:>5} {:>5} {:>12.1} {:>10.1} {:>9.2} {:>13.2} {:>10.2} {:>9.0}",
        v["model"].as_str().unwrap_or("?"),
        v["size"],
        v["batch"],
        f("ms_per_step"),
        f("ms_per_step_min"),
        f("images_per_s"),
        f("infer_ms_per_image"),
        f("train_gflop_per_s"),
        f("peak_rss_mb")
    );
}

/// `--model all`: each model in a child process (same arguments, `--json`), then one table.
fn run_each(args: &Args, peak: Option<(f64, String)>) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find the ctrcl executable")?;
    let mut forwarded: Vec<String> = std::env::args().skip(1).collect();
    // Drop any --model/--json the user gave; each child gets its own.
    let mut i = 0;
    while i < forwarded.len() {
        match forwarded[i].as_str() {
            "--model" => {
                forwarded.drain(i..(i + 2).min(forwarded.len()));
            }
            s if s.starts_with("--model=") || s == "--json" => {
                forwarded.remove(i);
            }
            _ => i += 1,
        }
    }
    if !args.json {
        print_header(peak.as_ref());
    }
    for model in ["unet", "resunet", "swin-unet", "segformer", "pair"] {
        let out = std::process::Command::new(&exe)
            .args(&forwarded)
            .args(["--model", model, "--json"])
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running the {model} benchmark"))?;
        if !out.status.success() {
            bail!("the {model} benchmark failed");
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let line = line.trim();
        if args.json {
            println!("{line}");
        } else {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{model} benchmark printed no result"))?;
            print_row(&v);
        }
    }
    Ok(())
}

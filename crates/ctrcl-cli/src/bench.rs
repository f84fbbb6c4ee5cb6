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
    let peak = ctrcl_train::bench::machine_peak_gflops();
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

/// `--model data`: the loader benchmark of `ctrcl_train::bench`, printed.
fn bench_loader(cfg: &TrainConfig, args: &Args) -> Result<()> {
    let r = ctrcl_train::bench::bench_loader(cfg, args.warmup, args.steps)?;
    if args.json {
        println!("{}", serde_json::to_value(&r)?);
    } else {
        let size = r.size;
        println!(
            "loader on {} ({} training slices at {size}×{size}, resampled once in {:.2} s):",
            r.dataset.display(),
            r.training_samples,
            r.resample_s
        );
        println!(
            "  {:.0} slices/s = {:.2} ms per batch of {} with {} worker(s), augment {:?}{}",
            r.slices_per_s,
            r.ms_per_batch,
            r.batch,
            r.workers,
            r.augment,
            if r.extra_augmentation {
                " + [augmentation]"
            } else {
                ""
            }
        );
        println!(
            "  training never waits on the loader while a step takes longer than {:.2} ms \
             (compare `ctrcl bench --model pair` with the same --size/--batch)",
            r.ms_per_batch
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
        "{:<10} {:>5} {:>5} {:>12} {:>10} {:>11} {:>9} {:>13} {:>10} {:>9}",
        "model",
        "size",
        "batch",
        "ms/step",
        "min ms",
        "1st step ms",
        "img/s",
        "infer ms/img",
        "GFLOP/s",
        "peak MiB"
    );
}

fn print_row(v: &serde_json::Value) {
    let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "{:<10} {:>5} {:>5} {:>12.1} {:>10.1} {:>11.0} {:>9.2} {:>13.2} {:>10.2} {:>9.0}",
        v["model"].as_str().unwrap_or("?"),
        v["size"],
        v["batch"],
        f("ms_per_step"),
        f("ms_per_step_min"),
        f("first_step_ms"),
        f("images_per_s"),
        f("infer_ms_per_image"),
        f("train_gflop_per_s"),
        f("peak_rss_mb")
    );
    // GPU builds: what the first step's time went on.
    if let Some(k) = v.get("kernels") {
        println!(
            "{:<10} kernels compiled {}, loaded from the cache {}",
            "", k["compiled"], k["from_cache"]
        );
    }
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

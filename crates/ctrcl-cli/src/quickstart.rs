//! `ctrcl quickstart`: the main job of the README on a fresh machine — fetch and prepare the real
//! ICBM152 brain MRI, train the U-Net + Swin-UNet pair with each method, test both students on
//! the held-out slab, print the comparison table and write `summary.json`.

use crate::{backend, prepare, table};
use anyhow::{Context, Result};
use ctrcl_data::split::Split;
use ctrcl_train::config::Method;
use ctrcl_train::role::Role;
use ctrcl_train::tester::student_json;
use ctrcl_train::TrainConfig;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The quickstart's settings, shipped in the repository and compiled into the binary.
pub const QUICKSTART_CONFIG: &str = include_str!("../../../configs/quickstart.toml");

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (default: runs/quickstart-YYYYMMDD-HHMMSS). Holds the prepared data, one
    /// run directory per method, and summary.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Methods to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "independent,ctrcl")]
    methods: Vec<String>,
    /// Override a configuration key of configs/quickstart.toml (repeatable), e.g.
    /// --set schedule.iterations=600.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Cache directory for downloads (as for `data fetch --dest`).
    #[arg(long)]
    cache: Option<PathBuf>,
}

fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    PathBuf::from(format!(
        "runs/quickstart-{year:04}{month:02}{day:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

fn parse_method(name: &str) -> Result<Method> {
    TrainConfig::from_toml(&format!("method = \"{}\"", name.trim()), &[])
        .map(|c| c.method)
        .with_context(|| {
            format!("unknown method '{name}' (independent, dml, kdcl, cross-teaching, ctrcl)")
        })
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let out = args.out.unwrap_or_else(default_out);
    let methods: Vec<Method> = args
        .methods
        .iter()
        .map(|m| parse_method(m))
        .collect::<Result<_>>()?;
    let base = TrainConfig::from_toml_in(QUICKSTART_CONFIG, "configs/quickstart.toml", &args.set)?;
    for m in &methods {
        ctrcl_train::run_dir::prepare_run_dir(&out.join(m.name()))?;
    }
    let data_dir = out.join("data").join("icbm152");
    if !data_dir.join("dataset.json").exists() {
        eprintln!("preparing ICBM152 in {}", data_dir.display());
        prepare("icbm152", &data_dir, args.cache.as_deref())?;
    }
    eprintln!("backend: {}", backend::NAME);
    eprintln!("{}", settings_line(&base));
    let mut reports = Vec::new();
    let mut summary = serde_json::Map::new();
    for method in methods {
        let mut cfg = base.clone();
        cfg.method = method;
        cfg.data.dataset = data_dir.clone();
        let run_dir = out.join(method.name());
        backend::train(&cfg, &run_dir, true)?;
        let report = backend::test(&run_dir, &Role::BOTH, Split::Test, None)?;
        let mut entry = serde_json::Map::new();
        for s in &report.students {
            let mut v = student_json(s);
            v["run"] = json!(run_dir);
            entry.insert(s.role.name().to_string(), v);
        }
        summary.insert(method.name().to_string(), serde_json::Value::Object(entry));
        reports.push(report);
    }
    let summary_path = out.join("summary.json");
    ctrcl_train::checkpoint::write_text_atomic(
        &summary_path,
        &serde_json::to_string_pretty(&summary)?,
    )?;
    print_result(
        &base,
        &reports,
        &summary_path,
        started.elapsed().as_secs_f64(),
    );
    Ok(())
}

fn settings_line(cfg: &TrainConfig) -> String {
    let u = &cfg.models.unet;
    let s = &cfg.models.swin_unet;
    format!(
        "quickstart settings: {}×{} inputs, {} iterations of batch {}, U-Net channels {:?}, Swin-UNet embed {} depths {:?} heads {:?} window {}",
        cfg.data.image_size,
        cfg.data.image_size,
        cfg.schedule.iterations,
        cfg.data.batch_size,
        u.channels,
        s.embed_dim,
        s.depths,
        s.heads,
        s.window
    )
}

fn print_result(
    cfg: &TrainConfig,
    reports: &[ctrcl_train::tester::TestReport],
    summary: &Path,
    seconds: f64,
) {
    println!();
    println!("ICBM152 test slab (axial z 90–105, native 197×233 resolution), Dice per class:");
    print!("{}", table::report_table(reports));
    println!();
    println!("{}", settings_line(cfg));
    println!(
        "backend: {}; wall time {:.1} min",
        backend::NAME,
        seconds / 60.0
    );
    for r in reports {
        println!("run ({}): {}", r.method, r.run.display());
    }
    println!("summary: {}", summary.display());
}

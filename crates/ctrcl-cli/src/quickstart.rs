//! `ctrcl quickstart`: the README's main job (`ctrcl_train::quickstart`) on this build's backend,
//! its table and the meaning of the CTRCL-vs-independent difference printed.

use crate::{backend, table};
use anyhow::Result;
use ctrcl_train::quickstart::{
    difference_text, parse_method, run_quickstart, settings_line, QuickstartOptions, QuickstartSize,
};

/// A GPU build trains the full protocol; the CPU build the quickstart's 2-core size.
const SIZE: QuickstartSize = if cfg!(any(feature = "cuda", feature = "vulkan")) {
    QuickstartSize::FullProtocol
} else {
    QuickstartSize::Cpu
};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output directory (default: runs/quickstart-YYYYMMDD-HHMMSS). Holds the prepared data, one
    /// run directory per method, and summary.json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Methods to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "independent,ctrcl")]
    methods: Vec<String>,
    /// Override a configuration key of configs/quickstart.toml (a GPU build: of the full protocol,
    /// configs/icbm152_ctrcl.toml) (repeatable), e.g. --set schedule.iterations=600.
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

pub fn run(args: Args) -> Result<()> {
    let options = QuickstartOptions {
        out: args.out.unwrap_or_else(default_out),
        methods: args
            .methods
            .iter()
            .map(|m| parse_method(m))
            .collect::<Result<_>>()?,
        size: SIZE,
        overrides: args.set,
        cache: args.cache,
    };
    let device = Default::default();
    let engine = backend::engine(&device);
    let done = run_quickstart(&options, &engine)?;
    println!();
    println!("ICBM152 test slab (axial z 90–105, native 197×233 resolution), Dice per class:");
    print!("{}", table::report_table(&done.reports));
    if let Some(text) = difference_text(&done.reports, SIZE) {
        println!();
        println!("{text}");
    }
    println!();
    println!("{}", settings_line(&done.config));
    println!(
        "backend: {}; wall time {:.1} min",
        backend::NAME,
        done.seconds / 60.0
    );
    for r in &done.reports {
        println!("run ({}): {}", r.method, r.run.display());
    }
    println!("summary: {}", done.summary.display());
    Ok(())
}

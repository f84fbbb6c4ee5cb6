//! `ctrcl experiment`: parses the arguments, runs `ctrcl_train::experiment` on this build's
//! backend and prints the results table.

use crate::backend;
use anyhow::Result;
use ctrcl_train::experiment::{run_experiment, ExperimentOptions};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Experiment file (TOML; configs/experiments/*.toml document the keys).
    #[arg(long)]
    config: PathBuf,
    /// Folder of the run directories (default: runs/experiments/NAME). Rerunning continues it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Results Markdown (default: docs/results/NAME.md).
    #[arg(long)]
    results: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let options = ExperimentOptions {
        config: args.config,
        out: args.out,
        results: args.results,
    };
    let device = Default::default();
    let engine = backend::engine(&device);
    let outcome = run_experiment(&options, &engine)?;
    print!("{}", outcome.markdown);
    println!("written: {}", outcome.results.display());
    Ok(())
}

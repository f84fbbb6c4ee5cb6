//! The experiment runner behind `ctrcl experiment`: a matrix of training runs (methods and
//! ablations × student pairs × seeds) from one file, resumable cell by cell, summarised as a
//! Markdown results table with mean ± std over seeds (the paper's tables, on the data we have).
//!
//! Generic over the backend like the trainer: the binary passes its device and backend name.
//! A cell is done when its log holds the end event ([`run_dir::finished`]) and its test metrics
//! were computed from the checkpoints training left; anything less is resumed or restarted.

use crate::config::TrainConfig;
pub use crate::engine::Engine;
use crate::role::Role;
use crate::run_dir;
use anyhow::{bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use ctrcl_data::split::Split;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod results;
use results::{
    class_names_of, human_duration, paired_plot, plot_path, results_markdown, write_results, Timing,
};

/// Where an experiment is read from and written to.
#[derive(Debug, Clone)]
pub struct ExperimentOptions {
    /// Experiment file (TOML; configs/experiments/*.toml document the keys).
    pub config: PathBuf,
    /// Folder of the run directories (default: runs/experiments/NAME). Rerunning continues it.
    pub out: Option<PathBuf>,
    /// Results Markdown (default: docs/results/NAME.md).
    pub results: Option<PathBuf>,
}

/// A finished (or partially finished) experiment.
pub struct ExperimentOutcome {
    /// The results table as written.
    pub markdown: String,
    pub results: PathBuf,
}

/// The experiment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub name: String,
    /// Training config of every cell, relative to the experiment file.
    pub config: PathBuf,
    pub methods: Vec<String>,
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// `[cnn, transformer]` pairs; default: the config's pair.
    #[serde(default)]
    pub pairs: Vec<[String; 2]>,
    /// Overrides applied to every cell (`key=value`, as `--set`).
    #[serde(default)]
    pub set: Vec<String>,
    /// Extra CTRCL cells: name → overrides (e.g. `no-rlcl = ["rlcl.enabled=false"]`).
    #[serde(default)]
    pub ablations: BTreeMap<String, Vec<String>>,
    /// Further arms of any method: name → overrides on top of `set` (the method is the config's
    /// unless they set one), e.g. `fg33 = ["method=independent",
    /// "data.foreground_oversample=0.33"]`; listed with the methods and paired against
    /// `independent` like them.
    #[serde(default)]
    pub variants: BTreeMap<String, Vec<String>>,
    /// Prepare this source (`icbm152`) into OUT/data/SOURCE and use it as the dataset.
    #[serde(default)]
    pub prepare: Option<String>,
}

fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}

/// One run of the matrix.
#[derive(Debug, Clone)]
struct Cell {
    pair: [String; 2],
    /// A method name, or an ablation name (a ctrcl variant).
    variant: String,
    is_ablation: bool,
    seed: u64,
    overrides: Vec<String>,
    dir: PathBuf,
}

fn cells(exp: &ExperimentFile, base: &TrainConfig, out: &Path) -> Vec<Cell> {
    let pairs = if exp.pairs.is_empty() {
        vec![[
            base.students.cnn.name().to_string(),
            base.students.transformer.name().to_string(),
        ]]
    } else {
        exp.pairs.clone()
    };
    let mut arms: Vec<(String, bool, Vec<String>)> = exp
        .methods
        .iter()
        .map(|m| (m.clone(), false, vec![format!("method={m}")]))
        .collect();
    for (name, sets) in &exp.variants {
        arms.push((name.clone(), false, sets.clone()));
    }
    for (name, sets) in &exp.ablations {
        let mut o = vec!["method=ctrcl".to_string()];
        o.extend(sets.iter().cloned());
        arms.push((name.clone(), true, o));
    }
    let mut out_cells = Vec::new();
    // Seed by seed, every arm within a seed: a matrix stopped part-way (hours of CPU runs, or a
    // short GPU slot) holds complete seeds, each pairing every arm with `independent`.
    for pair in &pairs {
        for &seed in &exp.seeds {
            for (variant, is_ablation, sets) in &arms {
                let mut overrides = exp.set.clone();
                overrides.extend(sets.iter().cloned());
                overrides.push(format!("students.cnn={}", pair[0]));
                overrides.push(format!("students.transformer={}", pair[1]));
                overrides.push(format!("seed={seed}"));
                out_cells.push(Cell {
                    pair: pair.clone(),
                    variant: variant.clone(),
                    is_ablation: *is_ablation,
                    seed,
                    overrides,
                    dir: out
                        .join(format!("{}+{}", pair[0], pair[1]))
                        .join(variant)
                        .join(format!("seed{seed}")),
                });
            }
        }
    }
    out_cells
}

/// A name given to two arms (a method, a variant, an ablation): their runs would share a folder.
fn repeated_arm(exp: &ExperimentFile) -> Option<&str> {
    let mut seen = std::collections::BTreeSet::new();
    let names = exp
        .methods
        .iter()
        .chain(exp.variants.keys())
        .chain(exp.ablations.keys());
    names.map(String::as_str).find(|n| !seen.insert(*n))
}

/// A cell interrupted before its first checkpoint cannot be resumed; its partial log is moved to
/// `<cell>.interrupted` (replacing an older one) so that the cell can start again without
/// deleting anything a user might still want to read.
fn set_aside_unresumable(dir: &Path) -> Result<()> {
    let empty = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true);
    if empty {
        return Ok(());
    }
    let mut aside = dir.as_os_str().to_owned();
    aside.push(".interrupted");
    let aside = PathBuf::from(aside);
    if aside.exists() {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("removing the older {}", aside.display()))?;
    }
    std::fs::rename(dir, &aside)
        .with_context(|| format!("moving {} to {}", dir.display(), aside.display()))?;
    eprintln!(
        "{} stopped before its first checkpoint; its partial log is kept in {} and the cell starts again",
        dir.display(),
        aside.display()
    );
    Ok(())
}

/// Runs (or continues) one cell, or reuses it when finished; returns its test metrics.
fn run_cell<B: AutodiffBackend>(
    engine: &Engine<B>,
    cell: &Cell,
    base_text: &str,
    base_dir: &Path,
    dataset: Option<&Path>,
) -> Result<Value> {
    let metrics_path = run_dir::metrics(&cell.dir, "test-test.json");
    let read = || -> Result<Value> {
        serde_json::from_str(&std::fs::read_to_string(&metrics_path)?)
            .with_context(|| format!("{} is not valid JSON", metrics_path.display()))
    };
    if let Ok(v) = read() {
        // Metrics of checkpoints that training has since replaced are not this cell's result.
        if Role::BOTH.iter().all(|r| !v[r.name()].is_null())
            && crate::tester::metrics_are_current(&cell.dir, &v)
            && run_dir::finished(&cell.dir)
        {
            eprintln!("done already: {}", cell.dir.display());
            return Ok(v);
        }
    }
    if run_dir::state(&run_dir::last(&cell.dir)).exists() {
        if !run_dir::finished(&cell.dir) {
            eprintln!("resuming {}", cell.dir.display());
            engine.resume(&cell.dir)?;
        }
    } else {
        set_aside_unresumable(&cell.dir)?;
        let mut cfg = TrainConfig::from_toml(base_text, &cell.overrides)
            .with_context(|| format!("cell {}", cell.dir.display()))?;
        if cfg.data.dataset.is_relative() && dataset.is_none() {
            cfg.data.dataset = base_dir.join(&cfg.data.dataset);
        }
        if let Some(d) = dataset {
            cfg.data.dataset = d.to_path_buf();
        }
        if let Some(split) = cfg.data.split.as_mut().filter(|s| s.is_relative()) {
            *split = base_dir.join(&*split);
        }
        eprintln!("training {}", cell.dir.display());
        engine.train(&cfg, &cell.dir)?;
    }
    engine.test(&cell.dir, &Role::BOTH, Split::Test, None)?;
    read()
}

/// The progress line before a cell: its place in the matrix and, once a run has finished (in
/// this invocation or an earlier one), the time the rest would take at the mean of the finished
/// runs' training times from their logs (an upper bound where later cells are already finished
/// and only reused).
fn progress_line(i: usize, total: usize, cell: &Cell, run_seconds: &[f64]) -> String {
    let mut line = format!("[{}/{}] {} seed {}", i + 1, total, cell.variant, cell.seed);
    if !run_seconds.is_empty() {
        let per_run = run_seconds.iter().sum::<f64>() / run_seconds.len() as f64;
        let left = per_run * (total - i) as f64;
        line.push_str(&format!(
            " — at most about {} left ({} a run)",
            human_duration(left),
            human_duration(per_run)
        ));
    }
    line
}

/// The training time of a finished run, from its log (resumed segments summed); `None` when the
/// log is missing, unreadable or holds no end event.
fn run_seconds(dir: &Path) -> Option<f64> {
    crate::report::TrainingLog::read(&run_dir::log(dir))
        .ok()?
        .seconds
}

/// Where the results Markdown goes: `--results`, else docs/results/NAME.md.
fn results_path(exp: &ExperimentFile, args: &ExperimentOptions) -> PathBuf {
    args.results
        .clone()
        .unwrap_or_else(|| PathBuf::from("docs/results").join(format!("{}.md", exp.name)))
}

/// Runs the experiment of `args.config` (continuing the finished cells of an earlier
/// invocation), rewriting the results Markdown (and its forest plot) after every cell; progress
/// goes to stderr.
pub fn run_experiment<B: AutodiffBackend>(
    args: &ExperimentOptions,
    engine: &Engine<B>,
) -> Result<ExperimentOutcome> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let exp: ExperimentFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", args.config.display(), e.message().trim()))?;
    if exp.methods.is_empty() && exp.ablations.is_empty() && exp.variants.is_empty() {
        bail!("{}: give at least one method", args.config.display());
    }
    if let Some(name) = repeated_arm(&exp) {
        bail!(
            "{}: \"{name}\" names two arms (methods, variants and ablations share one folder per name)",
            args.config.display()
        );
    }
    if exp.seeds.is_empty() {
        bail!("{}: give at least one seed", args.config.display());
    }
    let here = args.config.parent().unwrap_or(Path::new("."));
    let config_path = here.join(&exp.config);
    let base_text = std::fs::read_to_string(&config_path).with_context(|| {
        format!(
            "cannot read the experiment's config {}",
            config_path.display()
        )
    })?;
    let base = TrainConfig::from_toml(&base_text, &exp.set)
        .with_context(|| format!("in {}", config_path.display()))?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/experiments").join(&exp.name));
    let results = results_path(&exp, args);
    let dataset = match &exp.prepare {
        Some(source) => {
            let dir = out.join("data").join(source);
            if !dir.join("dataset.json").exists() {
                eprintln!("preparing {source} in {}", dir.display());
                ctrcl_data::prepare::fetch_and_prepare(source, &dir, None, &mut |m| {
                    eprintln!("{m}")
                })
                .with_context(|| format!("preparing {source}"))?;
            }
            Some(dir)
        }
        None => None,
    };
    let all = cells(&exp, &base, &out);
    // Every cell's config must parse before hours of training start.
    for cell in &all {
        TrainConfig::from_toml(&base_text, &cell.overrides)
            .with_context(|| format!("cell {} of {}", cell.dir.display(), args.config.display()))?;
    }
    eprintln!("{} runs in {}", all.len(), out.display());
    let started = std::time::Instant::now();
    let commit = env!("CTRCL_GIT_COMMIT");
    let mut metrics = Vec::with_capacity(all.len());
    let mut markdown = String::new();
    let mut runs_s: Vec<Option<f64>> = Vec::with_capacity(all.len());
    for (i, cell) in all.iter().enumerate() {
        let known: Vec<f64> = runs_s.iter().flatten().copied().collect();
        eprintln!("{}", progress_line(i, all.len(), cell, &known));
        metrics.push(run_cell(
            engine,
            cell,
            &base_text,
            here,
            dataset.as_deref(),
        )?);
        runs_s.push(run_seconds(&cell.dir));
        // The table after every cell: hours of runs are readable (and committable, marked
        // partial) before the matrix ends; the last one is the result.
        markdown = results_markdown(
            &exp,
            args,
            engine.name,
            &all,
            &metrics,
            &class_names_of(&metrics[0]),
            &base,
            commit,
            &Timing {
                invocation_s: started.elapsed().as_secs_f64(),
                runs_s: &runs_s,
            },
        );
        write_results(&results, &markdown)?;
        if let Some(svg) = paired_plot(&exp.name, &all[..metrics.len()], &metrics) {
            ctrcl_data::error::write_atomic(&plot_path(&results), svg.as_bytes())?;
        }
    }
    Ok(ExperimentOutcome { markdown, results })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_stopped_before_its_first_checkpoint_is_set_aside_not_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let cell = tmp.path().join("seed2");
        std::fs::create_dir(&cell).unwrap();
        std::fs::write(run_dir::log(&cell), "first try\n").unwrap();
        set_aside_unresumable(&cell).unwrap();
        assert!(!cell.exists());
        let aside = tmp.path().join("seed2.interrupted");
        assert_eq!(
            std::fs::read_to_string(run_dir::log(&aside)).unwrap(),
            "first try\n"
        );
        // A second interruption replaces the older partial log.
        std::fs::create_dir(&cell).unwrap();
        std::fs::write(run_dir::log(&cell), "second try\n").unwrap();
        set_aside_unresumable(&cell).unwrap();
        assert_eq!(
            std::fs::read_to_string(run_dir::log(&aside)).unwrap(),
            "second try\n"
        );
        // Missing or empty cells are left alone.
        std::fs::create_dir(&cell).unwrap();
        set_aside_unresumable(&cell).unwrap();
        assert!(cell.exists());
    }

    /// The progress line says nothing of time before a run finished, then extrapolates the mean
    /// of the finished runs over the cells left (this one included): two runs of 20 and 40 min,
    /// 18 cells left → 9.0 h.
    #[test]
    fn progress_lines_extrapolate_the_trained_runs() {
        let exp: ExperimentFile =
            toml::from_str("name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"dml\"]\n").unwrap();
        let all = cells(&exp, &TrainConfig::default(), Path::new("out"));
        assert_eq!(progress_line(0, 20, &all[0], &[]), "[1/20] dml seed 0");
        assert_eq!(
            progress_line(2, 20, &all[1], &[1200.0, 2400.0]),
            "[3/20] dml seed 1 — at most about 9.0 h left (30 min a run)"
        );
        assert_eq!(
            progress_line(18, 20, &all[2], &[600.0]),
            "[19/20] dml seed 2 — at most about 20 min left (10 min a run)"
        );
    }

    #[test]
    fn shipped_experiments_parse_and_every_cell_validates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/experiments");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let exp: ExperimentFile =
                toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let text = std::fs::read_to_string(dir.join(&exp.config)).unwrap();
            let base = TrainConfig::from_toml(&text, &exp.set).unwrap();
            let all = cells(&exp, &base, Path::new("out"));
            assert_eq!(repeated_arm(&exp), None, "{}", path.display());
            let variants = exp.methods.len() + exp.ablations.len() + exp.variants.len();
            assert_eq!(
                all.len(),
                variants * exp.seeds.len() * exp.pairs.len().max(1)
            );
            for cell in &all {
                TrainConfig::from_toml(&text, &cell.overrides)
                    .unwrap_or_else(|e| panic!("{}: {e:#}", cell.dir.display()));
            }
            n += 1;
        }
        assert!(n >= 1);
    }
}

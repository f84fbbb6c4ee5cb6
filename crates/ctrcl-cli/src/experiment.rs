//! `ctrcl experiment`: a matrix of training runs (methods and ablations × student pairs × seeds)
//! from one file, resumable cell by cell, summarised as a Markdown results table with mean ± std
//! over seeds (the paper's tables, on the data we have).

use crate::{backend, prepare};
use anyhow::{bail, Context, Result};
use ctrcl_data::split::Split;
use ctrcl_train::role::Role;
use ctrcl_train::run_dir;
use ctrcl_train::TrainConfig;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
    let mut variants: Vec<(String, bool, Vec<String>)> = exp
        .methods
        .iter()
        .map(|m| (m.clone(), false, vec![format!("method={m}")]))
        .collect();
    for (name, sets) in &exp.ablations {
        let mut o = vec!["method=ctrcl".to_string()];
        o.extend(sets.iter().cloned());
        variants.push((name.clone(), true, o));
    }
    let mut out_cells = Vec::new();
    for pair in &pairs {
        for (variant, is_ablation, sets) in &variants {
            for &seed in &exp.seeds {
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

/// Mean and sample standard deviation (n − 1); std is NaN for one value.
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

fn cell_text(values: &[f64], digits: usize) -> String {
    let (m, s) = mean_std(values);
    if s.is_nan() {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ± {s:.digits$}")
    }
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

/// Whether a cell's training ran to its end (`log.jsonl` holds the end event).
fn finished(dir: &Path) -> bool {
    std::fs::read_to_string(run_dir::log(dir))
        .map(|l| l.contains("\"event\":\"end\""))
        .unwrap_or(false)
}

/// Runs (or continues) one cell; returns its test metrics.
fn run_cell(
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
            && ctrcl_train::tester::metrics_are_current(&cell.dir, &v)
            && finished(&cell.dir)
        {
            eprintln!("done already: {}", cell.dir.display());
            return Ok(v);
        }
    }
    if run_dir::state(&run_dir::last(&cell.dir)).exists() {
        if !finished(&cell.dir) {
            eprintln!("resuming {}", cell.dir.display());
            backend::resume(&cell.dir, true)?;
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
        eprintln!("training {}", cell.dir.display());
        backend::train(&cfg, &cell.dir, true)?;
    }
    backend::test(&cell.dir, &Role::BOTH, Split::Test, None)?;
    read()
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    let exp: ExperimentFile = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", args.config.display(), e.message().trim()))?;
    if exp.methods.is_empty() && exp.ablations.is_empty() {
        bail!("{}: give at least one method", args.config.display());
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
    let results = args
        .results
        .clone()
        .unwrap_or_else(|| PathBuf::from("docs/results").join(format!("{}.md", exp.name)));
    let dataset = match &exp.prepare {
        Some(source) => {
            let dir = out.join("data").join(source);
            if !dir.join("dataset.json").exists() {
                eprintln!("preparing {source} in {}", dir.display());
                prepare(source, &dir, None)?;
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
    let commit = git_commit();
    let mut metrics = Vec::with_capacity(all.len());
    for (i, cell) in all.iter().enumerate() {
        eprintln!(
            "[{}/{}] {} seed {}",
            i + 1,
            all.len(),
            cell.variant,
            cell.seed
        );
        metrics.push(run_cell(cell, &base_text, here, dataset.as_deref())?);
        if metrics.len() < all.len() {
            // A partial table after every cell: hours of runs are readable (and committable,
            // marked partial) before the matrix ends.
            let md = results_markdown(
                &exp,
                &args,
                &all,
                &metrics,
                &class_names_of(&metrics[0]),
                &base,
                &commit,
                started.elapsed().as_secs_f64(),
            );
            write_results(&results, &md)?;
        }
    }
    let class_names = class_names_of(&metrics[0]);
    let md = results_markdown(
        &exp,
        &args,
        &all,
        &metrics,
        &class_names,
        &base,
        &commit,
        started.elapsed().as_secs_f64(),
    );
    write_results(&results, &md)?;
    print!("{md}");
    println!("written: {}", results.display());
    Ok(())
}

/// The heading under which people write their reading of a results table; `experiment` keeps
/// that section (up to the next `## ` heading) when it rewrites the file.
const NOTES_HEADING: &str = "## Notes";

/// `md` with the `## Notes` section of `existing` (if any) placed before `## Runs`.
fn with_notes(md: &str, existing: &str) -> String {
    let Some(start) = existing.find(&format!("\n{NOTES_HEADING}\n")) else {
        return md.to_string();
    };
    let notes = &existing[start + 1..];
    let end = notes[NOTES_HEADING.len()..]
        .find("\n## ")
        .map_or(notes.len(), |i| NOTES_HEADING.len() + i + 1);
    let notes = notes[..end].trim_end();
    match md.find("\n## Runs\n") {
        Some(at) => format!("{}{notes}\n{}", &md[..at + 1], &md[at..]),
        None => format!("{md}\n{notes}\n"),
    }
}

/// Writes the results Markdown atomically, keeping the hand-written notes already in it.
fn write_results(path: &Path, md: &str) -> Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    ctrcl_data::error::write_atomic(path, with_notes(md, &existing).as_bytes())?;
    Ok(())
}

/// Class names (without background) from a test metrics file's `classes` map.
fn class_names_of(metrics: &Value) -> Vec<String> {
    {
        let c = metrics["classes"].as_object().cloned().unwrap_or_default();
        let mut v: Vec<(usize, String)> = c
            .iter()
            .filter_map(|(k, n)| Some((k.parse().ok()?, n.as_str()?.to_string())))
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }
}

#[allow(clippy::too_many_arguments)]
fn results_markdown(
    exp: &ExperimentFile,
    args: &Args,
    cells: &[Cell],
    metrics: &[Value],
    class_names: &[String],
    base: &TrainConfig,
    commit: &str,
    seconds: f64,
) -> String {
    let machine = crate::bench::machine_peak_gflops()
        .map(|(_, m)| m)
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mut md = format!("# {} (experiment)\n\n", exp.name);
    let finished = &cells[..metrics.len()];
    if metrics.len() < cells.len() {
        let _ = writeln!(
            md,
            "**Partial: {} of {} runs finished** (the experiment is still running or was \
             interrupted; rerun the command to continue). Rows with fewer seeds than the \
             experiment's say how many they hold.\n",
            metrics.len(),
            cells.len()
        );
    }
    let _ = writeln!(
        md,
        "```\nctrcl experiment --config {}\n```\nCommit {} (at the start of this invocation); {}; backend {}; {} runs in {:.0} min (finished cells are \
         reused, so this is the time of the last invocation). Config `{}` with {}; seeds {:?}; {} iterations of batch \
         {} at {}×{}. Test split, TransUNet convention (Dice, Jaccard, HD95 in mm), mean ± sample std over seeds.\n",
        args.config.display(),
        commit,
        machine,
        backend::NAME,
        cells.len(),
        seconds / 60.0,
        exp.config.display(),
        if exp.set.is_empty() { "no overrides".to_string() } else { format!("`{}`", exp.set.join("`, `")) },
        exp.seeds,
        base.schedule.iterations,
        base.data.batch_size,
        base.data.image_size,
        base.data.image_size
    );
    let table = |md: &mut String, ablations: bool| {
        let _ = write!(md, "| pair | method | student |");
        for c in class_names {
            let _ = write!(md, " {c} |");
        }
        md.push_str(" mean Dice | mean Jaccard | mean HD95 |\n|---|---|---|");
        md.push_str(&"---|".repeat(class_names.len() + 3));
        md.push('\n');
        let mut groups: Vec<(&[String; 2], &str)> = Vec::new();
        for c in finished {
            let wanted = !ablations && !c.is_ablation
                || ablations
                    && (c.is_ablation || c.variant == "ctrcl" || c.variant == "independent");
            if wanted && !groups.iter().any(|(p, v)| *p == &c.pair && *v == c.variant) {
                groups.push((&c.pair, &c.variant));
            }
        }
        for (pair, variant) in groups {
            let runs: Vec<&Value> = finished
                .iter()
                .zip(metrics)
                .filter(|(c, _)| &c.pair == pair && c.variant == variant)
                .map(|(_, m)| m)
                .collect();
            for role in Role::BOTH {
                let collect = |path: &[&str]| -> Vec<f64> {
                    runs.iter()
                        .filter_map(|m| {
                            path.iter()
                                .try_fold(&m[role.name()], |n, k| n.get(*k))
                                .and_then(Value::as_f64)
                        })
                        .collect()
                };
                let arch = &pair[role as usize];
                let seeds = if runs.len() < exp.seeds.len() {
                    format!(" ({} of {} seeds)", runs.len(), exp.seeds.len())
                } else {
                    String::new()
                };
                let _ = write!(
                    md,
                    "| {}+{} | {variant}{seeds} | {} ({arch}) |",
                    pair[0],
                    pair[1],
                    role.name()
                );
                for c in 1..=class_names.len() {
                    let key = c.to_string();
                    let _ = write!(
                        md,
                        " {} |",
                        cell_text(&collect(&["transunet", "per_class", &key, "dice"]), 4)
                    );
                }
                let _ = writeln!(
                    md,
                    " **{}** | {} | {} |",
                    cell_text(&collect(&["transunet", "mean", "dice"]), 4),
                    cell_text(&collect(&["transunet", "mean", "jaccard"]), 4),
                    cell_text(&collect(&["transunet", "mean", "hd95"]), 2)
                );
            }
        }
    };
    md.push_str("## Methods\n\n");
    table(&mut md, false);
    if !exp.ablations.is_empty() {
        md.push_str("\n## CTRCL ablations\n\n");
        for (name, sets) in &exp.ablations {
            let _ = writeln!(md, "- `{name}`: `{}`", sets.join("`, `"));
        }
        md.push('\n');
        table(&mut md, true);
    }
    md.push_str("\n## Runs\n\n");
    for c in cells {
        let _ = writeln!(md, "- `{}`", c.dir.display());
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With 3 of 4 runs finished the table says so, averages what exists, and marks the row
    /// that holds one seed of two; the finished matrix carries no such marks.
    /// A rewritten table keeps the people's `## Notes` (and only that section), before the runs.
    #[test]
    fn rewriting_a_results_file_keeps_its_notes() {
        let old = "# t\n\nold table\n\n## Notes\n\nCTRCL wins on liver.\n\n## Runs\n\n- `a`\n";
        let new = "# t\n\nnew table\n\n## Runs\n\n- `a`\n- `b`\n";
        let md = with_notes(new, old);
        assert_eq!(
            md,
            "# t\n\nnew table\n\n## Notes\n\nCTRCL wins on liver.\n\n## Runs\n\n- `a`\n- `b`\n"
        );
        assert_eq!(with_notes(new, &md), md, "rewriting again changes nothing");
        assert_eq!(with_notes(new, "# t\nno notes\n"), new);
    }

    #[test]
    fn partial_tables_are_marked_and_average_the_finished_runs() {
        let exp: ExperimentFile = toml::from_str(
            "name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"independent\", \"ctrcl\"]\nseeds = [0, 1]\n",
        )
        .unwrap();
        let base = TrainConfig::default();
        let all = cells(&exp, &base, Path::new("out"));
        assert_eq!(all.len(), 4);
        let args = Args {
            config: "t.toml".into(),
            out: None,
            results: None,
        };
        let run = |dice: f64| {
            serde_json::json!({
                "classes": {"1": "a"},
                "cnn": {"transunet": {"mean": {"dice": dice, "jaccard": 0.5, "hd95": 1.0},
                                      "per_class": {"1": {"dice": dice}}}},
                "transformer": {"transunet": {"mean": {"dice": dice, "jaccard": 0.5, "hd95": 1.0},
                                              "per_class": {"1": {"dice": dice}}}},
            })
        };
        let metrics = [run(0.6), run(0.8), run(0.7)];
        let names = class_names_of(&metrics[0]);
        let md = results_markdown(&exp, &args, &all, &metrics, &names, &base, "c", 1.0);
        assert!(md.contains("**Partial: 3 of 4 runs finished**"), "{md}");
        let row = |variant: &str| {
            md.lines()
                .find(|l| l.starts_with(&format!("| unet+swin-unet | {variant} | cnn")))
                .unwrap_or_else(|| panic!("{md}"))
                .to_string()
        };
        assert!(row("independent").contains("**0.7000 ± 0.1414**"), "{md}");
        assert!(row("ctrcl (1 of 2 seeds)").contains("**0.7000**"), "{md}");
        let full = [run(0.6), run(0.8), run(0.7), run(0.9)];
        let md = results_markdown(&exp, &args, &all, &full, &names, &base, "c", 1.0);
        assert!(!md.contains("Partial") && !md.contains("seeds)"), "{md}");
    }

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
            let variants = exp.methods.len() + exp.ablations.len();
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

    #[test]
    fn mean_and_sample_std() {
        // numpy: np.mean([0.70, 0.74, 0.72]) = 0.72, np.std(..., ddof=1) = 0.02
        let (m, s) = mean_std(&[0.70, 0.74, 0.72]);
        assert!(
            (m - 0.72).abs() < 1e-12 && (s - 0.02).abs() < 1e-12,
            "{m} {s}"
        );
        assert!(mean_std(&[0.5]).1.is_nan());
        assert_eq!(cell_text(&[0.70, 0.74, 0.72], 3), "0.720 ± 0.020");
        assert_eq!(cell_text(&[0.5], 2), "0.50");
    }
}

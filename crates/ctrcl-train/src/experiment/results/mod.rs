//! The experiment's results Markdown: one table of mean ± sample std over seeds per method (and
//! one for the CTRCL ablations), each method's paired difference to `independent` with its 95%
//! confidence interval, marked partial while cells are missing, rewritten after every cell
//! while the people's `## Notes` section of the file is kept.

use super::{Cell, ExperimentFile, ExperimentOptions};
use crate::config::TrainConfig;
use crate::report::forest::{excludes_zero, forest_plot, ForestRow};
use crate::role::Role;
use anyhow::Result;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

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

/// t_{0.975, df}, the two-sided 95% quantile of Student's t (scipy.stats.t.ppf(0.975, df)) for
/// df = 1 … 30; beyond 30 the value at 30 (2.042), slightly wider than the true one (→ 1.960).
fn t_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    T[df.clamp(1, 30) - 1]
}

/// Mean of paired differences and the half-width of its 95% confidence interval
/// (t·s/√n, n − 1 degrees of freedom); the half-width is NaN below two pairs.
pub fn paired_ci(diffs: &[f64]) -> (f64, f64) {
    let (mean, std) = mean_std(diffs);
    let n = diffs.len();
    if n < 2 {
        return (mean, f64::NAN);
    }
    (mean, t_975(n - 1) * std / (n as f64).sqrt())
}

/// What a paired interval says: beyond noise when it excludes zero.
fn verdict(mean: f64, half: f64) -> &'static str {
    if half.is_nan() {
        "one seed: no interval"
    } else if !excludes_zero(mean, half) {
        "within noise"
    } else if mean > 0.0 {
        "**better, beyond noise**"
    } else {
        "**worse, beyond noise**"
    }
}

fn cell_text(values: &[f64], digits: usize) -> String {
    let (m, s) = mean_std(values);
    if s.is_nan() {
        format!("{m:.digits$}")
    } else {
        format!("{m:.digits$} ± {s:.digits$}")
    }
}

/// The heading under which people write their reading of a results table; `experiment` keeps
/// that section (up to the next `## ` heading) when it rewrites the file.
const NOTES_HEADING: &str = "## Notes";

/// `md` with the `## Notes` section of `existing` (if any) placed before `## Runs`.
pub(super) fn with_notes(md: &str, existing: &str) -> String {
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
pub(super) fn write_results(path: &Path, md: &str) -> Result<()> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    ctrcl_data::error::write_atomic(path, with_notes(md, &existing).as_bytes())?;
    Ok(())
}

/// Class names (without background) from a test metrics file's `classes` map.
pub(super) fn class_names_of(metrics: &Value) -> Vec<String> {
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

/// How many finished runs carry each value of `key` in their test metrics (from run.json; a
/// resumed run keeps what started it), "X (n runs), Y (m runs)" in first-seen order, `missing`
/// naming runs older than the key: a table filled over several sittings may mix commits
/// (`trained_at`) and machines (`trained_on`).
fn tally(metrics: &[Value], key: &str, missing: &str) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for m in metrics {
        let value = m[key].as_str().filter(|c| !c.is_empty()).unwrap_or(missing);
        match counts.iter_mut().find(|(c, _)| *c == value) {
            Some((_, n)) => *n += 1,
            None => counts.push((value, 1)),
        }
    }
    let parts: Vec<String> = counts
        .iter()
        .map(|(c, n)| format!("{c} ({n} run{})", if *n == 1 { "" } else { "s" }))
        .collect();
    parts.join(", ")
}

/// How long the matrix took: this invocation's wall clock, and each finished run's training
/// time from its log (aligned with the metrics; `None` where a log has no end event).
pub(super) struct Timing<'a> {
    pub invocation_s: f64,
    pub runs_s: &'a [Option<f64>],
}

/// Seconds as people read them: minutes (rounded up) below an hour and a half, hours above.
pub(super) fn human_duration(s: f64) -> String {
    if s >= 5400.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.0} min", (s / 60.0).ceil())
    }
}

/// "the N finished runs trained for T in all by their logs (M a run)", naming runs whose log
/// has no end event; a re-invocation that only reuses finished runs keeps the true cost.
fn training_time(runs_s: &[Option<f64>]) -> String {
    let known: Vec<f64> = runs_s.iter().flatten().copied().collect();
    if known.is_empty() {
        return "no finished run's log holds its training time".to_string();
    }
    let total: f64 = known.iter().sum();
    let mut text = format!(
        "the {} finished run{} trained for {} in all by their logs ({} a run",
        known.len(),
        if known.len() == 1 { "" } else { "s" },
        human_duration(total),
        human_duration(total / known.len() as f64)
    );
    let missing = runs_s.len() - known.len();
    if missing > 0 {
        let _ = write!(text, "; {missing} more without a time in their log");
    }
    text.push(')');
    text
}

#[allow(clippy::too_many_arguments)]
pub(super) fn results_markdown(
    exp: &ExperimentFile,
    args: &ExperimentOptions,
    backend: &str,
    cells: &[Cell],
    metrics: &[Value],
    class_names: &[String],
    base: &TrainConfig,
    commit: &str,
    timing: &Timing,
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
        "```\nctrcl experiment --config {}\n```\nRuns trained at {}, on {}. This invocation: commit {}, {}, backend {}, {}. {} runs: {}. Config `{}` with {}; seeds {:?}; {} iterations of batch \
         {} at {}×{}. Test split, TransUNet convention (Dice, Jaccard, HD95 in mm), mean ± sample std over seeds.\n",
        args.config.display(),
        tally(metrics, "trained_at", "a commit not recorded"),
        tally(metrics, "trained_on", "a machine not recorded"),
        commit,
        machine,
        backend,
        human_duration(timing.invocation_s),
        cells.len(),
        training_time(timing.runs_s),
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
    for (name, sets) in &exp.variants {
        let _ = writeln!(md, "- `{name}`: `{}`", sets.join("`, `"));
    }
    if !exp.variants.is_empty() {
        md.push('\n');
    }
    table(&mut md, false);
    if !exp.ablations.is_empty() {
        md.push_str("\n## CTRCL ablations\n\n");
        for (name, sets) in &exp.ablations {
            let _ = writeln!(md, "- `{name}`: `{}`", sets.join("`, `"));
        }
        md.push('\n');
        table(&mut md, true);
    }
    let plot = plot_path(&super::results_path(exp, args));
    let plot_name = plot.file_name().map(|f| f.to_string_lossy().into_owned());
    paired_section(&mut md, finished, metrics, plot_name.as_deref());
    paired_classes_section(&mut md, finished, metrics, class_names);
    md.push_str("\n## Runs\n\n");
    for c in cells {
        let _ = writeln!(md, "- `{}`", c.dir.display());
    }
    md
}

/// Mean test Dice of `role` in one run's metrics.
fn mean_dice(metrics: &Value, role: Role) -> Option<f64> {
    metrics[role.name()]["transunet"]["mean"]["dice"].as_f64()
}

/// Dice of class `class` (1-based) for `role` in one run's metrics.
fn class_dice(metrics: &Value, role: Role, class: usize) -> Option<f64> {
    metrics[role.name()]["transunet"]["per_class"][class.to_string()]["dice"].as_f64()
}

/// The variants (all but `independent`) of the finished runs, in order of appearance.
fn compared_groups<'a>(runs: &[(&'a Cell, &Value)]) -> Vec<(&'a [String; 2], &'a str)> {
    let mut groups: Vec<(&[String; 2], &str)> = Vec::new();
    for (c, _) in runs {
        if c.variant != "independent"
            && !groups.iter().any(|(p, v)| *p == &c.pair && *v == c.variant)
        {
            groups.push((&c.pair, &c.variant));
        }
    }
    groups
}

/// `score(variant's run) − score(independent's run)` over the seeds where both exist.
fn paired_diffs(
    runs: &[(&Cell, &Value)],
    pair: &[String; 2],
    variant: &str,
    score: impl Fn(&Value) -> Option<f64>,
) -> Vec<f64> {
    let baseline = |seed: u64| {
        runs.iter()
            .find(|(c, _)| &c.pair == pair && c.variant == "independent" && c.seed == seed)
            .map(|(_, m)| *m)
    };
    runs.iter()
        .filter(|(c, _)| &c.pair == pair && c.variant == variant)
        .filter_map(|(c, m)| Some(score(m)? - score(baseline(c.seed)?)?))
        .collect()
}

/// The per-class view of the paired comparison: which structures a method gains or loses on
/// (a mean Dice can hide a small class learned or lost). One cell per class: mean Δ ± the 95%
/// half-width, bold when the interval excludes zero. Absent without `independent`.
fn paired_classes_section(
    md: &mut String,
    finished: &[Cell],
    metrics: &[Value],
    class_names: &[String],
) {
    let runs: Vec<(&Cell, &Value)> = finished.iter().zip(metrics).collect();
    let mut rows = String::new();
    for (pair, variant) in compared_groups(&runs) {
        for role in Role::BOTH {
            let mut cells = Vec::new();
            let mut seeds = 0;
            for class in 1..=class_names.len() {
                let diffs = paired_diffs(&runs, pair, variant, |m| class_dice(m, role, class));
                seeds = seeds.max(diffs.len());
                cells.push(if diffs.is_empty() {
                    "—".to_string()
                } else {
                    let (mean, half) = paired_ci(&diffs);
                    if half.is_nan() {
                        format!("{mean:+.3}")
                    } else if excludes_zero(mean, half) {
                        format!("**{mean:+.3} ± {half:.3}**")
                    } else {
                        format!("{mean:+.3} ± {half:.3}")
                    }
                });
            }
            if seeds == 0 {
                continue;
            }
            let _ = writeln!(
                rows,
                "| {}+{} | {variant} | {} ({}) | {seeds} | {} |",
                pair[0],
                pair[1],
                role.name(),
                pair[role as usize],
                cells.join(" | ")
            );
        }
    }
    if rows.is_empty() {
        return;
    }
    md.push_str(
        "\n### Per class\n\nTest Dice of each class minus `independent`'s with the same seed, \
         per student: mean ± the half-width of its 95% confidence interval; **bold** when the \
         interval excludes zero.\n\n| pair | method | student | seeds |",
    );
    for c in class_names {
        let _ = write!(md, " {c} |");
    }
    md.push_str("\n|---|---|---|---|");
    md.push_str(&"---|".repeat(class_names.len()));
    md.push('\n');
    md.push_str(&rows);
}

/// One arm's paired comparison with `independent` for one student: the per-seed differences of
/// test mean Dice and their mean with the 95% half-width.
pub(super) struct PairedRow<'a> {
    pub pair: &'a [String; 2],
    pub variant: &'a str,
    pub role: Role,
    pub diffs: Vec<f64>,
    pub mean: f64,
    pub half: f64,
}

/// Every variant's mean Dice minus `independent`'s on the same pair and seed, per student, in
/// the order the arms first finished (students CNN first). Empty without `independent`.
pub(super) fn paired_rows<'a>(finished: &'a [Cell], metrics: &[Value]) -> Vec<PairedRow<'a>> {
    let runs: Vec<(&Cell, &Value)> = finished.iter().zip(metrics).collect();
    let mut rows = Vec::new();
    for (pair, variant) in compared_groups(&runs) {
        for role in Role::BOTH {
            let diffs = paired_diffs(&runs, pair, variant, |m| mean_dice(m, role));
            if diffs.is_empty() {
                continue;
            }
            let (mean, half) = paired_ci(&diffs);
            rows.push(PairedRow {
                pair,
                variant,
                role,
                diffs,
                mean,
                half,
            });
        }
    }
    rows
}

/// The paired comparison as a forest plot (SVG): one row per arm and student, its seeds as dots
/// and its mean on the 95% interval, against zero. `None` when there is nothing to compare.
pub(super) fn paired_plot(name: &str, finished: &[Cell], metrics: &[Value]) -> Option<String> {
    let rows = paired_rows(finished, metrics);
    if rows.is_empty() {
        return None;
    }
    let several_pairs = rows.iter().any(|r| r.pair != rows[0].pair);
    let forest: Vec<ForestRow> = rows
        .iter()
        .map(|r| ForestRow {
            label: format!(
                "{}{} · {} ({})",
                if several_pairs {
                    format!("{}+{} ", r.pair[0], r.pair[1])
                } else {
                    String::new()
                },
                r.variant,
                r.role.name(),
                r.pair[r.role as usize]
            ),
            colour: r.role as usize,
            diffs: r.diffs.clone(),
            mean: r.mean,
            half: r.half,
        })
        .collect();
    Some(forest_plot(
        &format!("{name}: paired against independent"),
        "test mean Dice − independent's, same seed (dots: seeds; square and bar: mean, 95% CI)",
        &forest,
    ))
}

/// The plot's file beside the results Markdown: `NAME.md` → `NAME-paired.svg`.
pub(super) fn plot_path(results: &Path) -> std::path::PathBuf {
    let stem = results
        .file_stem()
        .map_or_else(|| "results".into(), |s| s.to_string_lossy().into_owned());
    results.with_file_name(format!("{stem}-paired.svg"))
}

/// Every variant's mean Dice minus `independent`'s on the same pair and seed (same initial
/// weights and batches), per student: the per-seed differences, their mean with its 95%
/// confidence interval, and whether that interval excludes zero, with the forest plot `plot`
/// (a file name beside the Markdown) when given. Absent without `independent`.
fn paired_section(md: &mut String, finished: &[Cell], metrics: &[Value], plot: Option<&str>) {
    let mut rows = String::new();
    for r in paired_rows(finished, metrics) {
        let per_seed: Vec<String> = r.diffs.iter().map(|d| format!("{d:+.4}")).collect();
        let mut interval = if r.half.is_nan() {
            format!("{:+.4}", r.mean)
        } else {
            format!("{:+.4} ± {:.4}", r.mean, r.half)
        };
        // Bold means beyond noise, as in the per-class table and the plot's filled squares.
        if excludes_zero(r.mean, r.half) {
            interval = format!("**{interval}**");
        }
        let _ = writeln!(
            rows,
            "| {}+{} | {} | {} ({}) | {} | {} | {interval} | {} |",
            r.pair[0],
            r.pair[1],
            r.variant,
            r.role.name(),
            r.pair[r.role as usize],
            r.diffs.len(),
            per_seed.join(", "),
            verdict(r.mean, r.half)
        );
    }
    if rows.is_empty() {
        return;
    }
    md.push_str(
        "\n## Paired against independent\n\nTest mean Dice of each method minus `independent`'s \
         with the same seed (the same initial weights, and the same batches unless the arm changes \
         the sampling), per student: mean ± the \
         half-width of its 95% confidence interval (Student's t, n − 1 degrees of freedom). \
         Beyond noise (and bold) when the interval excludes zero.\n\n\
         | pair | method | student | seeds | per seed | mean Δ ± 95% CI | verdict |\n\
         |---|---|---|---|---|---|---|\n",
    );
    md.push_str(&rows);
    if let Some(file) = plot {
        let _ = writeln!(
            md,
            "\n![paired differences, per seed and with 95% intervals]({file})"
        );
    }
}

#[cfg(test)]
mod tests;

//! The experiment's results Markdown: one table of mean ± sample std over seeds per method (and
//! one for the CTRCL ablations), marked partial while cells are missing, rewritten after every
//! cell while the people's `## Notes` section of the file is kept.

use super::{Cell, ExperimentFile, ExperimentOptions};
use crate::config::TrainConfig;
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
        backend,
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
    use super::super::cells;
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
        let args = ExperimentOptions {
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
        let md = results_markdown(&exp, &args, "b", &all, &metrics, &names, &base, "c", 1.0);
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
        let md = results_markdown(&exp, &args, "b", &all, &full, &names, &base, "c", 1.0);
        assert!(!md.contains("Partial") && !md.contains("seeds)"), "{md}");
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

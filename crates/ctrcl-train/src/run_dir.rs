//! A run directory's layout: every file and folder name a run holds, in one place, so that the
//! trainer, the tester, `predict`, `report`, `export` and the experiment runner agree on it and a
//! reader finds it here rather than in string literals across crates.
//!
//! ```text
//! RUN/config.toml                 the resolved configuration (every key)
//! RUN/run.json                    RunInfo: backend, method, dataset, classes, fallbacks, …
//! RUN/log.jsonl                   one JSON line per logged step, validation and event
//! RUN/events.out.tfevents.ctrcl   the same numbers for TensorBoard
//! RUN/last/                       both students, CPM heads, optimizers; state.json = {"step"}
//! RUN/best-cnn/, best-transformer/  the best validated network of each; state.json with scores
//! RUN/metrics/test-SPLIT[-UPSAMPLE].json   `ctrcl test`'s results
//! RUN/.lock                       held by the training process
//! ```
//! (`splits_final.json` and `split/{train,val,test}.txt` record a split by cases.)
//!
//! Besides the names: the readers every command shares (`run.json` + `config.toml`, which
//! checkpoint a student is tested from, a checkpoint's step and scores), the creation of a new
//! run directory (never over an earlier run), and the lock held while a process trains it.
//! The training log itself is `crate::run_log`; checkpoint folders are written by
//! `crate::checkpoint`.

use crate::checkpoint::write_text_atomic;
use crate::config::TrainConfig;
use crate::inference::DiceScores;
use crate::role::Role;
use anyhow::{bail, Context, Result};
use ctrcl_data::dataset::Dataset;
use ctrcl_data::split::Split;
use std::path::{Path, PathBuf};

/// The resolved configuration.
pub const CONFIG: &str = "config.toml";
/// `RunInfo`.
pub const INFO: &str = "run.json";
/// The training log.
pub const LOG: &str = "log.jsonl";
/// TensorBoard's event file ("tfevents" is what TensorBoard looks for).
pub const EVENTS: &str = "events.out.tfevents.ctrcl";
/// The checkpoint `--resume` continues from.
pub const LAST: &str = "last";
/// A checkpoint folder's step (and, for `best-ROLE/`, validation scores).
pub const STATE: &str = "state.json";
/// The folder of test results.
pub const METRICS: &str = "metrics";
/// The lock file of the training process.
pub const LOCK: &str = ".lock";

/// The folder name of `role`'s best validated network.
pub fn best_name(role: Role) -> String {
    format!("best-{}", role.name())
}

pub fn config(run: &Path) -> PathBuf {
    run.join(CONFIG)
}

pub fn info(run: &Path) -> PathBuf {
    run.join(INFO)
}

pub fn log(run: &Path) -> PathBuf {
    run.join(LOG)
}

pub fn events(run: &Path) -> PathBuf {
    run.join(EVENTS)
}

pub fn last(run: &Path) -> PathBuf {
    run.join(LAST)
}

pub fn best(run: &Path, role: Role) -> PathBuf {
    run.join(best_name(role))
}

/// `state.json` of a checkpoint folder.
pub fn state(checkpoint: &Path) -> PathBuf {
    checkpoint.join(STATE)
}

/// `metrics/NAME` (e.g. `test-test.json`).
pub fn metrics(run: &Path, name: &str) -> PathBuf {
    run.join(METRICS).join(name)
}

pub fn lock(run: &Path) -> PathBuf {
    run.join(LOCK)
}

/// Whether a run's training ran to its end: the last event of its log (`start`, `resume`,
/// `end`, …) is `end`. A line that is not JSON (the tail of a killed process) counts as no event,
/// so a run stopped mid-line is not finished; a run resumed after its end is not finished until
/// it ends again.
pub fn finished(run: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(log(run)) else {
        return false;
    };
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_owned))
        .is_some_and(|e| e == "end")
}

/// Metadata written as `run.json`: what `test` and `predict` need besides the config.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub ctrcl_version: String,
    /// The git commit the binary was built from (`build.rs`; "unknown" outside a checkout, empty
    /// in runs older than this field).
    #[serde(default)]
    pub commit: String,
    pub backend: String,
    /// The host that trained it (`bench::host_description`; empty in runs older than this
    /// field): with `backend`, which machine produced a table's runs.
    #[serde(default)]
    pub machine: String,
    pub method: String,
    pub dataset: PathBuf,
    pub class_names: Vec<String>,
    pub image_size: usize,
    pub cnn: String,
    pub transformer: String,
    /// Each channel's normalisation under `data.normalize = "channel-names"`, with the training
    /// data's CT statistics, so `predict` needs no access to the training data (empty otherwise,
    /// and in runs older than this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_normalization: Vec<ctrcl_data::normalize::ChannelNorm>,
    /// The `CTRCL_BURN_*` variables that sent a family of CPU ops back to Burn's own
    /// implementation for this run (`ctrcl_models::switches`); empty: all fast paths on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub burn_fallbacks: Vec<String>,
}

/// Reads `config.toml` and `run.json` of a run directory.
pub fn open_run(run: &Path) -> Result<(TrainConfig, RunInfo)> {
    let cfg = TrainConfig::load(&config(run), &[])
        .with_context(|| format!("{} is not a ctrcl run directory", run.display()))?;
    let path = info(run);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let info: RunInfo =
        serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
    Ok((cfg, info))
}

/// The checkpoint a student is tested from: `best-ROLE/` if validation chose one, else `last/`.
pub fn checkpoint_dir(run: &Path, role: Role) -> Result<PathBuf> {
    let best = best(run, role);
    let last = last(run);
    [best, last]
        .into_iter()
        .find(|d| d.join(format!("{}.mpk", role.name())).exists())
        .with_context(|| {
            format!(
                "{} has no checkpoint of the {} student (best-{1}/ or last/)",
                run.display(),
                role.name()
            )
        })
}

/// The training step a checkpoint directory was written at (`state.json`'s `step`).
pub fn checkpoint_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(state(dir)).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// The validation scores recorded with a `best-ROLE/` checkpoint, if any.
pub(crate) fn best_scores(run: &Path, role: Role) -> Option<DiceScores> {
    let text = std::fs::read_to_string(state(&best(run, role))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(DiceScores {
        mean: v["val_mean_dice"].as_f64()?,
        per_class: v["val_per_class_dice"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_f64())
            .collect(),
    })
}

/// A run directory must be new or empty, so that an earlier run is never overwritten. Returns
/// a guard that empties it again (removing it if it was created here) unless
/// [`NewRunDir::keep`] is called: a run that fails while setting up leaves no half-created
/// directory to block the next `--out`.
pub fn prepare_run_dir(out: &Path) -> Result<NewRunDir> {
    let existed = out.exists();
    if existed {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "{} already exists and is not empty; choose a new --out so that earlier results are kept",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    Ok(NewRunDir {
        dir: Some((out.to_path_buf(), existed)),
    })
}

/// A run directory being set up; see [`prepare_run_dir`].
pub struct NewRunDir {
    /// The directory and whether it existed (empty) before; `None` once kept.
    dir: Option<(PathBuf, bool)>,
}

impl NewRunDir {
    /// The run has started: its directory stays, whatever happens next.
    pub fn keep(mut self) {
        self.dir = None;
    }
}

impl Drop for NewRunDir {
    fn drop(&mut self) {
        let Some((dir, existed)) = self.dir.take() else {
            return;
        };
        // Everything in it was written by this setup (it was empty or absent before).
        if existed {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// A split by cases (Kvasir-SEG's generated 880/120-style split, nnU-Net, ACDC, Synapse) is
/// written as `split/{train,val,test}.txt`, one case id per line — the list-file format the
/// layouts read, so copying the files next to the data reproduces the split exactly.
pub(crate) fn write_split_lists(dataset: &Dataset, out: &Path) -> Result<()> {
    if !matches!(dataset.split, ctrcl_data::dataset::DatasetSplit::Cases(_)) {
        return Ok(());
    }
    if let Some(folds) = &dataset.folds {
        // nnU-Net's own file of all folds, so the run can be reproduced in nnU-Net.
        let text = serde_json::to_string_pretty(folds)?;
        write_text_atomic(&out.join(ctrcl_data::nnunet::SPLITS_FINAL), &text)?;
    }
    for (split, name) in [
        (Split::Train, "train"),
        (Split::Val, "val"),
        (Split::Test, "test"),
    ] {
        let mut text = dataset.split_ids(split).join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_text_atomic(&out.join("split").join(format!("{name}.txt")), &text)?;
    }
    Ok(())
}

/// An exclusive hold on a run directory (`RUN/.lock`) for as long as it lives: a second
/// `ctrcl train --resume` of the same run fails at once instead of racing the first.
pub struct RunLock {
    _file: std::fs::File,
}

/// Takes the lock of run directory `run`, or says which process kind holds it.
pub fn lock_run(run: &Path) -> Result<RunLock> {
    let path = lock(run);
    let file = ctrcl_data::error::open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another ctrcl process (training or resuming it holds {}); wait for it to finish or stop it",
            run.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The experiment runner used to search the log for the text `"event":"end"`; a parsed log
    /// decides now, and only its last event counts.
    #[test]
    fn a_run_is_finished_when_its_last_event_is_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        assert!(!finished(run), "no log");
        let write = |lines: &[&str]| std::fs::write(log(run), lines.join("\n") + "\n").unwrap();
        write(&[r#"{"event":"start"}"#, r#"{"step":10,"loss":1.0}"#]);
        assert!(!finished(run));
        write(&[
            r#"{"event":"start"}"#,
            r#"{"step":10}"#,
            r#"{"event":"end","seconds":1.0}"#,
        ]);
        assert!(finished(run));
        write(&[r#"{"event": "start"}"#, r#"{"event": "end"}"#]);
        assert!(finished(run), "spacing does not matter to a parser");
        write(&[
            r#"{"event":"end"}"#,
            r#"{"event":"resume","from_step":10}"#,
            r#"{"step":20}"#,
        ]);
        assert!(!finished(run), "resumed after its end");
        write(&[r#"{"event":"start"}"#, r#"{"note":"{\"event\":\"end\"}"}"#]);
        assert!(!finished(run), "the text inside a value is not an event");
        write(&[r#"{"event":"start"}"#, r#"{"event":"end"}"#, r#"{"step":3"#]);
        assert!(finished(run), "a torn last line is no event");
    }

    /// Found by the probe: two `--resume` of one run raced instead of one taking a lock.
    #[test]
    fn a_second_lock_on_a_run_is_refused_until_the_first_is_released() {
        let run = tempfile::tempdir().unwrap();
        let first = lock_run(run.path()).unwrap();
        let err = lock_run(run.path())
            .err()
            .expect("the second lock is refused");
        assert!(format!("{err:#}").contains("in use by another ctrcl process"));
        drop(first);
        lock_run(run.path()).unwrap();
    }
}

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
//! (`splits_final.json` and the split lists are written beside these by the data layer.)

use crate::student::Role;
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

//! A run's training log: `log.jsonl`, one JSON line per logged step, validation and event,
//! mirrored into TensorBoard's event file; and, for `--resume`, the log cut back to a
//! checkpoint's step.

use crate::checkpoint::write_text_atomic;
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Appends JSON lines to `log.jsonl`, flushed at once so a crash loses nothing logged, and
/// mirrors their numbers into the run's TensorBoard event file (`crate::tensorboard`).
pub(crate) struct RunLog {
    pub(crate) file: std::fs::File,
    pub(crate) events: EventWriter,
    pub(crate) class_names: Vec<String>,
}

impl RunLog {
    pub(crate) fn line(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").context("cannot write log.jsonl")?;
        self.file.flush().context("cannot write log.jsonl")?;
        self.events.log_line(&v, &self.class_names)
    }
}

/// Keeps the log lines up to `step` (and events without a step), atomically.
pub(crate) fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut kept = String::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue, // a line cut by the interruption
        };
        if v.get("step")
            .and_then(|s| s.as_u64())
            .is_none_or(|s| s as usize <= step)
        {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_text_atomic(path, &kept)
}

//! A run's training log: `log.jsonl`, one JSON line per logged step, validation and event,
//! mirrored into TensorBoard's event file; and, for `--resume`, the log cut back to a
//! checkpoint's step; the `classes` event (how the training slices hold each class).

use crate::checkpoint::write_text_atomic;
use crate::tensorboard::EventWriter;
use anyhow::{Context, Result};
use ctrcl_data::dataset::Dataset;
use ctrcl_data::split::Split;
use serde_json::json;
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

/// The `classes` event of `log.jsonl`: how many training slices hold each foreground class and
/// its share of the training voxels — whether a class is slice-rare (what
/// `data.foreground_oversample` acts on) or only small. Over the whole training split (a
/// semi-supervised run's unlabelled slices included).
pub(crate) fn class_presence_event(dataset: &Dataset) -> serde_json::Value {
    let (slices, presence) = dataset.class_presence(Split::Train);
    let total = presence.iter().map(|p| p.voxels).sum::<u64>().max(1) as f64;
    let classes: Vec<serde_json::Value> = dataset.class_names[1..]
        .iter()
        .zip(&presence[1..])
        .map(|(name, p)| {
            json!({"name": name, "slices": p.slices, "voxel_share": p.voxels as f64 / total})
        })
        .collect();
    json!({"event": "classes", "training_slices": slices, "classes": classes})
}

/// The stderr line of the `classes` event.
pub(crate) fn class_presence_line(event: &serde_json::Value) -> String {
    let classes: Vec<String> = event["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} {} ({:.2}%)",
                c["name"].as_str().unwrap_or("?"),
                c["slices"],
                100.0 * c["voxel_share"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    format!(
        "training slices holding each class, of {} (share of voxels): {}",
        event["training_slices"],
        classes.join(", ")
    )
}

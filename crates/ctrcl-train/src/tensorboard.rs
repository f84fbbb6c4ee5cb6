//! TensorBoard event files beside `log.jsonl`, so a run can be watched where people already look
//! (`tensorboard --logdir runs/`).
//!
//! Every numeric field of a `log.jsonl` line that carries a step becomes a scalar: loss terms as
//! `cnn/ce`, `transformer/cfcl`, learning rates as `lr/cnn`, ramp weights as `beta_r`, validation
//! as `val/cnn/mean_dice` and `val/cnn/dice/<class>`. The file is TensorBoard's own format,
//! written here without TensorFlow or protobuf crates: TFRecord framing (length, masked CRC-32C
//! of the length, the bytes, masked CRC-32C of the bytes) around `Event` protos holding a
//! `file_version` or a `Summary` of `simple_value`s. `tests/tensorboard.rs` checks the bytes
//! against a file written by TensorBoard's own writer (scripts/reference/tensorboard_events.py,
//! which also reads it back with TensorBoard's `EventAccumulator`).
//!
//! `--resume` keeps the events up to the checkpoint's step and drops the later ones (as
//! `log.jsonl` drops its later lines), so the curves show the run that actually continued.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::Value;

use ctrcl_data::error::write_atomic;

/// The event file's name in a run directory (`run_dir::EVENTS`).
pub const EVENTS_FILE: &str = crate::run_dir::EVENTS;

/// The version string TensorBoard expects in a file's first event.
const FILE_VERSION: &str = "brain.Event:2";

/// CRC-32C (Castagnoli), bitwise-reflected, as TFRecord frames use it.
fn crc32c(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    !bytes.iter().fold(!0u32, |c, &b| {
        TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC: rotated and offset so that CRCs of CRCs stay well distributed.
fn masked_crc(bytes: &[u8]) -> u32 {
    crc32c(bytes).rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
fn record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u8, data: &[u8], out: &mut Vec<u8>) {
    out.push(field << 3 | 2);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// What an event holds besides its time and step.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    FileVersion(String),
    /// `(tag, value)` pairs of one `Summary`.
    Scalars(Vec<(String, f32)>),
}

/// One event, as far as ctrcl writes and reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub wall_time: f64,
    pub step: u64,
    pub payload: Payload,
}

impl Event {
    /// The `Event` proto (fields in number order, zero values left out, as protobuf writes).
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if self.wall_time != 0.0 {
            out.push(1 << 3 | 1);
            out.extend_from_slice(&self.wall_time.to_le_bytes());
        }
        if self.step != 0 {
            out.push(2 << 3);
            varint(self.step, &mut out);
        }
        match &self.payload {
            Payload::FileVersion(v) => bytes_field(3, v.as_bytes(), &mut out),
            Payload::Scalars(values) => {
                let mut summary = Vec::new();
                for (tag, value) in values {
                    let mut v = Vec::new();
                    bytes_field(1, tag.as_bytes(), &mut v);
                    v.push(2 << 3 | 5);
                    v.extend_from_slice(&value.to_le_bytes());
                    bytes_field(1, &v, &mut summary);
                }
                bytes_field(5, &summary, &mut out);
            }
        }
        out
    }

    /// Decodes what [`Event::encode`] writes; `None` for anything else.
    fn decode(data: &[u8]) -> Option<Event> {
        let mut event = Event {
            wall_time: 0.0,
            step: 0,
            payload: Payload::Scalars(Vec::new()),
        };
        let mut fields = Fields(data);
        while let Some((field, value)) = fields.next()? {
            match (field, value) {
                (1, Field::Fixed64(b)) => event.wall_time = f64::from_le_bytes(b),
                (2, Field::Varint(v)) => event.step = v,
                (3, Field::Bytes(b)) => {
                    event.payload = Payload::FileVersion(String::from_utf8(b.to_vec()).ok()?)
                }
                (5, Field::Bytes(summary)) => {
                    let mut values = Vec::new();
                    let mut entries = Fields(summary);
                    while let Some((1, Field::Bytes(entry))) = entries.next()? {
                        let (mut tag, mut value) = (None, None);
                        let mut parts = Fields(entry);
                        while let Some(part) = parts.next()? {
                            match part {
                                (1, Field::Bytes(t)) => tag = String::from_utf8(t.to_vec()).ok(),
                                (2, Field::Fixed32(v)) => value = Some(f32::from_le_bytes(v)),
                                _ => {}
                            }
                        }
                        values.push((tag?, value?));
                    }
                    event.payload = Payload::Scalars(values);
                }
                _ => {}
            }
        }
        Some(event)
    }
}

enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

/// The fields of one protobuf message; `next` is `None` on malformed input, `Some(None)` at
/// the end.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            v |= u64::from(b & 0x7F) << shift;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn next(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(self.take(8)?.try_into().ok()?),
            2 => {
                let n = usize::try_from(self.varint()?).ok()?;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(self.take(4)?.try_into().ok()?),
            _ => return None,
        };
        Some(Some((key >> 3, value)))
    }
}

/// The events of a file, in order, stopping at the first record that is cut or damaged (a write
/// interrupted by a crash) — with the raw record bytes of each.
fn read_records(bytes: &[u8]) -> Vec<(Event, &[u8])> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() - at >= 12 {
        let len_bytes = &bytes[at..at + 8];
        let crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().expect("4 bytes"));
        let Ok(len) = usize::try_from(u64::from_le_bytes(len_bytes.try_into().expect("8 bytes")))
        else {
            break;
        };
        if crc != masked_crc(len_bytes) || bytes.len() - at - 12 < len.saturating_add(4) {
            break;
        }
        let data = &bytes[at + 12..at + 12 + len];
        let data_crc =
            u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().expect("4"));
        let Some(event) = (data_crc == masked_crc(data))
            .then(|| Event::decode(data))
            .flatten()
        else {
            break;
        };
        out.push((event, &bytes[at..at + 16 + len]));
        at += 16 + len;
    }
    out
}

/// The bytes of one event as it is written to the file (a TFRecord around the `Event` proto).
pub fn record_of(event: &Event) -> Vec<u8> {
    record(&event.encode())
}

/// Every event of an event file written by ctrcl (for tests and tools).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(read_records(&bytes).into_iter().map(|(e, _)| e).collect())
}

/// Seconds since the Unix epoch, as TensorBoard's wall times.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Appends events to a run's event file, flushed after each (a crash loses nothing written).
pub struct EventWriter {
    file: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `run` (replacing one there), starting with its file-version event.
    pub fn create(run: &Path) -> Result<Self> {
        let path = crate::run_dir::events(run);
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut writer = EventWriter {
            file: BufWriter::new(file),
            path,
        };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            payload: Payload::FileVersion(FILE_VERSION.into()),
        })?;
        Ok(writer)
    }

    /// Continues `run`'s event file after a resume from `step`: the events up to `step` are kept
    /// (atomically rewritten), later ones dropped; a run without an event file gets a new one.
    pub fn resume(run: &Path, step: u64) -> Result<Self> {
        let path = crate::run_dir::events(run);
        let Ok(bytes) = std::fs::read(&path) else {
            return Self::create(run);
        };
        let records = read_records(&bytes);
        if records.is_empty() {
            return Self::create(run);
        }
        let kept: Vec<u8> = records
            .iter()
            .filter(|(e, _)| e.step <= step)
            .flat_map(|(_, raw)| raw.iter().copied())
            .collect();
        write_atomic(&path, &kept)?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(EventWriter {
            file: BufWriter::new(file),
            path,
        })
    }

    /// Writes one event and flushes it.
    pub fn write(&mut self, event: &Event) -> Result<()> {
        self.file
            .write_all(&record_of(event))
            .and_then(|_| self.file.flush())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// The scalars of one `log.jsonl` line (nothing for lines without a step), timed now.
    pub fn log_line(&mut self, line: &Value, class_names: &[String]) -> Result<()> {
        let Some((step, values)) = scalars_of(line, class_names) else {
            return Ok(());
        };
        if values.is_empty() {
            return Ok(());
        }
        self.write(&Event {
            wall_time: now(),
            step,
            payload: Payload::Scalars(values),
        })
    }
}

/// The step and the scalars of a `log.jsonl` line: numeric fields by their path joined with `/`
/// (the wall-clock `elapsed_s` left out: TensorBoard has its own time axis); per-class Dice lists
/// as `.../dice/<class name>` (the foreground classes, `class_names[1..]`). `None` without a
/// step.
pub fn scalars_of(line: &Value, class_names: &[String]) -> Option<(u64, Vec<(String, f32)>)> {
    let step = line.get("step")?.as_u64()?;
    let mut out = Vec::new();
    fn walk(v: &Value, path: &str, class_names: &[String], out: &mut Vec<(String, f32)>) {
        match v {
            Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.push((path.to_string(), x as f32));
                }
            }
            Value::Object(map) => {
                for (k, child) in map {
                    if path.is_empty() && (k == "step" || k == "elapsed_s") {
                        continue;
                    }
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}/{k}")
                    };
                    walk(child, &p, class_names, out);
                }
            }
            Value::Array(items) => {
                let dice = path.strip_suffix("/per_class_dice");
                for (i, item) in items.iter().enumerate() {
                    let p = match (dice, class_names.get(i + 1)) {
                        (Some(head), Some(name)) => format!("{head}/dice/{name}"),
                        _ => format!("{path}/{i}"),
                    };
                    walk(item, &p, class_names, out);
                }
            }
            _ => {}
        }
    }
    walk(line, "", class_names, &mut out);
    Some((step, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value of "123456789" (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn log_lines_become_named_scalars() {
        let names: Vec<String> = ["background", "CSF", "GM", "WM"].map(String::from).into();
        let line = serde_json::json!({"step": 6, "elapsed_s": 1.5, "beta_r": 1.0,
            "cnn": {"ce": 0.5}, "lr": {"transformer": 0.001}});
        let (step, values) = scalars_of(&line, &names).unwrap();
        assert_eq!(step, 6);
        let tags: Vec<&str> = values.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(tags, ["beta_r", "cnn/ce", "lr/transformer"]);
        let val = serde_json::json!({"step": 6, "val": {"cnn": {"mean_dice": 0.5,
            "per_class_dice": [0.25, 0.5, 0.75]}}});
        let (_, values) = scalars_of(&val, &names).unwrap();
        assert_eq!(
            values,
            [
                ("val/cnn/mean_dice".to_string(), 0.5),
                ("val/cnn/dice/CSF".to_string(), 0.25),
                ("val/cnn/dice/GM".to_string(), 0.5),
                ("val/cnn/dice/WM".to_string(), 0.75),
            ]
        );
        assert!(scalars_of(&serde_json::json!({"event": "end"}), &names).is_none());
    }
}

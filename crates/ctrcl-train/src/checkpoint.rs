//! Checkpoint directories written atomically and durably, and the lock that keeps one process per
//! run directory.
//!
//! A checkpoint `RUN/NAME/` is written into a hidden `RUN/.NAME.tmp/`, every file and the folder
//! are synced, then the previous checkpoint is moved aside to `RUN/.NAME.old/` and the new one
//! renamed into place. A crash at any point leaves either the old or the new checkpoint complete:
//! - during the filling: `NAME/` is untouched (the unfinished `.NAME.tmp/` is cleared next time);
//! - between the two renames: no `NAME/`, but `.NAME.old/` (complete) and `.NAME.tmp/` (complete,
//!   the newer: renames happen only after it was filled and synced); [`recover_checkpoint`] puts
//!   the newer one back, and `ctrcl train --resume` calls it.
//!
//! A failed filling (a full disk) removes the unfinished copy at once, so it does not keep the disk
//! full, and the error is the operating system's ("No space left on device") naming the file.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes a checkpoint directory `run/name` by calling `fill` on a fresh temporary directory.
pub fn write_checkpoint(
    run: &Path,
    name: &str,
    fill: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let final_dir = run.join(name);
    let tmp = run.join(format!(".{name}.tmp"));
    let old = run.join(format!(".{name}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot clear {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    if let Err(e) = fill(&tmp).and_then(|()| sync_tree(&tmp)) {
        // An unfinished copy would keep a full disk full; the previous checkpoint is intact.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("writing checkpoint {}", final_dir.display())));
    }
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot clear {}", old.display()))?;
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("cannot move {} aside", final_dir.display()))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("cannot install {}", final_dir.display()))?;
    sync_dir(run)?;
    if old.exists() {
        std::fs::remove_dir_all(&old).ok();
    }
    Ok(final_dir)
}

/// Puts back checkpoint `run/name` when a crash between [`write_checkpoint`]'s two renames left
/// it missing: the complete new copy (`.NAME.tmp/` while `.NAME.old/` exists) if there is one,
/// else the previous one (`.NAME.old/`). Returns what it did, for the user, or `None`.
pub fn recover_checkpoint(run: &Path, name: &str) -> Result<Option<String>> {
    let final_dir = run.join(name);
    let tmp = run.join(format!(".{name}.tmp"));
    let old = run.join(format!(".{name}.old"));
    if final_dir.exists() || !old.is_dir() {
        return Ok(None);
    }
    let source = if tmp.is_dir() { &tmp } else { &old };
    std::fs::rename(source, &final_dir)
        .with_context(|| format!("cannot restore {}", final_dir.display()))?;
    sync_dir(run)?;
    Ok(Some(format!(
        "restored {} from {} (the previous run stopped while replacing it)",
        final_dir.display(),
        source.display()
    )))
}

/// Writes `bytes` to `path` and syncs it to disk. An I/O failure (a full disk) is reported as the
/// operating system's error naming the file.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Syncs every file of `dir` (one level: checkpoints are flat) and `dir` itself.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("cannot sync {}", path.display()))?;
        }
    }
    sync_dir(dir)
}

/// Syncs a directory's entries (the renames in it) to disk.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", dir.display()))
}

/// Writes a text file atomically (temporary sibling, then rename).
pub fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    ctrcl_data::error::write_atomic(path, text.as_bytes()).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_fill_keeps_the_previous_checkpoint() {
        let run = tempfile::tempdir().unwrap();
        write_checkpoint(run.path(), "last", |d| {
            Ok(std::fs::write(d.join("a"), "1")?)
        })
        .unwrap();
        let err = write_checkpoint(run.path(), "last", |d| {
            std::fs::write(d.join("a"), "2")?;
            anyhow::bail!("disk full")
        });
        assert!(err.is_err());
        assert_eq!(
            std::fs::read_to_string(run.path().join("last/a")).unwrap(),
            "1"
        );
        // Found by the hostile-input probe (issue #21): the unfinished copy stayed and kept a
        // full disk full.
        assert!(
            !run.path().join(".last.tmp").exists(),
            "the unfinished copy is removed at once"
        );
        write_checkpoint(run.path(), "last", |d| {
            Ok(std::fs::write(d.join("a"), "3")?)
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(run.path().join("last/a")).unwrap(),
            "3"
        );
        let names: Vec<_> = std::fs::read_dir(run.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary directories left: {names:?}");
    }

    /// Found by the probe: a full disk was reported as a MessagePack error.
    #[test]
    fn a_full_disk_is_reported_as_such_naming_the_file() {
        let err = write_synced(Path::new("/dev/full"), &[0u8; 4096]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("/dev/full") && msg.contains("No space left on device"),
            "{msg}"
        );
    }

    /// Found by the probe: a kill between the two renames left no `last/`, and `--resume`
    /// ignored the complete hidden copies.
    #[test]
    fn a_crash_between_the_renames_is_recovered_from_the_newer_copy() {
        let run = tempfile::tempdir().unwrap();
        let r = run.path();
        // The state between the renames: `.last.old` (previous), `.last.tmp` (new, complete).
        for (dir, v) in [(".last.old", "old"), (".last.tmp", "new")] {
            std::fs::create_dir_all(r.join(dir)).unwrap();
            std::fs::write(r.join(dir).join("a"), v).unwrap();
        }
        let note = recover_checkpoint(r, "last").unwrap().unwrap();
        assert!(note.contains(".last.tmp"), "{note}");
        assert_eq!(std::fs::read_to_string(r.join("last/a")).unwrap(), "new");
        // Only the previous copy: it comes back.
        std::fs::remove_dir_all(r.join("last")).unwrap();
        assert!(recover_checkpoint(r, "last").unwrap().is_some());
        assert_eq!(std::fs::read_to_string(r.join("last/a")).unwrap(), "old");
        // A complete checkpoint is left alone; an unfinished first copy alone is not used.
        assert!(recover_checkpoint(r, "last").unwrap().is_none());
        std::fs::create_dir_all(r.join(".best-cnn.tmp")).unwrap();
        assert!(recover_checkpoint(r, "best-cnn").unwrap().is_none());
        assert!(!r.join("best-cnn").exists());
    }
}

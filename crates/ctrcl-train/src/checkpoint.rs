//! Checkpoint directories written atomically: everything goes into a hidden temporary directory,
//! which then replaces the previous checkpoint by rename. A crash at any point leaves either the
//! old or the new checkpoint complete, never a mix.

use anyhow::{Context, Result};
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
    fill(&tmp).with_context(|| format!("writing checkpoint {}", final_dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("cannot clear {}", old.display()))?;
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old)
            .with_context(|| format!("cannot move {} aside", final_dir.display()))?;
    }
    std::fs::rename(&tmp, &final_dir)
        .with_context(|| format!("cannot install {}", final_dir.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).ok();
    }
    Ok(final_dir)
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
}

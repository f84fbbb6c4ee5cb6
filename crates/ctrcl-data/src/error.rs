//! The one error type of `ctrcl-data`: every variant names the file it is about.

use std::path::{Path, PathBuf};

/// An error reading or writing data; always carries the path involved.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The operating system refused or failed an I/O operation.
    /// (The I/O error is part of the message, not a `source`, so that error chains print it once.)
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The file exists but its content is not what the format or dataset requires.
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A required external step (download, tool) failed; the message says what to do.
    #[error("{0}")]
    External(String),
}

impl DataError {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.as_ref().to_path_buf(),
            error: source,
        }
    }

    pub fn invalid(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        DataError::Invalid {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, DataError>;

/// Writes `bytes` to `path` atomically: a temporary sibling is written, synced, then renamed, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| DataError::io(&tmp, e))?;
    file.sync_all().map_err(|e| DataError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| DataError::io(path, e))
}

/// Opens (creating it if needed) a lock file, to be locked with `File::lock`/`try_lock`; its
/// content is never written, so an existing one is not truncated.
pub fn open_lock_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| DataError::io(path, e))
}

/// An error naming the first NaN or infinite value of `values` (intensities that would poison
/// training and metrics); `data inspect` reads with the `*_any` readers instead and counts them.
pub fn check_finite(path: &Path, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(DataError::invalid(
            path,
            format!("voxel {i} is not finite (NaN or infinite intensity)"),
        )),
        None => Ok(()),
    }
}

//! PyTorch weight import (`.pth` state dicts) through `burn-store`, with explicit key maps, and
//! the report of what matched.

use crate::ModelError;
use burn::prelude::*;
use burn_store::{ModuleSnapshot, PytorchStore};
use std::path::Path;

/// What a weight import matched: tensors loaded, model tensors the file lacks (left as
/// initialised), and file tensors the model does not use.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub loaded: Vec<String>,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

/// Loads the tensors of the state dict at `path` (at the root, or under a top-level `model` or
/// `state_dict` key as released checkpoints nest them) into `module`, renaming keys by `key_map`
/// (regex → replacement, applied in order). Linear weights are transposed by burn-store's PyTorch
/// adapter. Tensors whose shapes do not fit are an error; no match at all is an error.
pub fn load_pytorch<B: Backend, M: Module<B> + ModuleSnapshot<B>>(
    mut module: M,
    path: &Path,
    key_map: &[(&str, &str)],
) -> Result<(M, ImportReport), ModelError> {
    let mut store = PytorchStore::from_file(path)
        .allow_partial(true)
        // Released checkpoints nest the state dict (`{"model": {...}}`): drop that prefix.
        .with_key_remapping(r"^(model|state_dict)\.", "");
    for &(from, to) in key_map {
        store = store.with_key_remapping(from, to);
    }
    let result = module
        .load_from(&mut store)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
    if let Some(e) = result.errors.first() {
        return Err(ModelError::Config(format!(
            "{}: {} tensor(s) do not fit the model's sizes (first: {e:?}); set the model's \
             sizes to the checkpoint's",
            path.display(),
            result.errors.len()
        )));
    }
    if result.applied.is_empty() {
        return Err(ModelError::Config(format!(
            "{}: no tensor matched the expected key layout",
            path.display()
        )));
    }
    let report = ImportReport {
        loaded: result.applied,
        missing: result.missing.into_iter().map(|(p, _)| p).collect(),
        unexpected: result.unused,
    };
    Ok((module, report))
}

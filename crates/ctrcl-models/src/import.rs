//! PyTorch weight import (`.pth` state dicts, or the same tensors as `.safetensors`, as timm and
//! the Hugging Face Hub ship them) through `burn-store`, with explicit key maps, and the report of
//! what matched.

use crate::ModelError;
use burn::prelude::*;
use burn_store::{
    ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore,
};
use std::path::Path;

/// What a weight import matched: tensors loaded, model tensors the file lacks (left as
/// initialised), and file tensors the model does not use.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub loaded: Vec<String>,
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

/// ImageNet weights have an RGB stem: only 1- or 3-channel inputs can use them.
pub fn check_rgb_stem(in_channels: usize) -> Result<(), ModelError> {
    if in_channels == 1 || in_channels == 3 {
        Ok(())
    } else {
        Err(ModelError::Config(format!(
            "ImageNet weights need 1- or 3-channel inputs, got {in_channels}"
        )))
    }
}

/// Adapts an RGB stem's filters `[out, 3, k, k]` to a grey input `[out, 1, k, k]` by summing
/// them: the same as repeating the grey image on three channels. A detached new leaf, so it is
/// trainable under autodiff too.
pub fn grey_stem<B: Backend>(
    weight: &burn::module::Param<Tensor<B, 4>>,
) -> burn::module::Param<Tensor<B, 4>> {
    burn::module::Param::from_tensor(weight.val().sum_dim(1).detach())
}

/// The key remappings of every import: released checkpoints nest the state dict
/// (`{"model": {...}}`), whose prefix is dropped, then the model's own map.
fn remapped<S>(mut store: S, key_map: &[(&str, &str)], remap: impl Fn(S, &str, &str) -> S) -> S {
    store = remap(store, r"^(model|state_dict)\.", "");
    for &(from, to) in key_map {
        store = remap(store, from, to);
    }
    store
}

/// Loads `store` into `module`, naming `path` in errors.
fn apply<B: Backend, M: ModuleSnapshot<B>, S: ModuleStore>(
    module: &mut M,
    store: &mut S,
    path: &Path,
) -> Result<burn_store::ApplyResult, ModelError> {
    module
        .load_from(store)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

/// Loads the tensors of the state dict at `path` (`.pth`, or `.safetensors` by its extension) (at the root, or under a top-level `model` or
/// `state_dict` key as released checkpoints nest them) into `module`, renaming keys by `key_map`
/// (regex → replacement, applied in order). Linear weights are transposed by burn-store's PyTorch
/// adapter. Tensors whose shapes do not fit are an error; no match at all is an error.
pub fn load_pytorch<B: Backend, M: Module<B> + ModuleSnapshot<B>>(
    mut module: M,
    path: &Path,
    key_map: &[(&str, &str)],
) -> Result<(M, ImportReport), ModelError> {
    let safetensors = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let result = if safetensors {
        // The same PyTorch names and layouts as a .pth: the adapter transposes linear weights
        // and renames norm parameters as PytorchStore does; enum variants and index gaps as
        // PytorchStore's defaults.
        let mut store = SafetensorsStore::from_file(path)
            .with_from_adapter(PyTorchToBurnAdapter)
            .skip_enum_variants(true)
            .map_indices_contiguous(true);
        store = remapped(store, key_map, |s, from, to| s.with_key_remapping(from, to))
            .allow_partial(true);
        apply(&mut module, &mut store, path)?
    } else {
        let store = PytorchStore::from_file(path);
        let mut store = remapped(store, key_map, |s, from, to| s.with_key_remapping(from, to))
            .allow_partial(true);
        apply(&mut module, &mut store, path)?
    };
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

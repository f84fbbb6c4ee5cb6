//! `ctrcl export`: a trained student as `FILE.safetensors` under the key names of its PyTorch twin
//! (`bench/pytorch/models.py`), and `FILE.json`, everything needed to rebuild and feed it: the
//! twin's class and constructor arguments, the input's normalisation and geometry, the classes
//! and the label values they stand for. The same JSON is stored in the file's `__metadata__`
//! (key `ctrcl`), so the weights stay self-describing when the JSON is lost.
//!
//! `bench/pytorch/load_export.py FILE.safetensors [--onnx OUT.onnx]` loads it into the twin with
//! `strict=True` and exports ONNX; `bench/pytorch/test_export.py` checks both against
//! `ctrcl predict --probabilities`.

use crate::role::Role;
use crate::run_dir::{checkpoint_step, open_run};
use crate::tester::load_student;
use anyhow::{bail, Context, Result};
use burn::backend::Flex;
use ctrcl_data::classes::stored_label_values;
use ctrcl_data::error::write_atomic;
use ctrcl_models::export::{pytorch_state_dict, safetensors_bytes};
use ctrcl_models::{Architecture, ModelSizes};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What `export_student` wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    pub weights: PathBuf,
    pub settings: PathBuf,
    pub architecture: Architecture,
    pub tensors: usize,
    /// The checkpoint folder exported (`best-ROLE/` or `last/`) and its step.
    pub checkpoint: PathBuf,
    pub step: Option<u64>,
}

/// The twin's class in `bench/pytorch/models.py` and its constructor arguments for `sizes`.
pub fn twin_constructor(
    arch: Architecture,
    sizes: &ModelSizes,
    image_size: usize,
    in_channels: usize,
    classes: usize,
) -> (&'static str, Value) {
    match arch {
        Architecture::Unet => (
            "UNet",
            json!({
                "in_ch": in_channels, "classes": classes,
                "ch": sizes.unet.channels, "drop": sizes.unet.dropout,
            }),
        ),
        Architecture::Resunet => (
            "ResUnet",
            json!({
                "in_ch": in_channels, "classes": classes, "ch": sizes.resunet.channels,
                "blocks": sizes.resunet.blocks, "dec": sizes.resunet.decoder,
            }),
        ),
        Architecture::SwinUnet => {
            let s = &sizes.swin_unet;
            (
                "SwinUnet",
                json!({
                    "size": image_size, "classes": classes, "patch": s.patch_size,
                    "embed": s.embed_dim, "depths": s.depths, "dec_depths": s.decoder_depths,
                    "heads": s.heads, "window": s.window, "mlp_ratio": s.mlp_ratio,
                    "in_ch": in_channels,
                }),
            )
        }
        Architecture::Segformer => {
            let s = &sizes.segformer;
            (
                "SegFormer",
                json!({
                    "in_ch": in_channels, "classes": classes, "dims": s.dims, "depths": s.depths,
                    "heads": s.heads, "sr": s.sr_ratios, "mlp_ratio": s.mlp_ratio,
                    "decoder_dim": s.decoder_dim,
                }),
            )
        }
    }
}

/// `out`'s settings file: the same name with `.json` for `.safetensors`.
fn settings_path(out: &Path) -> PathBuf {
    out.with_extension("json")
}

/// Exports the `role` student of `run` (its tested checkpoint: `best-ROLE/`, else `last/`) to
/// `out` (`.safetensors`) and `out` with `.json`. Neither may exist: an export never replaces a
/// file.
pub fn export_student(run: &Path, role: Role, out: &Path) -> Result<ExportSummary> {
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        bail!(
            "--out {}: the weights are written as .safetensors; name the file FILE.safetensors",
            out.display()
        );
    }
    let settings = settings_path(out);
    for path in [out, settings.as_path()] {
        if path.exists() {
            bail!(
                "{} exists: export never replaces a file; remove it or choose another --out",
                path.display()
            );
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            bail!(
                "--out {}: folder {} does not exist",
                out.display(),
                dir.display()
            );
        }
    }
    let (cfg, info) = open_run(run)?;
    let k = info.class_names.len();
    let device = Default::default();
    let (net, checkpoint) = load_student::<Flex>(run, &cfg, role, k, &device)?;
    let arch = net.architecture();
    let tensors = pytorch_state_dict(&net).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (class, kwargs) =
        twin_constructor(arch, &cfg.models, cfg.data.image_size, cfg.data.channels, k);
    let (label_values, _) = stored_label_values(&cfg.data.label_map, k);
    let step = checkpoint_step(&checkpoint);
    let intensity = cfg.data.intensity();
    let doc = json!({
        "format": "ctrcl-export/1",
        "ctrcl_version": env!("CARGO_PKG_VERSION"),
        "run": run,
        "student": role.name(),
        "checkpoint": checkpoint,
        "step": step,
        "architecture": arch.name(),
        "twin": {"module": "bench/pytorch/models.py", "class": class, "kwargs": kwargs},
        "input": {
            "layout": "[N, C, H, W] float32",
            "channels": cfg.data.channels,
            "image_size": cfg.data.image_size,
            "clip": intensity.clip,
            "normalize": intensity.normalize,
            "channel_normalization": info.channel_normalization,
            "normalized_over": "each input file (volume or image) and channel, after clipping",
            "geometry": "a native h×w slice is padded, centred, to a square of side max(h, w) \
                         with the normalised image's minimum, then resized to image_size",
            "image_resize": cfg.data.image_resize,
        },
        "output": {
            "logits": "[N, K, image_size, image_size] float32; softmax over K gives the probabilities",
            "classes": info.class_names,
            "label_values": label_values,
        },
        "weights": {"file": out.file_name().map(|n| n.to_string_lossy().into_owned()), "tensors": tensors.len()},
    });
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("ctrcl".to_string(), doc.to_string()),
    ]);
    write_atomic(out, &safetensors_bytes(&tensors, &metadata))?;
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    write_atomic(&settings, text.as_bytes())
        .with_context(|| format!("{} was written, its settings were not", out.display()))?;
    Ok(ExportSummary {
        weights: out.to_path_buf(),
        settings,
        architecture: arch,
        tensors: tensors.len(),
        checkpoint,
        step,
    })
}

//! A student's weights as a PyTorch state dict of our PyTorch twins (`bench/pytorch/models.py`),
//! written as `.safetensors`: the same tensors `twin.load_state_dict(strict=True)` takes.
//!
//! Three things separate a Burn module from its twin's state dict, and each is done here,
//! explicitly, so that a reader can check it against `models.py`:
//! - **names**: one key map per architecture (regex → replacement, applied in order to the Burn
//!   path without the enum variant), the export counterpart of `import.rs`'s maps;
//! - **norm parameters**: Burn's `gamma`/`beta` are PyTorch's `weight`/`bias` (BatchNorm and
//!   LayerNorm); PyTorch's BatchNorm also keeps a `num_batches_tracked` counter, which Burn does
//!   not: it is written as 0 (PyTorch reads it only when `momentum=None`);
//! - **layout**: a Burn linear weight is `[in, out]`, PyTorch's `[out, in]` (transposed here);
//!   convolution and transposed-convolution weights share PyTorch's layout already.
//!
//! The key lists are checked against the twins' own state dicts (reference JSON written by
//! `scripts/reference/twin_state_dicts.py`); the values by `bench/pytorch/test_export.py`, which
//! compares the twin's and an ONNX runtime's outputs with `ctrcl predict`.

use crate::{Architecture, ModelError, Student};
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use regex::Regex;
use std::collections::BTreeMap;

/// One tensor of an exported state dict.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportTensor {
    /// The twin's state-dict key.
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Values,
}

/// Element values, row-major in `shape`.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    /// BatchNorm's `num_batches_tracked` (a scalar).
    I64(Vec<i64>),
}

impl Values {
    fn dtype(&self) -> &'static str {
        match self {
            Values::F32(_) => "F32",
            Values::I64(_) => "I64",
        }
    }

    fn le_bytes(&self) -> Vec<u8> {
        match self {
            Values::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Values::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Burn path (variant dropped) → twin key, per architecture, applied in order.
fn key_map(arch: Architecture) -> &'static [(&'static str, &'static str)] {
    match arch {
        // models.UNet: enc[i].body = conv, bn, lrelu, dropout, conv, bn, lrelu; up[j]; dec[j].
        Architecture::Unet => &[
            (r"^encoder\.(\d+)\.conv1\.", "enc.${1}.body.0."),
            (r"^encoder\.(\d+)\.norm1\.", "enc.${1}.body.1."),
            (r"^encoder\.(\d+)\.conv2\.", "enc.${1}.body.4."),
            (r"^encoder\.(\d+)\.norm2\.", "enc.${1}.body.5."),
            (r"^decoder\.(\d+)\.up\.", "up.${1}."),
            (r"^decoder\.(\d+)\.conv\.conv1\.", "dec.${1}.body.0."),
            (r"^decoder\.(\d+)\.conv\.norm1\.", "dec.${1}.body.1."),
            (r"^decoder\.(\d+)\.conv\.conv2\.", "dec.${1}.body.4."),
            (r"^decoder\.(\d+)\.conv\.norm2\.", "dec.${1}.body.5."),
        ],
        // models.ResUnet: the encoder has torchvision's names already; dec[j] = conv, bn, relu,
        // conv, bn, relu.
        Architecture::Resunet => &[
            (r"^decoder\.(\d+)\.up\.", "up.${1}."),
            (r"^decoder\.(\d+)\.conv1\.", "dec.${1}.0."),
            (r"^decoder\.(\d+)\.bn1\.", "dec.${1}.1."),
            (r"^decoder\.(\d+)\.conv2\.", "dec.${1}.3."),
            (r"^decoder\.(\d+)\.bn2\.", "dec.${1}.4."),
        ],
        // models.SwinUnet: stages as flat lists (enc[s][j], merge[s], fuse[j], dec[j][k],
        // expand[j]); the MLP as a Sequential (fc, GELU, fc).
        Architecture::SwinUnet => &[
            (r"^encoder\.(\d+)\.blocks\.(\d+)\.", "enc.${1}.${2}."),
            (r"^encoder\.(\d+)\.merge\.", "merge.${1}."),
            (r"^decoder\.(\d+)\.fuse\.", "fuse.${1}."),
            (r"^decoder\.(\d+)\.blocks\.(\d+)\.", "dec.${1}.${2}."),
            (r"^decoder\.(\d+)\.expand\.", "expand.${1}."),
            (r"\.attn\.relative_position_bias_table$", ".attn.table"),
            (r"\.fc1\.", ".mlp.0."),
            (r"\.fc2\.", ".mlp.2."),
        ],
        // models.SegFormer: per-stage lists (embed[i], embed_norm[i], blocks[i][j], norm[i]);
        // the reduction conv and its norm as attn.sr / attn.norm; fuse = conv, bn, relu.
        Architecture::Segformer => &[
            (r"^stages\.(\d+)\.embed\.", "embed.${1}."),
            (r"^stages\.(\d+)\.embed_norm\.", "embed_norm.${1}."),
            (r"^stages\.(\d+)\.blocks\.(\d+)\.", "blocks.${1}.${2}."),
            (r"^stages\.(\d+)\.norm\.", "norm.${1}."),
            (r"\.attn\.sr\.0\.", ".attn.sr."),
            (r"\.attn\.sr\.1\.", ".attn.norm."),
            (r"^fuse\.", "fuse.0."),
            (r"^fuse_norm\.", "fuse.1."),
        ],
    }
}

/// A float parameter as Burn names it: dotted path, the type of the module holding it, shape
/// and values.
struct BurnTensor {
    path: Vec<String>,
    container: String,
    shape: Vec<usize>,
    values: Vec<f32>,
}

#[derive(Default)]
struct Collect {
    path: Vec<String>,
    containers: Vec<String>,
    out: Vec<BurnTensor>,
}

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.to_string());
        self.containers.push(container_type.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    // Running statistics (BatchNorm) are visited here too: Burn's `RunningState` visits as a
    // float parameter.
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 values after convert");
        self.out.push(BurnTensor {
            path: self.path.clone(),
            container: self.containers.last().cloned().unwrap_or_default(),
            shape,
            values,
        });
    }
}

/// `[rows, cols]` row-major → `[cols, rows]`.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// The student's state dict under its twin's keys, in Burn's module order (BatchNorm counters
/// after their layer's statistics).
pub fn pytorch_state_dict<B: Backend>(
    student: &Student<B>,
) -> Result<Vec<ExportTensor>, ModelError> {
    let arch = student.architecture();
    let rules: Vec<(Regex, &str)> = key_map(arch)
        .iter()
        .map(|&(from, to)| (Regex::new(from).expect("a valid key-map pattern"), to))
        .collect();
    let mut collect = Collect::default();
    student.visit(&mut collect);
    let mut out = Vec::with_capacity(collect.out.len());
    for t in collect.out {
        // path[0] is the enum variant (`Unet`, `SwinUnet`, …).
        let (param, modules) = t
            .path
            .split_last()
            .expect("a parameter is visited inside a module");
        let norm = matches!(
            t.container.as_str(),
            "Struct:BatchNorm2d" | "Struct:LayerNorm"
        );
        let param = match (norm, param.as_str()) {
            (true, "gamma") => "weight",
            (true, "beta") => "bias",
            (_, p) => p,
        };
        let mut name = modules[1..]
            .iter()
            .map(String::as_str)
            .chain([param])
            .collect::<Vec<_>>()
            .join(".");
        for (re, to) in &rules {
            name = re.replace(&name, *to).into_owned();
        }
        let (shape, values) = if t.container == "Struct:Linear" && param == "weight" {
            let [rows, cols] = t.shape[..] else {
                return Err(ModelError::Config(format!(
                    "linear weight {name} has shape {:?}, expected 2 dimensions",
                    t.shape
                )));
            };
            (vec![cols, rows], transpose(&t.values, rows, cols))
        } else {
            (t.shape, t.values)
        };
        let counter = (t.container == "Struct:BatchNorm2d" && param == "running_var").then(|| {
            format!(
                "{}num_batches_tracked",
                name.trim_end_matches("running_var")
            )
        });
        out.push(ExportTensor {
            name,
            shape,
            values: Values::F32(values),
        });
        if let Some(name) = counter {
            out.push(ExportTensor {
                name,
                shape: Vec::new(),
                values: Values::I64(vec![0]),
            });
        }
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = out.iter().find(|t| !seen.insert(t.name.as_str())) {
        return Err(ModelError::Config(format!(
            "export of a {}: two tensors map to the key {}",
            arch.name(),
            dup.name
        )));
    }
    Ok(out)
}

/// The `.safetensors` bytes of `tensors` with string `metadata` (`__metadata__`): an 8-byte
/// little-endian header length, the JSON header (padded with spaces to 8 bytes), then the
/// tensors' little-endian bytes in order.
pub fn safetensors_bytes(tensors: &[ExportTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::json!(metadata));
    }
    let mut data = Vec::new();
    for t in tensors {
        let bytes = t.values.le_bytes();
        let start = data.len();
        data.extend_from_slice(&bytes);
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": t.values.dtype(),
                "shape": t.shape,
                "data_offsets": [start, data.len()],
            }),
        );
    }
    let mut json = serde_json::to_vec(&header).expect("a JSON header");
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    out
}

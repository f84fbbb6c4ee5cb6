//! `export::pytorch_state_dict` against our PyTorch twins' own state dicts (keys, shapes, dtypes
//! written by `scripts/reference/twin_state_dicts.py`), and the `.safetensors` bytes read back by
//! Hugging Face's `safetensors` crate. Values are checked end to end against the twins in
//! `bench/pytorch/test_export.py`.

use burn::backend::Flex;
use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;
use ctrcl_models::export::{pytorch_state_dict, safetensors_bytes, Values};
use ctrcl_models::{Architecture, ModelSizes, Student};
use std::collections::BTreeMap;

type B = Flex;

const ARCHS: [Architecture; 4] = [
    Architecture::Unet,
    Architecture::Resunet,
    Architecture::SwinUnet,
    Architecture::Segformer,
];

/// The reference's `[key, shape, dtype]` rows of `arch`, sorted by key.
fn twin_keys(arch: Architecture) -> Vec<(String, Vec<usize>, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/export/twin_state_dicts.json"
    ))
    .unwrap();
    let all: BTreeMap<String, Vec<(String, Vec<usize>, String)>> =
        serde_json::from_str(&text).unwrap();
    let mut rows = all[arch.name()].clone();
    rows.sort();
    rows
}

fn student(arch: Architecture) -> Student<B> {
    ModelSizes::default().init::<B>(arch, 224, 1, 4, &Default::default())
}

#[test]
fn exported_keys_shapes_and_dtypes_are_the_twins_state_dict() {
    for arch in ARCHS {
        let mut ours: Vec<(String, Vec<usize>, String)> = pytorch_state_dict(&student(arch))
            .unwrap()
            .into_iter()
            .map(|t| {
                let dtype = match t.values {
                    Values::F32(_) => "float32",
                    Values::I64(_) => "int64",
                };
                (t.name, t.shape, dtype.to_string())
            })
            .collect();
        ours.sort();
        let twin = twin_keys(arch);
        let missing: Vec<_> = twin.iter().filter(|r| !ours.contains(r)).collect();
        let unexpected: Vec<_> = ours.iter().filter(|r| !twin.contains(r)).collect();
        assert!(
            missing.is_empty() && unexpected.is_empty(),
            "{}: twin keys not exported {missing:?}; exported keys the twin lacks {unexpected:?}",
            arch.name()
        );
    }
}

/// The value of the Burn parameter at dotted `path` (variant included), as f32.
fn burn_param(student: &Student<B>, path: &str) -> (Vec<usize>, Vec<f32>) {
    struct Find<'a> {
        want: &'a str,
        path: Vec<String>,
        found: Option<(Vec<usize>, Vec<f32>)>,
    }
    impl<Bk: Backend> ModuleVisitor<Bk> for Find<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Bk, D>>) {
            if self.path.join(".") == self.want {
                let t = p.val();
                self.found = Some((t.dims().to_vec(), t.into_data().to_vec().unwrap()));
            }
        }
    }
    let mut find = Find {
        want: path,
        path: Vec::new(),
        found: None,
    };
    student.visit(&mut find);
    find.found.unwrap_or_else(|| panic!("no parameter {path}"))
}

#[test]
fn safetensors_file_reads_back_with_hugging_faces_reader() {
    let net = student(Architecture::SwinUnet);
    let tensors = pytorch_state_dict(&net).unwrap();
    let metadata = BTreeMap::from([("architecture".to_string(), "swin-unet".to_string())]);
    let bytes = safetensors_bytes(&tensors, &metadata);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        meta.metadata().as_ref().unwrap()["architecture"],
        "swin-unet"
    );
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(file.len(), tensors.len());
    for t in &tensors {
        let view = file.tensor(&t.name).unwrap();
        assert_eq!(view.shape(), &t.shape[..], "{}", t.name);
        match &t.values {
            Values::F32(v) => {
                assert_eq!(view.dtype(), safetensors::Dtype::F32);
                let read: Vec<f32> = view
                    .data()
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                assert_eq!(&read, v, "{}", t.name);
            }
            Values::I64(v) => {
                assert_eq!(view.dtype(), safetensors::Dtype::I64);
                assert_eq!(view.data(), &v[0].to_le_bytes()[..]);
            }
        }
    }
    // A linear weight is PyTorch's [out, in]: Burn's [in, out] transposed.
    let (shape, burn) = burn_param(&net, "SwinUnet.encoder.0.blocks.0.attn.qkv.weight");
    assert_eq!(shape, vec![96, 288]);
    let view = file.tensor("enc.0.0.attn.qkv.weight").unwrap();
    assert_eq!(view.shape(), &[288, 96]);
    let torch: Vec<f32> = view
        .data()
        .chunks(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    for (r, c) in [(0, 0), (5, 17), (287, 95), (100, 3)] {
        assert_eq!(torch[r * 96 + c], burn[c * 288 + r]);
    }
    // A LayerNorm's gamma is its weight.
    let (_, gamma) = burn_param(&net, "SwinUnet.patch_norm.gamma");
    let view = file.tensor("patch_norm.weight").unwrap();
    assert_eq!(view.data().len(), gamma.len() * 4);
}

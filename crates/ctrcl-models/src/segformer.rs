//! SegFormer with a Mix-Transformer encoder (MiT-B0 sizes by default): overlapping patch
//! embeddings (7×7/4, then 3×3/2), efficient self-attention with spatial reduction, Mix-FFN with a
//! 3×3 depthwise convolution; the all-MLP decoder projects every stage to a common width,
//! upsamples to 1/4 (bilinear, align_corners = false), fuses with a 1×1 conv + BatchNorm + ReLU,
//! classifies and upsamples ×4. Feature taps: the projected stage features at strides 16, 8, 4
//! (the decoder's own per-scale features, like the Swin-UNet's).

use crate::ops;
use crate::{ModelError, SegOutput};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegFormerConfig {
    /// Widths of the four stages (MiT-B0: 32, 64, 160, 256).
    pub dims: [usize; 4],
    pub depths: [usize; 4],
    pub heads: [usize; 4],
    /// Spatial reduction of keys and values per stage (8, 4, 2, 1).
    pub sr_ratios: [usize; 4],
    pub mlp_ratio: usize,
    /// Width of the all-MLP decoder (MiT-B0: 256).
    pub decoder_dim: usize,
    /// ImageNet MiT weights in the official (NVlabs SegFormer / mmseg) key layout, `.pth`;
    /// empty = train from scratch. The encoder is loaded, the decoder keeps its initialisation.
    pub pretrained: std::path::PathBuf,
}

impl Default for SegFormerConfig {
    fn default() -> Self {
        SegFormerConfig {
            dims: [32, 64, 160, 256],
            depths: [2, 2, 2, 2],
            heads: [1, 2, 5, 8],
            sr_ratios: [8, 4, 2, 1],
            mlp_ratio: 4,
            decoder_dim: 256,
            pretrained: std::path::PathBuf::new(),
        }
    }
}

/// `[B, C, H, W]` → `[B, H·W, C]`.
fn to_tokens<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    ops::swap_dims(x.flatten::<3>(2, 3), 1, 2)
}

/// `[B, H·W, C]` → `[B, C, H, W]`.
fn to_map<B: Backend>(x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 4> {
    let [b, _, c] = x.dims();
    ops::swap_dims(x, 1, 2).reshape([b, c, h, w])
}

/// Efficient self-attention: keys and values from the map reduced by a `sr × sr` stride-`sr`
/// convolution (+ LayerNorm).
#[derive(Module, Debug)]
pub struct EfficientAttention<B: Backend> {
    q: Linear<B>,
    kv: Linear<B>,
    proj: Linear<B>,
    sr: Option<(Conv2d<B>, LayerNorm<B>)>,
    heads: usize,
}

impl<B: Backend> EfficientAttention<B> {
    fn new(dim: usize, heads: usize, sr: usize, d: &B::Device) -> Self {
        EfficientAttention {
            q: LinearConfig::new(dim, dim).init(d),
            kv: LinearConfig::new(dim, 2 * dim).init(d),
            proj: LinearConfig::new(dim, dim).init(d),
            sr: (sr > 1).then(|| {
                (
                    Conv2dConfig::new([dim, dim], [sr, sr])
                        .with_stride([sr, sr])
                        .init(d),
                    LayerNormConfig::new(dim).init(d),
                )
            }),
            heads,
        }
    }

    /// # Shapes
    /// `x`: `[B, H·W, C]` → `[B, H·W, C]`.
    fn forward(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 3> {
        let [b, n, c] = x.dims();
        let hd = c / self.heads;
        let q = ops::swap_dims(
            ops::linear(&self.q, x.clone()).reshape([b, n, self.heads, hd]),
            1,
            2,
        ); // [B, heads, N, hd]
        let kv_in = match &self.sr {
            Some((conv, norm)) => {
                ops::layer_norm(norm, to_tokens(ops::conv2d(conv, to_map(x, h, w))))
            }
            None => x,
        };
        let m = kv_in.dims()[1];
        let kv = ops::permute(
            ops::linear(&self.kv, kv_in).reshape([b, m, 2, self.heads, hd]),
            [2, 0, 3, 1, 4],
        ); // [2, B, heads, M, hd]
        let k = kv.clone().narrow(0, 0, 1).reshape([b, self.heads, m, hd]);
        let v = kv.narrow(0, 1, 1).reshape([b, self.heads, m, hd]);
        let attn = ops::softmax(
            ops::matmul(q * (hd as f64).powf(-0.5), k.swap_dims(2, 3)),
            3,
        );
        ops::linear(
            &self.proj,
            ops::swap_dims(ops::matmul(attn, v), 1, 2).reshape([b, n, c]),
        )
    }
}

/// Mix-FFN: linear, 3×3 depthwise conv on the map, GELU, linear.
#[derive(Module, Debug)]
pub struct MixFfn<B: Backend> {
    fc1: Linear<B>,
    dwconv: Conv2d<B>,
    fc2: Linear<B>,
}

impl<B: Backend> MixFfn<B> {
    fn new(dim: usize, hidden: usize, d: &B::Device) -> Self {
        MixFfn {
            fc1: LinearConfig::new(dim, hidden).init(d),
            dwconv: Conv2dConfig::new([hidden, hidden], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_groups(hidden)
                .init(d),
            fc2: LinearConfig::new(hidden, dim).init(d),
        }
    }

    fn forward(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 3> {
        let x = ops::linear(&self.fc1, x);
        let x = to_tokens(ops::conv2d(&self.dwconv, to_map(x, h, w)));
        ops::linear(&self.fc2, ops::gelu(x))
    }
}

#[derive(Module, Debug)]
pub struct MitBlock<B: Backend> {
    norm1: LayerNorm<B>,
    attn: EfficientAttention<B>,
    norm2: LayerNorm<B>,
    ffn: MixFfn<B>,
}

impl<B: Backend> MitBlock<B> {
    fn forward(&self, x: Tensor<B, 3>, h: usize, w: usize) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(ops::layer_norm(&self.norm1, x), h, w);
        x.clone() + self.ffn.forward(ops::layer_norm(&self.norm2, x), h, w)
    }
}

/// One encoder stage: overlapping patch embedding, blocks, LayerNorm.
#[derive(Module, Debug)]
pub struct MitStage<B: Backend> {
    embed: Conv2d<B>,
    embed_norm: LayerNorm<B>,
    blocks: Vec<MitBlock<B>>,
    norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct SegFormer<B: Backend> {
    stages: Vec<MitStage<B>>,
    /// Per-stage projection to the decoder width.
    project: Vec<Linear<B>>,
    fuse: Conv2d<B>,
    fuse_norm: ops::BatchNorm2d<B>,
    head: Conv2d<B>,
}

/// Official MiT keys → ctrcl's: `patch_embed{n}.proj/norm`, `block{n}.{j}.{norm1, attn.{q, kv,
/// proj, sr, norm}, norm2, mlp.{fc1, dwconv.dwconv, fc2}}`, `norm{n}` (stage n = 1..4), and the
/// ImageNet classifier `head` (kept apart from the segmentation head of the same name).
fn mit_key_map() -> Vec<(String, String)> {
    let mut rules = vec![(r"^head\.".to_string(), "imagenet_classifier.".to_string())];
    for n in 1..=4 {
        let i = n - 1;
        let s = format!("stages.{i}");
        rules.extend([
            (format!(r"^patch_embed{n}\.proj\."), format!("{s}.embed.")),
            (
                format!(r"^patch_embed{n}\.norm\."),
                format!("{s}.embed_norm."),
            ),
            (
                format!(r"^block{n}\.(\d+)\.mlp\.dwconv\.dwconv\."),
                format!("{s}.blocks.${{1}}.ffn.dwconv."),
            ),
            (
                format!(r"^block{n}\.(\d+)\.mlp\."),
                format!("{s}.blocks.${{1}}.ffn."),
            ),
            (
                format!(r"^block{n}\.(\d+)\.attn\.sr\."),
                format!("{s}.blocks.${{1}}.attn.sr.0."),
            ),
            (
                format!(r"^block{n}\.(\d+)\.attn\.norm\."),
                format!("{s}.blocks.${{1}}.attn.sr.1."),
            ),
            (format!(r"^block{n}\."), format!("{s}.blocks.")),
            (format!(r"^norm{n}\."), format!("{s}.norm.")),
        ]);
    }
    // LayerNorm parameters: PyTorch's weight/bias are Burn's gamma/beta.
    rules.push((
        r"\.(norm\d?|embed_norm|sr\.1)\.weight$".into(),
        ".${1}.gamma".into(),
    ));
    rules.push((
        r"\.(norm\d?|embed_norm|sr\.1)\.bias$".into(),
        ".${1}.beta".into(),
    ));
    rules
}

impl SegFormerConfig {
    /// A SegFormer whose MiT encoder holds the weights of an official-layout checkpoint (at the
    /// root, or under `model`/`state_dict`); a grey input's stem sums the RGB filters (the same
    /// as repeating the grey image on three channels).
    pub fn init_pretrained<B: Backend>(
        &self,
        path: &std::path::Path,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Result<(SegFormer<B>, crate::ImportReport), ModelError> {
        crate::import::check_rgb_stem(in_channels)?;
        let rules = mit_key_map();
        let refs: Vec<(&str, &str)> = rules
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let (mut net, report) =
            crate::import::load_pytorch(self.init::<B>(3, num_classes, device), path, &refs)?;
        if in_channels == 1 {
            net.stages[0].embed.weight = crate::import::grey_stem(&net.stages[0].embed.weight);
        }
        Ok((net, report))
    }

    pub fn validate(&self, image_size: usize) -> Result<(), ModelError> {
        if self.dims.contains(&0) || self.heads.contains(&0) || self.sr_ratios.contains(&0) {
            return Err(ModelError::Config(
                "segformer.dims, .heads and .sr_ratios must be positive".into(),
            ));
        }
        if let Some(i) = (0..4).find(|&i| !self.dims[i].is_multiple_of(self.heads[i])) {
            return Err(ModelError::Config(format!(
                "segformer: stage {} width {} is not divisible by its {} heads",
                i + 1,
                self.dims[i],
                self.heads[i]
            )));
        }
        if image_size == 0 || !image_size.is_multiple_of(32) {
            return Err(ModelError::Config(format!(
                "segformer needs an image size divisible by 32 (stride-32 encoder); got {image_size}"
            )));
        }
        if let Some(i) =
            (0..4).find(|&i| !(image_size >> (2 + i)).is_multiple_of(self.sr_ratios[i]))
        {
            return Err(ModelError::Config(format!(
                "segformer: stage {} grid {} is not divisible by its spatial reduction {}",
                i + 1,
                image_size >> (2 + i),
                self.sr_ratios[i]
            )));
        }
        Ok(())
    }

    pub fn init<B: Backend>(
        &self,
        in_channels: usize,
        num_classes: usize,
        d: &B::Device,
    ) -> SegFormer<B> {
        let mut stages = Vec::with_capacity(4);
        let mut cin = in_channels;
        for i in 0..4 {
            let (k, s) = if i == 0 { (7, 4) } else { (3, 2) };
            let dim = self.dims[i];
            stages.push(MitStage {
                embed: Conv2dConfig::new([cin, dim], [k, k])
                    .with_stride([s, s])
                    .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
                    .init(d),
                embed_norm: LayerNormConfig::new(dim).init(d),
                blocks: (0..self.depths[i])
                    .map(|_| MitBlock {
                        norm1: LayerNormConfig::new(dim).init(d),
                        attn: EfficientAttention::new(dim, self.heads[i], self.sr_ratios[i], d),
                        norm2: LayerNormConfig::new(dim).init(d),
                        ffn: MixFfn::new(dim, self.mlp_ratio * dim, d),
                    })
                    .collect(),
                norm: LayerNormConfig::new(dim).init(d),
            });
            cin = dim;
        }
        let e = self.decoder_dim;
        SegFormer {
            stages,
            project: self
                .dims
                .iter()
                .map(|&c| LinearConfig::new(c, e).init(d))
                .collect(),
            fuse: Conv2dConfig::new([4 * e, e], [1, 1])
                .with_bias(false)
                .init(d),
            fuse_norm: ops::BatchNorm2dConfig::new(e).init(d),
            head: Conv2dConfig::new([e, num_classes], [1, 1]).init(d),
        }
    }

    /// Channels of the feature taps by stride: 16, 8, 4 → the decoder width.
    pub fn tap_channels(&self) -> Vec<(usize, usize)> {
        vec![
            (16, self.decoder_dim),
            (8, self.decoder_dim),
            (4, self.decoder_dim),
        ]
    }

    /// Multiply-adds of one forward pass per image (see [`crate::ModelSizes::forward_macs`]).
    pub fn forward_macs(&self, image_size: usize, in_channels: usize, num_classes: usize) -> f64 {
        let mut macs = 0.0;
        let mut cin = in_channels as f64;
        for i in 0..4 {
            let side = image_size >> (2 + i);
            let n = (side * side) as f64;
            let d = self.dims[i] as f64;
            let k = if i == 0 { 7.0 } else { 3.0 };
            macs += k * k * cin * d * n; // overlapping patch embedding
            let sr = self.sr_ratios[i];
            let m = ((side / sr) * (side / sr)) as f64;
            let hidden = (self.mlp_ratio * self.dims[i]) as f64;
            let block = n * d * d // q
                + if sr > 1 { (sr * sr) as f64 * d * d * m } else { 0.0 } // reduction conv
                + m * d * 2.0 * d // kv
                + 2.0 * n * m * d // QKᵀ and AV
                + n * d * d // proj
                + n * d * hidden * 2.0 // fc1, fc2
                + 9.0 * hidden * n; // depthwise 3×3
            macs += self.depths[i] as f64 * block;
            cin = d;
        }
        let e = self.decoder_dim as f64;
        for i in 0..4 {
            let side = image_size >> (2 + i);
            macs += (side * side) as f64 * self.dims[i] as f64 * e;
        }
        let quarter = ((image_size / 4) * (image_size / 4)) as f64;
        macs + quarter * (4.0 * e * e + e * num_classes as f64)
    }
}

impl<B: Backend> SegFormer<B> {
    /// The MiT encoder's stage outputs (after each stage's LayerNorm) as maps.
    ///
    /// # Shapes
    /// `x`: `[B, Cin, H, W]` → `[B, dims[i], H/2^(i+2), W/2^(i+2)]` for i = 0..4.
    pub fn encode(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut map = x;
        let mut out = Vec::with_capacity(4);
        for stage in &self.stages {
            let e = ops::conv2d(&stage.embed, map);
            let [_, _, sh, sw] = e.dims();
            let mut t = ops::layer_norm(&stage.embed_norm, to_tokens(e));
            for block in &stage.blocks {
                t = block.forward(t, sh, sw);
            }
            map = to_map(ops::layer_norm(&stage.norm, t), sh, sw);
            out.push(map.clone());
        }
        out
    }

    /// # Shapes
    /// `x`: `[B, Cin, H, W]` → logits `[B, K, H, W]`; features at strides 16, 8, 4 with the
    /// decoder width.
    pub fn forward(&self, x: Tensor<B, 4>) -> SegOutput<B> {
        let [_, _, h, w] = x.dims();
        let projected: Vec<Tensor<B, 4>> = self
            .encode(x)
            .into_iter()
            .zip(&self.project)
            .map(|(map, project)| {
                let [_, _, sh, sw] = map.dims();
                to_map(ops::linear(project, to_tokens(map)), sh, sw)
            })
            .collect();
        let (qh, qw) = (h / 4, w / 4);
        let features = [2usize, 1, 0]
            .iter()
            .map(|&i| (4 << i, projected[i].clone()))
            .collect();
        // Deepest first, as the reference implementation concatenates.
        let up: Vec<Tensor<B, 4>> = projected
            .into_iter()
            .rev()
            .map(|p| {
                if p.dims()[2] == qh {
                    p
                } else {
                    ops::resize_bilinear(p, [qh, qw])
                }
            })
            .collect();
        let fused = ops::relu(
            self.fuse_norm
                .forward(ops::conv2d(&self.fuse, ops::cat(up, 1))),
        );
        let logits = ops::resize_bilinear(ops::conv2d(&self.head, fused), [h, w]);
        SegOutput { logits, features }
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;
    use crate::test_backend::{Fixture, TestBackend};

    /// scripts/reference/mit_fixture.py: bench/pytorch's SegFormer twin, its encoder saved in the
    /// official MiT key layout, and its stage outputs for a grey input repeated on RGB. Matching
    /// them (1e-4, f32 noise through two to three blocks) checks the key map, the grey-stem
    /// adaptation and that ctrcl's MiT computes what PyTorch's does.
    #[test]
    fn official_mit_weights_reproduce_pytorch_stage_outputs() {
        official_mit_weights_reproduce_pytorch_stage_outputs_from("mit_tiny.pth");
    }

    /// The same tensors as `.safetensors` (scripts/reference/pth_to_safetensors.py): the same
    /// import report and the same PyTorch outputs.
    #[test]
    fn official_mit_safetensors_weights_reproduce_pytorch_stage_outputs() {
        official_mit_weights_reproduce_pytorch_stage_outputs_from("mit_tiny.safetensors");
    }

    fn official_mit_weights_reproduce_pytorch_stage_outputs_from(file: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let f = Fixture::load("mit_tiny");
        let (arr, floats) = (|k: &str| f.ints(k), |k: &str| f.floats(k));
        let four = |k: &str| {
            let v = arr(k);
            [v[0], v[1], v[2], v[3]]
        };
        let cfg = SegFormerConfig {
            dims: four("dims"),
            depths: four("depths"),
            heads: four("heads"),
            sr_ratios: four("sr"),
            decoder_dim: 16,
            ..Default::default()
        };
        let size = f.int("size");
        let device = Default::default();
        let (net, report) = cfg
            .init_pretrained::<TestBackend>(&dir.join(file), 1, 4, &device)
            .unwrap();
        let keys = f.keys();
        assert_eq!(report.loaded.len(), keys - 2, "all but head.*: {report:?}");
        assert_eq!(report.unexpected.len(), 2, "{:?}", report.unexpected);
        assert!(
            report.missing.iter().all(|k| !k.starts_with("stages")),
            "{:?}",
            report.missing
        );
        let x = Tensor::<TestBackend, 4>::from_data(
            TensorData::new(floats("input"), [1, 1, size, size]),
            &device,
        );
        let stages = net.encode(x);
        for (got, key) in [(stages[1].clone(), "stage2"), (stages[3].clone(), "stage4")] {
            assert_eq!(got.dims().to_vec(), arr(&format!("{key}_shape")));
            let got: Vec<f32> = got.into_data().to_vec().unwrap();
            for (g, w) in got.iter().zip(floats(key)) {
                assert!((g - w).abs() < 1e-4, "{key}: {g} vs {w}");
            }
        }
    }
}

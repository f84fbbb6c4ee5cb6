//! Swin-Unet (Cao et al. 2021) as METHOD.md §2 specifies: a Swin-T-style encoder (patch 4,
//! patch merging), a symmetric decoder with patch expanding and linear skip fusion, a final ×4
//! expand and a 1×1 head. Feature taps: decoder outputs at 1/16, 1/8 and 1/4.
//!
//! Input sizes: the token grid of every stage (H/4 … H/32) must be tiled by the window, or be no
//! larger than it (then the window is clamped to the grid and not shifted, as in Swin). Other
//! sizes are refused with an error that lists the nearest valid ones.

use crate::ops;
use crate::swin::{PatchExpand, PatchMerging, SwinBlock};
use crate::{ModelError, SegOutput};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Sizes of a Swin-Unet (defaults: Swin-T).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwinUnetConfig {
    pub patch_size: usize,
    pub embed_dim: usize,
    /// Blocks per encoder stage (strides 4, 8, 16, 32).
    pub depths: [usize; 4],
    /// Blocks per decoder stage at strides 16, 8, 4 (Swin-Unet mirrors the encoder).
    pub decoder_depths: [usize; 3],
    /// Attention heads per stage (strides 4, 8, 16, 32); the decoder reuses them per stride.
    pub heads: [usize; 4],
    pub window: usize,
    pub mlp_ratio: f64,
    /// Largest stochastic-depth rate (linearly increasing over the encoder blocks).
    pub drop_path: f64,
    /// An official-layout Swin Transformer checkpoint (`.pth`, e.g. swin_tiny_patch4_window7_224)
    /// whose weights initialise the encoder of a new training run; empty: none.
    pub pretrained: std::path::PathBuf,
}

impl Default for SwinUnetConfig {
    fn default() -> Self {
        SwinUnetConfig {
            patch_size: 4,
            embed_dim: 96,
            depths: [2, 2, 2, 2],
            decoder_depths: [2, 2, 2],
            heads: [3, 6, 12, 24],
            window: 7,
            mlp_ratio: 4.0,
            drop_path: 0.2,
            pretrained: Default::default(),
        }
    }
}

/// Encoder stage: blocks, then (except the last) patch merging.
#[derive(Module, Debug)]
pub struct EncoderStage<B: Backend> {
    blocks: Vec<SwinBlock<B>>,
    merge: Option<PatchMerging<B>>,
}

/// Decoder stage: skip fusion (linear 2C → C), blocks, then (except the last) patch expanding.
#[derive(Module, Debug)]
pub struct DecoderStage<B: Backend> {
    fuse: Linear<B>,
    blocks: Vec<SwinBlock<B>>,
    expand: Option<PatchExpand<B>>,
}

/// The Swin-Unet student.
#[derive(Module, Debug)]
pub struct SwinUnet<B: Backend> {
    patch_embed: Conv2d<B>,
    patch_norm: LayerNorm<B>,
    encoder: Vec<EncoderStage<B>>,
    norm: LayerNorm<B>,
    bottleneck_expand: PatchExpand<B>,
    decoder: Vec<DecoderStage<B>>,
    norm_up: LayerNorm<B>,
    final_expand: PatchExpand<B>,
    head: Conv2d<B>,
    /// Token grid side at stride `patch_size`.
    grid: usize,
    patch_size: usize,
}

/// Official Swin Transformer key → ctrcl SwinUnet key (applied in order).
const SWIN_KEY_MAP: [(&str, &str); 8] = [
    // The ImageNet classifier must not land on the segmentation head of the same name.
    (r"^head\.", "imagenet_classifier."),
    (r"^patch_embed\.proj\.", "patch_embed."),
    (r"^patch_embed\.norm\.", "patch_norm."),
    (r"^layers\.(\d+)\.blocks\.", "encoder.${1}.blocks."),
    (r"^layers\.(\d+)\.downsample\.", "encoder.${1}.merge."),
    (r"\.mlp\.fc", ".fc"),
    (r"(^|\.)(norm\d?|patch_norm)\.weight$", "${1}${2}.gamma"),
    (r"(^|\.)(norm\d?|patch_norm)\.bias$", "${1}${2}.beta"),
];

impl SwinUnetConfig {
    /// A SwinUnet whose encoder holds the weights of an official-layout Swin checkpoint (at the
    /// root or under `model`), with an explicit key map; the decoder keeps its initialisation.
    /// Grey inputs are repeated on the RGB stem's three channels, as in `forward`; other channel
    /// counts than 1 and 3 are refused (the ImageNet stem takes RGB).
    pub fn init_pretrained<B: Backend>(
        &self,
        path: &std::path::Path,
        image_size: usize,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Result<(SwinUnet<B>, crate::ImportReport), ModelError> {
        crate::import::check_rgb_stem(in_channels)?;
        crate::import::load_pytorch(
            self.init::<B>(image_size, in_channels, num_classes, device),
            path,
            &SWIN_KEY_MAP,
        )
    }

    /// The window used at a grid side: clamped to the grid when the grid is not larger.
    fn window_at(&self, grid: usize) -> (usize, bool) {
        if grid <= self.window {
            (grid, false)
        } else {
            (self.window, true)
        }
    }

    fn size_is_valid(&self, size: usize) -> bool {
        let scale = self.patch_size * 8;
        size > 0
            && size.is_multiple_of(scale)
            && (0..4).all(|i| {
                let grid = size / (self.patch_size << i);
                grid <= self.window || grid.is_multiple_of(self.window)
            })
    }

    /// Checks the sizes and that `image_size` can be tiled; the error lists valid sizes near it.
    pub fn validate(&self, image_size: usize) -> Result<(), ModelError> {
        if self.patch_size == 0 || self.embed_dim == 0 || self.window == 0 {
            return Err(ModelError::Config(
                "swin: patch_size, embed_dim and window must be positive".into(),
            ));
        }
        for (i, &h) in self.heads.iter().enumerate() {
            let dim = self.embed_dim << i;
            if h == 0 || !dim.is_multiple_of(h) {
                return Err(ModelError::Config(format!(
                    "swin: stage {i} has {dim} channels, not divisible by heads[{i}] = {h}"
                )));
            }
        }
        if !self.size_is_valid(image_size) {
            let below = (1..image_size).rev().find(|s| self.size_is_valid(*s));
            let above = (image_size + 1..image_size * 4 + 1024).find(|s| self.size_is_valid(*s));
            let near: Vec<String> = below
                .into_iter()
                .chain(above)
                .map(|s| s.to_string())
                .collect();
            return Err(ModelError::Config(format!(
                "swin-unet cannot tile image size {image_size} with patch {} and window {}: every \
                 stage grid (size/{}, /{}, /{}, /{}) must be divisible by the window or no larger \
                 than it. Nearest valid sizes: {}",
                self.patch_size,
                self.window,
                self.patch_size,
                self.patch_size * 2,
                self.patch_size * 4,
                self.patch_size * 8,
                near.join(", ")
            )));
        }
        Ok(())
    }

    /// Multiply-adds of one forward pass per image (see [`crate::ModelSizes::forward_macs`]).
    pub fn forward_macs(&self, image_size: usize, num_classes: usize) -> f64 {
        let c = self.embed_dim as f64;
        let grid = image_size / self.patch_size;
        let p = self.patch_size as f64;
        // A Swin block on `g × g` tokens of width `d`: qkv, projection, MLP, and the two
        // window products (QKᵀ, AV) over w² keys per query.
        let block = |g: usize, d: f64| {
            let n = (g * g) as f64;
            let w = self.window_at(g).0 as f64;
            n * (4.0 * d * d + 2.0 * self.mlp_ratio * d * d) + 2.0 * n * w * w * d
        };
        let tokens = |g: usize| (g * g) as f64;
        let mut macs = 3.0 * c * p * p * tokens(grid); // patch embedding
        for stage in 0..4 {
            let (g, d) = (grid >> stage, c * (1 << stage) as f64);
            macs += self.depths[stage] as f64 * block(g, d);
            if stage < 3 {
                macs += tokens(g / 2) * 4.0 * d * 2.0 * d; // patch merging
            }
        }
        macs += tokens(grid >> 3) * 8.0 * c * (4.0 * 4.0 * c); // bottleneck expand: 8C → 4·4C
        for (j, stage) in [2usize, 1, 0].into_iter().enumerate() {
            let (g, d) = (grid >> stage, c * (1 << stage) as f64);
            macs += tokens(g) * 2.0 * d * d; // skip fusion
            macs += self.decoder_depths[j] as f64 * block(g, d);
            if stage > 0 {
                macs += tokens(g) * d * (4.0 * d / 2.0); // patch expand ×2
            }
        }
        macs += tokens(grid) * c * (p * p * c); // final expand ×patch
        macs + (image_size * image_size) as f64 * c * num_classes as f64
    }

    /// Feature-tap channels by stride (patch size p): 4p → 4C, 2p → 2C, p → C.
    pub fn tap_channels(&self) -> Vec<(usize, usize)> {
        let p = self.patch_size;
        vec![
            (4 * p, 4 * self.embed_dim),
            (2 * p, 2 * self.embed_dim),
            (p, self.embed_dim),
        ]
    }

    /// Builds the model for square inputs of `image_size` with `in_channels` channels (call
    /// [`Self::validate`] first). A grey input gets the three-channel stem of Swin's ImageNet
    /// weights (the image is repeated on it, as Swin-Unet does); any other count its own stem.
    pub fn init<B: Backend>(
        &self,
        image_size: usize,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> SwinUnet<B> {
        let stem_channels = if in_channels == 1 { 3 } else { in_channels };
        let c = self.embed_dim;
        let grid = image_size / self.patch_size;
        let total: usize = self.depths.iter().sum();
        let rate = |i: usize| {
            if total > 1 {
                self.drop_path * i as f64 / (total - 1) as f64
            } else {
                0.0
            }
        };
        let stage_blocks = |stage: usize,
                            depth: usize,
                            first_rate_index: usize,
                            device: &B::Device|
         -> Vec<SwinBlock<B>> {
            let g = grid >> stage;
            let (window, shifts) = self.window_at(g);
            (0..depth)
                .map(|j| {
                    let shift = if shifts && j % 2 == 1 { window / 2 } else { 0 };
                    SwinBlock::new(
                        c << stage,
                        self.heads[stage],
                        [g, g],
                        window,
                        shift,
                        self.mlp_ratio,
                        rate(first_rate_index + j),
                        device,
                    )
                })
                .collect()
        };
        let mut encoder = Vec::with_capacity(4);
        let mut first = 0;
        for stage in 0..4 {
            let g = grid >> stage;
            encoder.push(EncoderStage {
                blocks: stage_blocks(stage, self.depths[stage], first, device),
                merge: (stage < 3).then(|| PatchMerging::new(c << stage, [g, g], device)),
            });
            first += self.depths[stage];
        }
        // Decoder stages at strides 4p, 2p, p (p = patch size) = encoder stages 2, 1, 0.
        let mut decoder = Vec::with_capacity(3);
        for (j, stage) in [2usize, 1, 0].into_iter().enumerate() {
            let dim = c << stage;
            let g = grid >> stage;
            let first: usize = self.depths[..stage].iter().sum();
            decoder.push(DecoderStage {
                fuse: LinearConfig::new(2 * dim, dim).init(device),
                blocks: stage_blocks(stage, self.decoder_depths[j], first, device),
                expand: (stage > 0).then(|| PatchExpand::halving(dim, [g, g], device)),
            });
        }
        SwinUnet {
            patch_embed: Conv2dConfig::new([stem_channels, c], [self.patch_size, self.patch_size])
                .with_stride([self.patch_size, self.patch_size])
                .init(device),
            patch_norm: LayerNormConfig::new(c).init(device),
            encoder,
            norm: LayerNormConfig::new(8 * c).init(device),
            bottleneck_expand: PatchExpand::halving(8 * c, [grid >> 3, grid >> 3], device),
            decoder,
            norm_up: LayerNormConfig::new(c).init(device),
            final_expand: PatchExpand::to_pixels(c, [grid, grid], self.patch_size, device),
            head: Conv2dConfig::new([c, num_classes], [1, 1])
                .with_bias(false)
                .init(device),
            grid,
            patch_size: self.patch_size,
        }
    }
}

/// `[B, H·W, C]` tokens → `[B, C, H, W]` map.
fn tokens_to_map<B: Backend>(x: Tensor<B, 3>, side: usize) -> Tensor<B, 4> {
    let [b, _, c] = x.dims();
    ops::swap_dims(x, 1, 2).reshape([b, c, side, side])
}

impl<B: Backend> SwinUnet<B> {
    /// # Shapes
    /// `x`: `[B, Cin, H, H]` → logits `[B, K, H, H]`; features at strides 16, 8, 4 with 4C, 2C, C
    /// channels.
    /// The encoder: the input tokens of each stage (the decoder's skips) and the normalised
    /// bottleneck tokens.
    ///
    /// # Shapes
    /// `x`: `[B, Cin, H, H]` → skips `[B, g²/4^i, 2^i·C]` for i = 0..4, bottleneck
    /// `[B, g²/64, 8C]` (g = H / patch).
    pub fn encode(&self, x: Tensor<B, 4>) -> (Vec<Tensor<B, 3>>, Tensor<B, 3>) {
        let [_, cin, _, _] = x.dims();
        // 1-channel inputs are repeated to the 3 channels the ImageNet stem expects (`init`).
        let x = if cin == 1 { x.repeat_dim(1, 3) } else { x };
        let x = ops::conv2d(&self.patch_embed, x); // [B, C, g, g]
        let mut t = ops::layer_norm(&self.patch_norm, ops::swap_dims(x.flatten::<3>(2, 3), 1, 2));
        let mut skips = Vec::with_capacity(4);
        for stage in &self.encoder {
            skips.push(t.clone());
            for block in &stage.blocks {
                t = block.forward(t);
            }
            if let Some(merge) = &stage.merge {
                t = merge.forward(t);
            }
        }
        (skips, ops::layer_norm(&self.norm, t))
    }

    pub fn forward(&self, x: Tensor<B, 4>) -> SegOutput<B> {
        let h = x.dims()[2];
        let (skips, bottleneck) = self.encode(x);
        let mut t = self.bottleneck_expand.forward(bottleneck);
        let mut features = Vec::with_capacity(3);
        for (j, stage) in self.decoder.iter().enumerate() {
            let skip = skips[2 - j].clone();
            t = ops::linear(&stage.fuse, ops::cat(vec![t, skip], 2));
            for block in &stage.blocks {
                t = block.forward(t);
            }
            let side = self.grid >> (2 - j);
            features.push(((4 * self.patch_size) >> j, tokens_to_map(t.clone(), side)));
            if let Some(expand) = &stage.expand {
                t = expand.forward(t);
            }
        }
        let t = self.final_expand.forward(ops::layer_norm(&self.norm_up, t));
        let logits = ops::conv2d(&self.head, tokens_to_map(t, h));
        SegOutput { logits, features }
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;
    use crate::test_backend::{Fixture, TestBackend};

    /// scripts/reference/swin_fixture.py: bench/pytorch's SwinUnet twin, its encoder saved in
    /// the official Swin key layout under "model", and its encoder outputs for a fixed input.
    /// Matching them checks the key map *and* that ctrcl's Swin blocks compute what PyTorch's do
    /// (shifted windows with masks, relative position bias, patch merging order).
    #[test]
    fn official_swin_weights_reproduce_pytorch_encoder_outputs() {
        official_swin_weights_reproduce_pytorch_encoder_outputs_from("swin_tiny.pth");
    }

    /// The same tensors as `.safetensors` (scripts/reference/pth_to_safetensors.py): the same
    /// import report and the same PyTorch outputs.
    #[test]
    fn official_swin_safetensors_weights_reproduce_pytorch_encoder_outputs() {
        official_swin_weights_reproduce_pytorch_encoder_outputs_from("swin_tiny.safetensors");
    }

    fn official_swin_weights_reproduce_pytorch_encoder_outputs_from(file: &str) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let f = Fixture::load("swin_tiny");
        let (n, arr, floats) = (
            |k: &str| f.int(k),
            |k: &str| f.ints(k),
            |k: &str| f.floats(k),
        );
        let (d, h) = (arr("depths"), arr("heads"));
        let cfg = SwinUnetConfig {
            embed_dim: n("embed"),
            depths: [d[0], d[1], d[2], d[3]],
            heads: [h[0], h[1], h[2], h[3]],
            window: n("window"),
            ..Default::default()
        };
        let size = n("size");
        let device = Default::default();
        let (net, report) = cfg
            .init_pretrained::<TestBackend>(&dir.join(file), size, 1, 3, &device)
            .unwrap();
        let keys = f.keys();
        assert_eq!(report.loaded.len(), keys - 2, "all but head.*: {report:?}");
        assert_eq!(report.unexpected.len(), 2, "{:?}", report.unexpected);
        assert!(
            report.missing.iter().all(|k| !k.starts_with("encoder")),
            "{:?}",
            report.missing
        );
        let x = Tensor::<TestBackend, 4>::from_data(
            TensorData::new(floats("input"), [1, 1, size, size]),
            &device,
        );
        let (skips, bottleneck) = net.encode(x);
        for (got, key) in [(skips[1].clone(), "skip1"), (bottleneck, "bottleneck")] {
            assert_eq!(got.dims().to_vec(), arr(&format!("{key}_shape")));
            let got: Vec<f32> = got.into_data().to_vec().unwrap();
            for (g, w) in got.iter().zip(floats(key)) {
                assert!((g - w).abs() < 1e-4, "{key}: {g} vs {w}");
            }
        }
    }
}
#[cfg(test)]
mod roll_convention {
    use crate::test_backend::TestBackend;
    use burn::prelude::*;

    /// The shifted windows rely on Burn's `roll` direction being the opposite of `torch.roll`'s
    /// (torch.roll([0, 1, 2, 3], 1) = [3, 0, 1, 2]); if Burn changes it, SwinBlock must too.
    #[test]
    fn burn_roll_is_opposite_to_torch_roll() {
        let t = Tensor::<TestBackend, 1>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 3.0], [4]),
            &Default::default(),
        );
        let v: Vec<f32> = t.roll(&[1], &[0]).into_data().to_vec().unwrap();
        assert_eq!(v, vec![1.0, 2.0, 3.0, 0.0]);
    }
}

//! ResUNet: a ResNet-34-style encoder (7×7 stride-2 stem, 3×3 max-pool, basic residual blocks
//! [3, 4, 6, 3] at strides 4, 8, 16, 32) with a U-Net decoder (2× transposed-conv up, skip
//! concatenation, two 3×3 conv + BatchNorm + ReLU) back to the input size (METHOD.md §2's "any CNN"
//! slot). Feature taps: decoder outputs at strides 8, 4 and 2, like the U-Net's, so the pair's
//! CFCL taps carry over. Layer names follow torchvision's ResNet where weights would be imported.

use crate::ops;
use crate::{ImportReport, ModelError, SegOutput};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// torchvision ResNet key → ctrcl ResUnet key (applied in order; `layerN` → `layers.N−1`,
/// BatchNorm `weight`/`bias` → `gamma`/`beta`).
const TORCHVISION_KEY_MAP: [(&str, &str); 8] = [
    (r"^layer1\.", "layers.0."),
    (r"^layer2\.", "layers.1."),
    (r"^layer3\.", "layers.2."),
    (r"^layer4\.", "layers.3."),
    (r"(^|\.)(bn\d)\.weight$", "${1}${2}.gamma"),
    (r"(^|\.)(bn\d)\.bias$", "${1}${2}.beta"),
    (r"downsample\.1\.weight$", "downsample.1.gamma"),
    (r"downsample\.1\.bias$", "downsample.1.beta"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResUnetConfig {
    /// Stem width, then the widths of the four residual stages (ResNet-34: 64, 64, 128, 256, 512).
    pub channels: [usize; 5],
    /// Basic blocks per residual stage (ResNet-34: 3, 4, 6, 3).
    pub blocks: [usize; 4],
    /// Decoder widths at strides 16, 8, 4, 2, 1.
    pub decoder: [usize; 5],
    /// A torchvision-layout ResNet state dict (`.pth`, e.g. ImageNet ResNet-34) whose weights
    /// initialise the encoder of a new training run; empty: none.
    pub pretrained: std::path::PathBuf,
}

impl Default for ResUnetConfig {
    fn default() -> Self {
        ResUnetConfig {
            channels: [64, 64, 128, 256, 512],
            blocks: [3, 4, 6, 3],
            decoder: [256, 128, 64, 32, 16],
            pretrained: Default::default(),
        }
    }
}

fn conv<B: Backend>(cin: usize, cout: usize, k: usize, stride: usize, d: &B::Device) -> Conv2d<B> {
    let p = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
        .with_bias(false)
        .init(d)
}

/// ResNet basic block: two 3×3 convs with BatchNorm, identity or 1×1-projection shortcut.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    conv1: Conv2d<B>,
    bn1: ops::BatchNorm2d<B>,
    conv2: Conv2d<B>,
    bn2: ops::BatchNorm2d<B>,
    downsample: Option<(Conv2d<B>, ops::BatchNorm2d<B>)>,
}

impl<B: Backend> BasicBlock<B> {
    fn new(cin: usize, cout: usize, stride: usize, d: &B::Device) -> Self {
        BasicBlock {
            conv1: conv(cin, cout, 3, stride, d),
            bn1: ops::BatchNorm2dConfig::new(cout).init(d),
            conv2: conv(cout, cout, 3, 1, d),
            bn2: ops::BatchNorm2dConfig::new(cout).init(d),
            downsample: (stride != 1 || cin != cout).then(|| {
                (
                    conv(cin, cout, 1, stride, d),
                    ops::BatchNorm2dConfig::new(cout).init(d),
                )
            }),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let h = ops::relu(self.bn1.forward(ops::conv2d(&self.conv1, x.clone())));
        let h = self.bn2.forward(ops::conv2d(&self.conv2, h));
        let shortcut = match &self.downsample {
            Some((c, bn)) => bn.forward(ops::conv2d(c, x)),
            None => x,
        };
        ops::relu(h + shortcut)
    }
}

/// Decoder step: 2× transposed-conv up, concatenation with the skip, two conv + BN + ReLU.
#[derive(Module, Debug)]
pub struct DecoderBlock<B: Backend> {
    up: ConvTranspose2d<B>,
    conv1: Conv2d<B>,
    bn1: ops::BatchNorm2d<B>,
    conv2: Conv2d<B>,
    bn2: ops::BatchNorm2d<B>,
}

impl<B: Backend> DecoderBlock<B> {
    fn new(c_deep: usize, c_skip: usize, cout: usize, d: &B::Device) -> Self {
        DecoderBlock {
            up: ConvTranspose2dConfig::new([c_deep, cout], [2, 2])
                .with_stride([2, 2])
                .init(d),
            conv1: conv(cout + c_skip, cout, 3, 1, d),
            bn1: ops::BatchNorm2dConfig::new(cout).init(d),
            conv2: conv(cout, cout, 3, 1, d),
            bn2: ops::BatchNorm2dConfig::new(cout).init(d),
        }
    }

    fn forward(&self, deep: Tensor<B, 4>, skip: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        let up = ops::conv_transpose2d(&self.up, deep);
        let h = match skip {
            Some(s) => ops::cat(vec![up, s], 1),
            None => up,
        };
        let h = ops::relu(self.bn1.forward(ops::conv2d(&self.conv1, h)));
        ops::relu(self.bn2.forward(ops::conv2d(&self.conv2, h)))
    }
}

#[derive(Module, Debug)]
pub struct ResUnet<B: Backend> {
    /// Stem convolution (public so a checkpoint's RGB stem can be adapted to grey inputs).
    pub conv1: Conv2d<B>,
    bn1: ops::BatchNorm2d<B>,
    maxpool: MaxPool2d,
    layers: Vec<Vec<BasicBlock<B>>>,
    decoder: Vec<DecoderBlock<B>>,
    head: Conv2d<B>,
}

impl ResUnetConfig {
    pub fn validate(&self, image_size: usize) -> Result<(), ModelError> {
        if self.channels.contains(&0) || self.decoder.contains(&0) || self.blocks.contains(&0) {
            return Err(ModelError::Config(
                "resunet.channels, .blocks and .decoder must all be positive".into(),
            ));
        }
        if image_size == 0 || !image_size.is_multiple_of(32) {
            return Err(ModelError::Config(format!(
                "resunet needs an image size divisible by 32 (stride-32 encoder); got {image_size}"
            )));
        }
        Ok(())
    }

    pub fn init<B: Backend>(
        &self,
        in_channels: usize,
        num_classes: usize,
        d: &B::Device,
    ) -> ResUnet<B> {
        let c = self.channels;
        let mut layers = Vec::with_capacity(4);
        let mut cin = c[0];
        for stage in 0..4 {
            let stride = if stage == 0 { 1 } else { 2 };
            let blocks = (0..self.blocks[stage])
                .map(|i| {
                    let b = BasicBlock::new(cin, c[stage + 1], if i == 0 { stride } else { 1 }, d);
                    cin = c[stage + 1];
                    b
                })
                .collect();
            layers.push(blocks);
        }
        // Skips at strides 16, 8, 4, 2 (stage 3, 2, 1 outputs and the stem); none at stride 1.
        let skips = [c[3], c[2], c[1], c[0], 0];
        let mut deep = c[4];
        let decoder = (0..5)
            .map(|j| {
                let b = DecoderBlock::new(deep, skips[j], self.decoder[j], d);
                deep = self.decoder[j];
                b
            })
            .collect();
        ResUnet {
            conv1: Conv2dConfig::new([in_channels, c[0]], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .init(d),
            bn1: ops::BatchNorm2dConfig::new(c[0]).init(d),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layers,
            decoder,
            head: Conv2dConfig::new([self.decoder[4], num_classes], [1, 1]).init(d),
        }
    }

    /// Channels of the feature taps by stride (decoder outputs): 8, 4, 2.
    pub fn tap_channels(&self) -> Vec<(usize, usize)> {
        vec![
            (8, self.decoder[1]),
            (4, self.decoder[2]),
            (2, self.decoder[3]),
        ]
    }

    /// Multiply-adds of one forward pass per image (see [`crate::ModelSizes::forward_macs`]).
    pub fn forward_macs(&self, image_size: usize, in_channels: usize, num_classes: usize) -> f64 {
        let c = self.channels.map(|v| v as f64);
        let area = |stride: usize| ((image_size / stride) * (image_size / stride)) as f64;
        let mut macs = 49.0 * in_channels as f64 * c[0] * area(2);
        let mut cin = c[0];
        for stage in 0..4 {
            let stride = 4 << stage;
            let cout = c[stage + 1];
            for i in 0..self.blocks[stage] {
                macs += 9.0 * (cin * cout + cout * cout) * area(stride);
                if i == 0 && (stage > 0 || cin != cout) {
                    macs += cin * cout * area(stride);
                }
                cin = cout;
            }
        }
        let skips = [c[3], c[2], c[1], c[0], 0.0];
        let mut deep = c[4];
        for (j, (&width, skip)) in self.decoder.iter().zip(skips).enumerate() {
            let out = width as f64;
            let stride = 16 >> j;
            // 2×2 stride-2 transposed conv: one input pixel feeds four output pixels.
            macs += deep * out * area(stride);
            macs += 9.0 * ((out + skip) * out + out * out) * area(stride);
            deep = out;
        }
        macs + deep * num_classes as f64 * area(1)
    }
}

impl ResUnetConfig {
    /// A ResUnet whose encoder holds the weights of a torchvision-layout ResNet state dict
    /// (`.pth`: `conv1`, `bn1`, `layer1`…`layer4` of BasicBlocks, `fc` ignored), with an explicit
    /// key map. For `in_channels = 1` the RGB stem is summed over its input channels — the
    /// network then sees a grey image as the RGB network sees it repeated on R, G and B. The
    /// decoder and head keep their initialisation.
    pub fn init_pretrained<B: Backend>(
        &self,
        path: &Path,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Result<(ResUnet<B>, ImportReport), ModelError> {
        crate::import::check_rgb_stem(in_channels)?;
        let (mut net, report) = crate::import::load_pytorch(
            self.init::<B>(3, num_classes, device),
            path,
            &TORCHVISION_KEY_MAP,
        )?;
        if in_channels == 1 {
            net.conv1.weight = crate::import::grey_stem(&net.conv1.weight);
        }
        Ok((net, report))
    }
}

impl<B: Backend> ResUnet<B> {
    /// Encoder outputs: the stem (stride 2) and the four residual stages (strides 4 … 32).
    ///
    /// # Shapes
    /// `x`: `[B, Cin, H, W]` → `[B, c[0], H/2, W/2]`, then `[B, c[i+1], H/2^(i+2), …]`.
    pub fn encode(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let stem = ops::relu(self.bn1.forward(ops::conv2d(&self.conv1, x)));
        let mut h = ops::max_pool2d(&self.maxpool, stem.clone());
        let mut out = vec![stem];
        for stage in &self.layers {
            for block in stage {
                h = block.forward(h);
            }
            out.push(h.clone());
        }
        out
    }

    /// # Shapes
    /// `x`: `[B, Cin, H, W]` → logits `[B, K, H, W]`; features at strides 8, 4, 2 with
    /// `decoder[1]`, `decoder[2]`, `decoder[3]` channels.
    pub fn forward(&self, x: Tensor<B, 4>) -> SegOutput<B> {
        let mut skips = self.encode(x); // strides 2, 4, 8, 16, 32
        let mut h = skips.pop().expect("four stages");
        let mut features = Vec::with_capacity(3);
        for (j, block) in self.decoder.iter().enumerate() {
            h = block.forward(h, skips.pop());
            let stride = 16 >> j;
            if (2..=8).contains(&stride) {
                features.push((stride, h.clone()));
            }
        }
        SegOutput {
            logits: ops::conv2d(&self.head, h),
            features,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::TestBackend;

    /// scripts/reference/resnet_fixture.py: a tiny torchvision-layout ResNet saved with
    /// torch.save, and its encoder output in eval mode for a fixed grey input repeated on RGB.
    #[test]
    fn torchvision_weights_reproduce_pytorch_encoder_outputs() {
        torchvision_weights_reproduce_pytorch_encoder_outputs_from("resnet_tiny.pth");
    }

    /// The same tensors as `.safetensors` (scripts/reference/pth_to_safetensors.py): the same
    /// import report and the same PyTorch outputs.
    #[test]
    fn torchvision_safetensors_weights_reproduce_pytorch_encoder_outputs() {
        torchvision_weights_reproduce_pytorch_encoder_outputs_from("resnet_tiny.safetensors");
    }

    fn torchvision_weights_reproduce_pytorch_encoder_outputs_from(file: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let fixture = crate::test_backend::Fixture::load("resnet_tiny");
        let (ints, floats) = (|k: &str| fixture.ints(k), |k: &str| fixture.floats(k));
        let (w, b) = (ints("widths"), ints("blocks"));
        let cfg = ResUnetConfig {
            channels: [w[0], w[1], w[2], w[3], w[4]],
            blocks: [b[0], b[1], b[2], b[3]],
            decoder: [8, 8, 8, 4, 4],
            ..Default::default()
        };
        let device = Default::default();
        let (net, report) = cfg
            .init_pretrained::<TestBackend>(&dir.join(file), 1, 3, &device)
            .unwrap();
        // Every encoder tensor came from the file; the classifier and the BatchNorm counters
        // are reported unused; the decoder was not in the file.
        let n_keys = fixture.keys();
        let unused_expected = fixture.0["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| {
                let k = k.as_str().unwrap();
                k.starts_with("fc.") || k.ends_with("num_batches_tracked")
            })
            .count();
        assert_eq!(report.loaded.len(), n_keys - unused_expected, "{report:?}");
        assert_eq!(
            report.unexpected.len(),
            unused_expected,
            "{:?}",
            report.unexpected
        );
        assert!(
            report
                .missing
                .iter()
                .all(|k| k.starts_with("decoder") || k.starts_with("head")),
            "{:?}",
            report.missing
        );
        let s = ints("input_shape");
        let x = Tensor::<TestBackend, 4>::from_data(
            TensorData::new(floats("input"), [s[0], s[1], s[2], s[3]]),
            &device,
        );
        let got = net.encode(x).pop().unwrap();
        let e = ints("encoded_shape");
        assert_eq!(got.dims().to_vec(), e);
        let got: Vec<f32> = got.into_data().to_vec().unwrap();
        let want = floats("encoded");
        // f32 on both sides through ~10 convolutions: 1e-4 absolute on values of order 1.
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        // A checkpoint of other sizes is a clear error.
        let wrong = ResUnetConfig {
            channels: [8, 8, 8, 8, 8],
            ..cfg
        };
        let err = wrong
            .init_pretrained::<TestBackend>(&dir.join("resnet_tiny.pth"), 1, 3, &device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("resnet_tiny.pth"), "{err}");
    }
}

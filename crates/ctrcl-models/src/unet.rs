//! The SSL4MIS U-Net (METHOD.md §2): five levels of two 3×3 conv + BatchNorm + LeakyReLU(0.01),
//! dropout per encoder level, max-pool down, 2×2 transposed conv up with skip concatenation,
//! 1×1 conv head. Feature taps: decoder outputs at 1/8, 1/4 and 1/2 of the input size.

use crate::ops;
use crate::{ModelError, SegOutput};
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, PaddingConfig2d};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// Sizes of a U-Net.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UNetConfig {
    /// Channels of the five levels, shallow to deep.
    pub channels: [usize; 5],
    /// Dropout probability of each encoder level.
    pub dropout: [f64; 5],
}

impl Default for UNetConfig {
    fn default() -> Self {
        UNetConfig {
            channels: [16, 32, 64, 128, 256],
            dropout: [0.05, 0.1, 0.2, 0.3, 0.5],
        }
    }
}

/// Two 3×3 conv + BN + LeakyReLU, dropout between them (SSL4MIS `ConvBlock`).
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    conv1: Conv2d<B>,
    norm1: ops::BatchNorm2d<B>,
    dropout: Dropout,
    conv2: Conv2d<B>,
    norm2: ops::BatchNorm2d<B>,
}

/// A 3×3 convolution followed by BatchNorm, so without bias: BatchNorm's shift makes it
/// redundant (SSL4MIS keeps one; the function is the same), and Burn 0.21 computes a conv bias's
/// gradient through a transposed copy of the whole output gradient.
fn conv3x3<B: Backend>(cin: usize, cout: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

impl<B: Backend> ConvBlock<B> {
    fn new(cin: usize, cout: usize, dropout: f64, device: &B::Device) -> Self {
        ConvBlock {
            conv1: conv3x3(cin, cout, device),
            norm1: ops::BatchNorm2dConfig::new(cout).init(device),
            dropout: DropoutConfig::new(dropout).init(),
            conv2: conv3x3(cout, cout, device),
            norm2: ops::BatchNorm2dConfig::new(cout).init(device),
        }
    }

    /// # Shapes
    /// `[B, Cin, H, W]` → `[B, Cout, H, W]`.
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = ops::leaky_relu(self.norm1.forward(ops::conv2d(&self.conv1, x)), 0.01);
        let x = ops::dropout(&self.dropout, x);
        ops::leaky_relu(self.norm2.forward(ops::conv2d(&self.conv2, x)), 0.01)
    }
}

/// Transposed-conv upsampling, skip concatenation, then a conv block (SSL4MIS `UpBlock`).
#[derive(Module, Debug)]
pub struct UpBlock<B: Backend> {
    up: ConvTranspose2d<B>,
    conv: ConvBlock<B>,
}

impl<B: Backend> UpBlock<B> {
    fn new(c_deep: usize, c_skip: usize, cout: usize, device: &B::Device) -> Self {
        UpBlock {
            up: ConvTranspose2dConfig::new([c_deep, c_skip], [2, 2])
                .with_stride([2, 2])
                .init(device),
            conv: ConvBlock::new(2 * c_skip, cout, 0.0, device),
        }
    }

    /// # Shapes
    /// `deep`: `[B, C_deep, H, W]`, `skip`: `[B, C_skip, 2H, 2W]` → `[B, C_out, 2H, 2W]`.
    fn forward(&self, deep: Tensor<B, 4>, skip: Tensor<B, 4>) -> Tensor<B, 4> {
        let up = ops::conv_transpose2d(&self.up, deep);
        self.conv.forward(ops::cat(vec![skip, up], 1))
    }
}

/// The U-Net student.
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    encoder: Vec<ConvBlock<B>>,
    /// Kept so that checkpoints keep their layout; the forward pools with `crate::ops::max_pool_2x2`.
    pool: MaxPool2d,
    decoder: Vec<UpBlock<B>>,
    head: Conv2d<B>,
}

impl UNetConfig {
    /// Checks sizes and the input: four 2× poolings need a side divisible by 16.
    pub fn validate(&self, image_size: usize) -> Result<(), ModelError> {
        if self.channels.contains(&0) {
            return Err(ModelError::Config(
                "unet.channels must all be positive".into(),
            ));
        }
        if let Some(p) = self.dropout.iter().find(|p| !(0.0..1.0).contains(*p)) {
            return Err(ModelError::Config(format!(
                "unet.dropout {p} is not in [0, 1)"
            )));
        }
        if !image_size.is_multiple_of(16) || image_size == 0 {
            return Err(ModelError::Config(format!(
                "unet needs an image size divisible by 16 (four 2× poolings); got {image_size}"
            )));
        }
        Ok(())
    }

    pub fn init<B: Backend>(
        &self,
        in_channels: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> UNet<B> {
        let c = self.channels;
        let mut encoder = vec![ConvBlock::new(in_channels, c[0], self.dropout[0], device)];
        for i in 1..5 {
            encoder.push(ConvBlock::new(c[i - 1], c[i], self.dropout[i], device));
        }
        let decoder = (1..5)
            .rev()
            .map(|i| UpBlock::new(c[i], c[i - 1], c[i - 1], device))
            .collect();
        UNet {
            encoder,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            decoder,
            head: Conv2dConfig::new([c[0], num_classes], [1, 1]).init(device),
        }
    }

    /// Multiply-adds of one forward pass per image (see [`crate::ModelSizes::forward_macs`]).
    pub fn forward_macs(&self, image_size: usize, in_channels: usize, num_classes: usize) -> f64 {
        let c = self.channels.map(|v| v as f64);
        let area = |level: usize| ((image_size >> level) * (image_size >> level)) as f64;
        let mut macs = 0.0;
        let mut cin = in_channels as f64;
        for (level, &ci) in c.iter().enumerate() {
            macs += 9.0 * (cin * ci + ci * ci) * area(level);
            cin = ci;
        }
        for level in (1..5).rev() {
            let (deep, skip) = (c[level], c[level - 1]);
            // 2×2 stride-2 transposed conv: one input pixel feeds four output pixels.
            macs += deep * skip * area(level - 1);
            macs += 9.0 * (2.0 * skip * skip + skip * skip) * area(level - 1);
        }
        macs + c[0] * num_classes as f64 * area(0)
    }

    /// Channels of the feature taps by stride: 8 → c[3], 4 → c[2], 2 → c[1].
    pub fn tap_channels(&self) -> Vec<(usize, usize)> {
        vec![
            (8, self.channels[3]),
            (4, self.channels[2]),
            (2, self.channels[1]),
        ]
    }
}

impl<B: Backend> UNet<B> {
    /// # Shapes
    /// `x`: `[B, Cin, H, W]` → logits `[B, K, H, W]`; features at strides 8, 4, 2 with
    /// channels `c[3]`, `c[2]`, `c[1]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> SegOutput<B> {
        let mut skips = Vec::with_capacity(5);
        let mut h = x;
        for (i, block) in self.encoder.iter().enumerate() {
            if i > 0 {
                h = ops::max_pool_2x2(h);
            }
            h = block.forward(h);
            skips.push(h.clone());
        }
        let mut features = Vec::with_capacity(3);
        let mut stride = 16;
        for (j, up) in self.decoder.iter().enumerate() {
            h = up.forward(h, skips[3 - j].clone());
            stride /= 2;
            if stride >= 2 {
                features.push((stride, h.clone()));
            }
        }
        SegOutput {
            logits: ops::conv2d(&self.head, h),
            features,
        }
    }
}

//! The one door through which the students compute: every convolution, linear layer, matmul,
//! normalisation, activation, softmax, concatenation, pooling, resize and permutation a model file
//! runs goes through a name here, never to a kernel module or to Burn's op directly.
//!
//! Behind each name sits the same rule: under the active autocast (`crate::precision`) the op runs
//! at the run's precision; on the flex CPU backend it takes ctrcl's fused kernel (the `crate::cpu`
//! wing) unless its `CTRCL_BURN_*` switch (`crate::switches`) sends it back to Burn; on any other
//! backend it is Burn's op. Pointing the names here at Burn's ops removes the fast path for every
//! model at once, and the wing can then be deleted.
//!
//! Shapes are those of the ops themselves; each is documented where it is implemented.

pub use crate::batchnorm::{BatchNorm2d, BatchNorm2dConfig};
pub use crate::cpu::activation::{gelu, softmax};
pub use crate::cpu::concat::cat;
pub use crate::cpu::layer_norm::layer_norm;
pub use crate::cpu::permute::{permute, swap_dims};
pub use crate::cpu::pool::max_pool_2x2;
pub use crate::cpu::resize::resize_bilinear;
pub use crate::precision::{linear_forward as linear, matmul};
/// Element-wise, with no fused kernel: Burn's own (fused by its graph where the backend fuses).
pub use burn::tensor::activation::{leaky_relu, relu};

use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::prelude::*;

/// `conv(x)`: `[B, C_in, H, W]` → `[B, C_out, H', W']`.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    crate::cpu::conv::forward(conv, x)
}

/// `conv(x)` of a transposed convolution (the U-Net's up-sampling): `[B, C_in, H, W]` →
/// `[B, C_out, H·s, W·s]` for stride `s` = kernel size.
pub fn conv_transpose2d<B: Backend>(conv: &ConvTranspose2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    crate::cpu::conv::up::forward(conv, x)
}

/// A general max-pool (the ResNet stem's 3×3, stride 2): Burn's, with no fused kernel.
/// `[B, C, H, W]` → `[B, C, H', W']`.
pub fn max_pool2d<B: Backend>(pool: &burn::nn::pool::MaxPool2d, x: Tensor<B, 4>) -> Tensor<B, 4> {
    pool.forward(x)
}

/// Dropout (identity outside autodiff training): Burn's. Any shape.
pub fn dropout<B: Backend, const D: usize>(
    layer: &burn::nn::Dropout,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    layer.forward(x)
}

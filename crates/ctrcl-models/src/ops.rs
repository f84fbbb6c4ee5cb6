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

#[cfg(test)]
mod tests {
    /// The model files compute only through `crate::ops` (the door to the fast CPU path): they
    /// reach no kernel module (`conv`, `dense`, `norm`, `activation`, …) and call no Burn op
    /// function (`burn::tensor::activation`, `burn::tensor::module`) themselves.
    #[test]
    fn model_files_compute_only_through_ops() {
        let files = [
            ("unet.rs", include_str!("unet.rs")),
            ("resunet.rs", include_str!("resunet.rs")),
            ("swin.rs", include_str!("swin.rs")),
            ("swin_unet.rs", include_str!("swin_unet.rs")),
            ("segformer.rs", include_str!("segformer.rs")),
        ];
        // What a model file may name in this crate besides `ops`: its errors and outputs,
        // weight import, sizes, its sibling model parts, the test fixtures.
        let allowed = [
            "ops",
            "ModelError",
            "SegOutput",
            "ImportReport",
            "ModelSizes",
            "import",
            "swin",
            "test_backend",
        ];
        for (name, text) in files {
            for (at, _) in text.match_indices("crate::") {
                let rest = &text[at + "crate::".len()..];
                let first: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let first = first.as_str();
                assert!(
                    first.is_empty() || allowed.contains(&first),
                    "{name} reaches crate::{first} directly; compute through crate::ops"
                );
                if first.is_empty() {
                    // `use crate::{A, B}`: every name in the braces must be allowed.
                    let inner = &rest[1..rest.find('}').unwrap()];
                    for n in inner.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        assert!(allowed.contains(&n), "{name} imports crate::{n}");
                    }
                }
            }
            for op in [
                "burn::tensor::activation",
                "burn::tensor::module",
                "Tensor::cat(",
            ] {
                assert!(!text.contains(op), "{name} calls {op}; use crate::ops");
            }
            // Nor a Burn layer's own `forward`: a field `x: LayerNorm<B>` must not be run as
            // `self.x.forward(…)` (whitespace removed, so a call split over lines is found).
            let flat: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            let layers = [
                "Conv2d<B>",
                "ConvTranspose2d<B>",
                "Linear<B>",
                "LayerNorm<B>",
                "MaxPool2d",
                "Dropout",
            ];
            for line in text.lines() {
                let line = line.trim().trim_start_matches("pub ");
                let Some((field, ty)) = line.split_once(':') else {
                    continue;
                };
                if layers.iter().any(|l| ty.trim().trim_end_matches(',') == *l) {
                    let call = format!("self.{field}.forward(");
                    assert!(
                        !flat.contains(&call),
                        "{name}: {call}…) bypasses crate::ops"
                    );
                }
            }
        }
    }
}

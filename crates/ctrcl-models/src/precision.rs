//! Mixed precision ("autocast"): the students' matrix products — convolutions, up-convolutions,
//! linear layers and the attention products — run in a half-precision compute dtype, while
//! parameters (the optimizer's master weights), normalisation, activations, softmax and every
//! loss stay f32. This is `torch.autocast`'s policy: half precision where tensor cores pay off,
//! f32 where rounding would hurt (statistics, exponentials, sums over whole images).
//!
//! The compute dtype is a per-thread setting held by an [`Autocast`] guard, so training threads
//! (one per device with `--devices N`) and parallel tests never see each other's setting. Each
//! product casts its inputs to the compute dtype and its output back to f32; Burn's autodiff
//! records the casts, so gradients reach the f32 parameters in f32. Outside a guard everything
//! runs in f32 (evaluation does).

use std::cell::Cell;

use burn::nn::conv::ConvTranspose2d;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::module::linear;
use burn::tensor::DType;
use serde::{Deserialize, Serialize};

/// The dtype of the students' matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32 (default).
    #[default]
    F32,
    /// bfloat16 products (8-bit mantissa, f32's range): the usual choice on Ampere and newer.
    Bf16,
    /// IEEE half products (11-bit mantissa, range ±65504). Inference and tests only: training
    /// refuses it, as its gradients would need loss scaling.
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }

    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }

    /// Whether backend `B` on `device` can do arithmetic in this dtype (a clear error beats a
    /// kernel panic deep in the first step).
    pub fn supported_by<B: Backend>(self, device: &B::Device) -> bool {
        B::supports_dtype(device, self.dtype())
    }
}

thread_local! {
    static COMPUTE: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The current thread's compute precision.
pub fn current() -> Precision {
    COMPUTE.with(Cell::get)
}

/// Sets this thread's compute precision until the guard drops (then the previous one returns).
#[must_use = "the precision reverts when the guard drops"]
pub struct Autocast {
    previous: Precision,
}

/// Starts an autocast region on this thread.
pub fn autocast(precision: Precision) -> Autocast {
    let previous = COMPUTE.with(|c| c.replace(precision));
    Autocast { previous }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        COMPUTE.with(|c| c.set(self.previous));
    }
}

/// The half dtype products run in on this thread, or `None` in f32.
pub fn half() -> Option<DType> {
    match current() {
        Precision::F32 => None,
        p => Some(p.dtype()),
    }
}

/// `layer.forward(x)` with the product in the compute dtype: `x` `[…, d_in]` → `[…, d_out]`.
pub fn linear_forward<B: Backend, const D: usize>(
    layer: &Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match half() {
        None => crate::cpu::linear_matmul::linear(layer, x),
        Some(h) => linear(
            x.cast(h),
            layer.weight.val().cast(h),
            layer.bias.as_ref().map(|b| b.val().cast(h)),
        )
        .cast(DType::F32),
    }
}

/// `a.matmul(b)` in the compute dtype: `[…, n, k] × […, k, m]` → `[…, n, m]`.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    match half() {
        None => crate::cpu::linear_matmul::matmul(a, b),
        Some(h) => a.cast(h).matmul(b.cast(h)).cast(DType::F32),
    }
}

/// Burn's functional `conv2d` with the product in dtype `half`, output f32. Shapes as
/// `cpu::conv::forward`.
pub fn conv2d_in<B: Backend>(
    half: DType,
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: burn::tensor::ops::ConvOptions<2>,
) -> Tensor<B, 4> {
    burn::tensor::module::conv2d(
        x.cast(half),
        weight.cast(half),
        bias.map(|b| b.cast(half)),
        options,
    )
    .cast(DType::F32)
}

/// `conv.forward(x)` with the product in dtype `h`, output f32.
/// `x` `[B, C_in, H, W]` → `[B, C_out, H_out, W_out]`.
pub fn conv_transpose2d_in<B: Backend>(
    h: DType,
    conv: &ConvTranspose2d<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let options = burn::tensor::ops::ConvTransposeOptions::new(
        conv.stride,
        conv.padding,
        conv.padding_out,
        conv.dilation,
        conv.groups,
    );
    burn::tensor::module::conv_transpose2d(
        x.cast(h),
        conv.weight.val().cast(h),
        conv.bias.as_ref().map(|b| b.val().cast(h)),
        options,
    )
    .cast(DType::F32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::TestAutodiff;
    use crate::{Architecture, SegFormerConfig};
    use burn::tensor::{Distribution, Int};

    /// ‖a − b‖ / ‖b‖.
    fn relative_error(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (diff / norm).sqrt()
    }

    /// Every trainable parameter's gradient, flattened in visiting order (all must be f32).
    struct ParamGrads<'a> {
        grads: &'a <TestAutodiff as burn::tensor::backend::AutodiffBackend>::Gradients,
        values: Vec<f32>,
    }

    impl burn::module::ModuleVisitor<TestAutodiff> for ParamGrads<'_> {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<Tensor<TestAutodiff, D>>,
        ) {
            if let Some(g) = param.val().grad(self.grads) {
                assert_eq!(g.dtype(), DType::F32, "parameter gradients stay f32");
                self.values.extend(g.into_data().to_vec::<f32>().unwrap());
            }
        }
    }

    /// Logits and every parameter's gradient of `Σ logits · w` (`w` a fixed ramp, so every
    /// output element counts differently) with the forward under `precision`.
    fn logits_and_param_grads(
        net: &crate::Student<TestAutodiff>,
        x: &Tensor<TestAutodiff, 4>,
        precision: Precision,
    ) -> (Vec<f32>, Vec<f32>) {
        let y = {
            let _guard = autocast(precision);
            net.forward(x.clone()).logits
        };
        assert_eq!(
            y.dtype(),
            DType::F32,
            "{precision:?}: logits come back in f32"
        );
        let n = y.shape().num_elements() as i64;
        let w = Tensor::<TestAutodiff, 1, Int>::arange(0..n, &y.device())
            .float()
            .reshape(y.dims())
            / n as f64;
        let grads = (y.clone() * w).sum().backward();
        let mut visitor = ParamGrads {
            grads: &grads,
            values: Vec::new(),
        };
        burn::module::Module::visit(net, &mut visitor);
        (y.into_data().to_vec::<f32>().unwrap(), visitor.values)
    }

    /// Every student under bf16 and f16 autocast: logits and parameter gradients come back in
    /// f32, differ from the f32 run (so the products really ran in half precision; two f32 runs
    /// agree exactly) and stay within half precision's error. Logits: unit roundoff 2⁻⁹ (bf16)
    /// and 2⁻¹² (f16) per product, grown over ~20 layers; measured 0.6–1.2e-2 and 1.1–2.6e-3,
    /// bounds 3e-2 and 5e-3. Parameter gradients: measured 0.4–1.8e-2 for the transformers; the
    /// CNNs' are 2.5–4.7e-2 for bf16 and f16 alike, so there they come from the kinks that
    /// rounding moves across (a max-pool's arg-max, LeakyReLU at 0), not from the roundoff; bound
    /// 1e-1 (a broken cast or a gradient lost in one layer gives O(1)). Dropout and stochastic
    /// depth are off, so every run sees the same network.
    #[test]
    fn students_under_autocast_stay_close_to_f32() {
        let device = Default::default();
        let mut sizes = crate::test_backend::small_sizes();
        sizes.unet.dropout = [0.0; 5];
        sizes.swin_unet.drop_path = 0.0;
        sizes.segformer = SegFormerConfig {
            dims: [8, 16, 16, 32],
            heads: [1, 2, 2, 4],
            decoder_dim: 16,
            ..Default::default()
        };
        let x = Tensor::<TestAutodiff, 4>::random(
            [2, 1, 64, 64],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        for arch in [
            Architecture::Unet,
            Architecture::Resunet,
            Architecture::SwinUnet,
            Architecture::Segformer,
        ] {
            let net = sizes.init::<TestAutodiff>(arch, 64, 1, 3, &device);
            let (y32, g32) = logits_and_param_grads(&net, &x, Precision::F32);
            let (y32b, g32b) = logits_and_param_grads(&net, &x, Precision::F32);
            assert_eq!(
                (&y32, &g32),
                (&y32b, &g32b),
                "{arch:?}: f32 runs repeat exactly"
            );
            for (precision, logit_bound) in [(Precision::Bf16, 3e-2), (Precision::F16, 5e-3)] {
                let (y, g) = logits_and_param_grads(&net, &x, precision);
                let (ey, eg) = (relative_error(&y, &y32), relative_error(&g, &g32));
                eprintln!("{arch:?} {precision:?}: logits {ey:.2e}, parameter gradients {eg:.2e}");
                assert!(
                    ey > 1e-5 && ey < logit_bound,
                    "{arch:?} {precision:?} logits error {ey}"
                );
                assert!(
                    eg > 1e-5 && eg < 1e-1,
                    "{arch:?} {precision:?} gradient error {eg}"
                );
            }
        }
        assert_eq!(current(), Precision::F32, "guards restore f32");
    }

    #[test]
    fn guards_nest_and_restore() {
        assert_eq!(current(), Precision::F32);
        {
            let _outer = autocast(Precision::Bf16);
            assert_eq!(half(), Some(DType::BF16));
            {
                let _inner = autocast(Precision::F32);
                assert_eq!(half(), None);
            }
            assert_eq!(current(), Precision::Bf16);
        }
        assert_eq!(current(), Precision::F32);
        // Another thread starts in f32 whatever this one does.
        let _guard = autocast(Precision::F16);
        assert_eq!(std::thread::spawn(current).join().unwrap(), Precision::F32);
    }

    #[test]
    fn flex_supports_both_half_dtypes() {
        let device = Default::default();
        assert!(Precision::Bf16.supported_by::<TestAutodiff>(&device));
        assert!(Precision::F16.supported_by::<TestAutodiff>(&device));
    }
}

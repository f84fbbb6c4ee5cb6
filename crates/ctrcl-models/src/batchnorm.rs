//! BatchNorm over the channel axis of NCHW tensors, computed without layout changes.
//!
//! Burn 0.21's `BatchNorm` moves channels first with `swap_dims` + `reshape` (two full copies per
//! statistic) before reducing; here the statistics are `mean_dim` over a free `[B·C, H·W]` view and
//! the normalisation folds into one scale and one shift per channel. Running statistics follow
//! PyTorch: `running = (1 − m)·running + m·batch` with the *unbiased* batch variance (Burn's own
//! uses the biased one). Train mode when the backend tracks gradients, eval mode otherwise
//! (`model.valid()`), as in Burn.

use std::any::TypeId;

use burn::module::{Param, RunningState};
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};

use crate::cpu::{cast, CpuTrain, CpuTrainTensor};

/// Configuration of [`BatchNorm2d`].
#[derive(Config, Debug)]
pub struct BatchNorm2dConfig {
    pub num_features: usize,
    #[config(default = 1e-5)]
    pub epsilon: f64,
    #[config(default = 0.1)]
    pub momentum: f64,
}

/// Batch normalisation of `[B, C, H, W]` tensors with learnable `gamma`, `beta` of shape `[C]`.
#[derive(Module, Debug)]
pub struct BatchNorm2d<B: Backend> {
    pub gamma: Param<Tensor<B, 1>>,
    pub beta: Param<Tensor<B, 1>>,
    pub running_mean: RunningState<Tensor<B, 1>>,
    pub running_var: RunningState<Tensor<B, 1>>,
    pub momentum: f64,
    pub epsilon: f64,
}

impl BatchNorm2dConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> BatchNorm2d<B> {
        let c = self.num_features;
        BatchNorm2d {
            gamma: Param::from_tensor(Tensor::ones([c], device)),
            beta: Param::from_tensor(Tensor::zeros([c], device)),
            running_mean: RunningState::new(Tensor::zeros([c], device)),
            running_var: RunningState::new(Tensor::ones([c], device)),
            momentum: self.momentum,
            epsilon: self.epsilon,
        }
    }
}

/// Per-channel values `[C]` laid out as a `[B·C, 1]` column that broadcasts over a `[B·C, H·W]`
/// view. Flex has a fast row-wise path for 2D broadcasting but walks 4D broadcasts (a
/// `[1, C, 1, 1]` operand) element by element with a strided iterator, which made BatchNorm cost
/// ~20% of a U-Net step; the repeated column is tiny (B·C values).
///
/// # Shapes
/// `[C]` → `[B·C, 1]`.
fn per_row<B: Backend>(v: Tensor<B, 1>, batch: usize) -> Tensor<B, 2> {
    let c = v.dims()[0];
    v.reshape([1, c])
        .repeat_dim(0, batch)
        .reshape([batch * c, 1])
}

/// Mean over the batch of per-row values: `[B·C, 1]` → `[C]`.
fn batch_mean<B: Backend>(rows: Tensor<B, 2>, batch: usize) -> Tensor<B, 1> {
    let c = rows.dims()[0] / batch;
    rows.reshape([batch, c]).mean_dim(0).reshape([c])
}

impl<B: Backend> BatchNorm2d<B> {
    /// # Shapes
    /// `x`: `[B, C, H, W]` → `[B, C, H, W]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let fused = TypeId::of::<B>() == TypeId::of::<CpuTrain>()
            && x.dtype() == DType::F32
            && self.gamma.val().dtype() == DType::F32
            && self.beta.val().dtype() == DType::F32
            && crate::cpu::batchnorm::enabled();
        if fused && B::ad_enabled(&device) {
            self.forward_fused(x)
        } else {
            self.forward_composed(x)
        }
    }

    /// Burn's element-wise ops and reductions on a `[B·C, H·W]` view (every backend; eval mode
    /// everywhere). Shapes as `forward`.
    fn forward_composed(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let [b, c, h, w] = x.dims();
        // A free 2D view; every statistic is a reduction over its contiguous last axis.
        let x2 = x.reshape([b * c, h * w]);
        let (centered, var) = if B::ad_enabled(&device) {
            let mean = batch_mean(x2.clone().mean_dim(1), b); // [C]
            let centered = x2 - per_row(mean.clone(), b);
            let var = batch_mean(centered.clone().square().mean_dim(1), b); // [C], biased
            self.update_running(mean, var.clone(), b * h * w);
            (centered, var)
        } else {
            let mean = self.running_mean.value_sync().to_device(&device);
            let var = self.running_var.value_sync().to_device(&device);
            (x2 - per_row(mean, b), var)
        };
        let scale = self.gamma.val() / (var + self.epsilon).sqrt(); // [C]
        let y = centered * per_row(scale, b) + per_row(self.beta.val(), b);
        y.reshape([b, c, h, w])
    }

    /// Train mode through the fused CPU op ([`crate::cpu::batchnorm`]). Shapes as `forward`.
    fn forward_fused(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let device = x.device();
        let [b, c, h, w] = x.dims();
        let prim = |t: TensorPrimitive<B>| -> CpuTrainTensor { cast(t.tensor()) };
        let (y, stats) = crate::cpu::batchnorm::train_forward(
            prim(x.into_primitive()),
            prim(self.gamma.val().into_primitive()),
            prim(self.beta.val().into_primitive()),
            self.epsilon,
        );
        let stat = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [c]), &device);
        self.update_running(stat(stats.mean), stat(stats.var), b * h * w);
        Tensor::from_primitive(TensorPrimitive::Float(cast(y)))
    }

    /// PyTorch's running averages from a batch's mean and biased variance `[C]` over `n`
    /// values per channel (the variance made unbiased).
    fn update_running(&self, mean: Tensor<B, 1>, var: Tensor<B, 1>, n: usize) {
        let device = mean.device();
        let n = n as f64;
        let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let m = self.momentum;
        let rm = self.running_mean.value_sync().to_device(&device);
        let rv = self.running_var.value_sync().to_device(&device);
        self.running_mean
            .update((rm * (1.0 - m) + mean.detach() * m).detach());
        self.running_var
            .update((rv * (1.0 - m) + var.detach() * (m * unbiased)).detach());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::{TestAutodiff, TestBackend};
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    #[test]
    fn matches_burn_batchnorm_in_train_mode_values_and_gradients() {
        let device = Default::default();
        let x = Tensor::<TestAutodiff, 4>::random(
            [3, 4, 5, 6],
            Distribution::Normal(1.0, 2.0),
            &device,
        );
        let ours = BatchNorm2dConfig::new(4).init::<TestAutodiff>(&device);
        let burns = BatchNormConfig::new(4).init::<TestAutodiff>(&device);
        let xa = x.clone().require_grad();
        let xb = x.clone().require_grad();
        let ya = ours.forward(xa.clone());
        let yb = burns.forward(xb.clone());
        ya.to_data()
            .assert_approx_eq::<f32>(&yb.to_data(), burn::tensor::Tolerance::absolute(1e-4));
        // Weight the outputs so the gradient is not trivially zero.
        let wgt = Tensor::<TestAutodiff, 4>::random([3, 4, 5, 6], Distribution::Default, &device);
        let ga = (ya * wgt.clone()).sum().backward();
        let gb = (yb * wgt).sum().backward();
        xa.grad(&ga).unwrap().to_data().assert_approx_eq::<f32>(
            &xb.grad(&gb).unwrap().to_data(),
            burn::tensor::Tolerance::absolute(1e-4),
        );
        // Running mean agrees; running variance is PyTorch's unbiased one: n/(n-1) times Burn's
        // batch term (n = 3·5·6 = 90).
        ours.running_mean
            .value_sync()
            .to_data()
            .assert_approx_eq::<f32>(
                &burns.running_mean.value_sync().to_data(),
                burn::tensor::Tolerance::absolute(1e-5),
            );
        let ours_batch_term = ours.running_var.value_sync() - 0.9;
        let burn_batch_term = (burns.running_var.value_sync() - 0.9) * (90.0 / 89.0);
        ours_batch_term.to_data().assert_approx_eq::<f32>(
            &burn_batch_term.to_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    }

    /// The fused CPU op against the composed ops (whose values and input gradient match
    /// Burn's `BatchNorm` above): output, the gradients of x, γ and β, and the running
    /// statistics, with non-trivial γ and β.
    #[test]
    fn fused_train_mode_matches_the_composed_ops() {
        let device = Default::default();
        let x0 = Tensor::<TestAutodiff, 4>::random(
            [3, 5, 7, 6],
            Distribution::Normal(-0.5, 1.5),
            &device,
        );
        let wgt = Tensor::<TestAutodiff, 4>::random([3, 5, 7, 6], Distribution::Default, &device);
        let run = |fused: bool| {
            let bn = BatchNorm2dConfig::new(5).init::<TestAutodiff>(&device);
            let bn = BatchNorm2d {
                gamma: Param::from_tensor(Tensor::from_floats([0.5, 1.5, -1.0, 2.0, 0.1], &device)),
                beta: Param::from_tensor(Tensor::from_floats([0.3, -0.2, 0.0, 1.0, -2.0], &device)),
                ..bn
            };
            let x = x0.clone().require_grad();
            let y = if fused {
                bn.forward_fused(x.clone())
            } else {
                bn.forward_composed(x.clone())
            };
            let grads = (y.clone() * wgt.clone()).sum().backward();
            let data = |t: Tensor<TestBackend, 1>| t.into_data();
            (
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                data(bn.gamma.val().grad(&grads).unwrap()),
                data(bn.beta.val().grad(&grads).unwrap()),
                bn.running_mean.value_sync().into_data(),
                bn.running_var.value_sync().into_data(),
            )
        };
        let (fused, composed) = (run(true), run(false));
        // f64 statistics against f32 reductions: 1e-4 relative covers the rounding; a wrong
        // term (the x̂·Σdy·x̂ correction, the unbiased factor) is off by O(1/n) ≥ 4e-3 here.
        let tol = burn::tensor::Tolerance::<f32>::rel_abs(1e-4, 1e-5);
        fused.0.assert_approx_eq::<f32>(&composed.0, tol);
        fused.1.assert_approx_eq::<f32>(&composed.1, tol);
        fused.2.assert_approx_eq::<f32>(&composed.2, tol);
        fused.3.assert_approx_eq::<f32>(&composed.3, tol);
        fused.4.assert_approx_eq::<f32>(&composed.4, tol);
        fused.5.assert_approx_eq::<f32>(&composed.5, tol);
    }

    #[test]
    fn eval_mode_uses_running_statistics() {
        let device = Default::default();
        let bn = BatchNorm2dConfig::new(2).init::<TestBackend>(&device);
        bn.running_mean
            .update(Tensor::from_floats([1.0, -2.0], &device));
        bn.running_var
            .update(Tensor::from_floats([4.0, 0.25], &device));
        let x = Tensor::<TestBackend, 4>::from_floats([[[[3.0]], [[-1.0]]]], &device);
        let y: Vec<f32> = bn.forward(x).into_data().to_vec().unwrap();
        // (3 − 1)/sqrt(4 + 1e-5) ≈ 1.0, (−1 + 2)/sqrt(0.25 + 1e-5) ≈ 2.0
        assert!(
            (y[0] - 1.0).abs() < 1e-4 && (y[1] - 2.0).abs() < 1e-4,
            "{y:?}"
        );
        let _ = BatchNorm2dConfig::new(2)
            .init::<TestAutodiff>(&device)
            .valid();
    }
}

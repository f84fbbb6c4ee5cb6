//! LayerNorm over the last axis as one fused, row-parallel op with its own backward on the CPU
//! training backend.
//!
//! Burn 0.21's autodiff LayerNorm is composed of mean, variance, broadcasts and their backward
//! passes: a dozen strided, single-threaded element-wise passes per norm, a large part of a Swin
//! step. Here the forward computes each row's mean and reciprocal standard deviation in one pass
//! (rows in parallel) and keeps the normalised rows; the backward is
//! `dx = rstd · (g − mean(g) − x̂ · mean(g · x̂))` with `g = dy · γ`, and `dγ = Σ dy · x̂`,
//! `dβ = Σ dy` as per-chunk partial sums. Only on `Autodiff<Flex>` (f32) with the students'
//! epsilon [`LAYER_NORM_EPS`]; inference and other backends use Burn's (fused on flex).
//! `CTRCL_BURN_NORM=1` in the environment turns this path off (for A/B benchmarks).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{FlexTensor, Layout};
use burn::nn::LayerNorm;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::{Bytes, Shape as StdShape};
use rayon::prelude::*;

use crate::cpu::{cast, values, CpuTrain, CpuTrainTensor};

/// The epsilon of every LayerNorm the students build: `LayerNormConfig`'s default (and
/// PyTorch's). Burn keeps a built norm's epsilon private, so the fast path assumes this one.
pub const LAYER_NORM_EPS: f64 = 1e-5;

fn enabled() -> bool {
    crate::switches::Switch::Norm.fast()
}

/// `norm.forward(x)` for a LayerNorm with epsilon [`LAYER_NORM_EPS`]; `x` is `[…, dim]`.
pub fn layer_norm<B: Backend, const D: usize>(
    norm: &LayerNorm<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    if TypeId::of::<B>() != TypeId::of::<CpuTrain>() || x.dtype() != DType::F32 || !enabled() {
        return norm.forward(x);
    }
    let Some(beta) = norm.beta.as_ref() else {
        return norm.forward(x);
    };
    let dims = x.dims();
    let gamma: CpuTrainTensor = cast(norm.gamma.val().into_primitive().tensor());
    let beta: CpuTrainTensor = cast(beta.val().into_primitive().tensor());
    let x: CpuTrainTensor = cast(x.into_primitive().tensor());
    let out: B::FloatTensorPrimitive = cast(norm_autodiff(x, gamma, beta));
    Tensor::<B, D>::from_primitive(TensorPrimitive::Float(out)).reshape(dims)
}

/// What the backward needs: the normalised rows, each row's 1/σ, and γ.
#[derive(Debug, Clone)]
struct Saved {
    shape: Vec<usize>,
    normalized: Vec<f32>,
    rstd: Vec<f32>,
    gamma: Vec<f32>,
}

fn flex(values: Vec<f32>, shape: Vec<usize>) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(StdShape::from(shape)),
        DType::F32,
    )
}

/// Rows per parallel task: enough work to amortise the task.
fn rows_per_task(dim: usize) -> usize {
    (16384 / dim.max(1)).max(1)
}

fn forward(x: &FlexTensor, gamma: &[f32], beta: &[f32]) -> (FlexTensor, Saved) {
    let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
    let dim = *shape.last().expect("LayerNorm input has a last axis");
    let x = x.to_contiguous();
    let src: &[f32] = x.storage();
    let rows = src.len() / dim;
    let mut y = vec![0.0f32; src.len()];
    let mut normalized = vec![0.0f32; src.len()];
    let mut rstd = vec![0.0f32; rows];
    let chunk = rows_per_task(dim);
    y.par_chunks_mut(chunk * dim)
        .zip(normalized.par_chunks_mut(chunk * dim))
        .zip(rstd.par_chunks_mut(chunk))
        .zip(src.par_chunks(chunk * dim))
        .for_each(|(((y, xn), rs), src)| {
            for (r, row) in src.chunks_exact(dim).enumerate() {
                let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / dim as f64;
                let var = row
                    .iter()
                    .map(|&v| (f64::from(v) - mean).powi(2))
                    .sum::<f64>()
                    / dim as f64;
                let inv = 1.0 / (var + LAYER_NORM_EPS).sqrt();
                rs[r] = inv as f32;
                let (yr, nr) = (&mut y[r * dim..][..dim], &mut xn[r * dim..][..dim]);
                for k in 0..dim {
                    let n = ((f64::from(row[k]) - mean) * inv) as f32;
                    nr[k] = n;
                    yr[k] = n * gamma[k] + beta[k];
                }
            }
        });
    let saved = Saved {
        shape: shape.clone(),
        normalized,
        rstd,
        gamma: gamma.to_vec(),
    };
    (flex(y, shape), saved)
}

/// `(dx, dγ, dβ)` from the output gradient.
fn backward(dy: &FlexTensor, s: &Saved) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dim = s.gamma.len();
    let dy = values(dy);
    let mut dx = vec![0.0f32; dy.len()];
    let chunk = rows_per_task(dim);
    // One (dγ, dβ) partial per chunk of rows, summed in chunk order afterwards: chunks depend
    // on the row width only, so the sum does not depend on the thread count or on how rayon
    // scheduled the chunks (a rayon `reduce` adds partials in a split-dependent tree order).
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(chunk * dim)
        .zip(dy.par_chunks(chunk * dim))
        .zip(s.normalized.par_chunks(chunk * dim))
        .zip(s.rstd.par_chunks(chunk))
        .map(|(((dx, dy), xn), rstd)| {
            let (mut dg, mut db) = (vec![0.0f32; dim], vec![0.0f32; dim]);
            for (r, ((dxr, dyr), nr)) in dx
                .chunks_exact_mut(dim)
                .zip(dy.chunks_exact(dim))
                .zip(xn.chunks_exact(dim))
                .enumerate()
            {
                let (mut a, mut b) = (0.0f32, 0.0f32);
                for k in 0..dim {
                    let g = dyr[k] * s.gamma[k];
                    a += g;
                    b += g * nr[k];
                    dg[k] += dyr[k] * nr[k];
                    db[k] += dyr[k];
                }
                let (a, b) = (a / dim as f32, b / dim as f32);
                for k in 0..dim {
                    dxr[k] = rstd[r] * (dyr[k] * s.gamma[k] - a - nr[k] * b);
                }
            }
            (dg, db)
        })
        .collect();
    let (mut dgamma, mut dbeta) = (vec![0.0f32; dim], vec![0.0f32; dim]);
    for (g, b) in &partials {
        dgamma.iter_mut().zip(g).for_each(|(p, q)| *p += q);
        dbeta.iter_mut().zip(b).for_each(|(p, q)| *p += q);
    }
    (
        flex(dx, s.shape.clone()),
        flex(dgamma, vec![dim]),
        flex(dbeta, vec![dim]),
    )
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<burn::backend::Flex, 3> for LayerNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        crate::cpu::backprop_all(ops, grads, |dy, saved| {
            let (dx, dgamma, dbeta) = backward(dy, saved);
            [dx, dgamma, dbeta]
        });
    }
}

fn norm_autodiff(x: CpuTrainTensor, gamma: CpuTrainTensor, beta: CpuTrainTensor) -> CpuTrainTensor {
    let (g, b) = (values(&gamma.primitive), values(&beta.primitive));
    crate::cpu::record(LayerNormBackward, [&x, &gamma, &beta], || {
        forward(&x.primitive, &g, &b)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn the_assumed_epsilon_is_burns_default() {
        assert_eq!(burn::nn::LayerNormConfig::new(8).epsilon, LAYER_NORM_EPS);
    }

    #[test]
    fn values_and_all_three_gradients_match_burns_layer_norm() {
        type B = CpuTrain;
        let device = Default::default();
        let dim = 24;
        let mut norm = burn::nn::LayerNormConfig::new(dim).init::<B>(&device);
        // Non-trivial γ and β, so that their roles in the gradients are visible.
        norm.gamma = Param::from_tensor(Tensor::random(
            [dim],
            Distribution::Uniform(0.5, 1.5),
            &device,
        ));
        norm.beta = Some(Param::from_tensor(Tensor::random(
            [dim],
            Distribution::Uniform(-0.5, 0.5),
            &device,
        )));
        let x0 = Tensor::<B, 3>::random([3, 5, dim], Distribution::Normal(0.3, 2.0), &device);
        let run = |fast: bool| {
            let x = x0.clone().detach().require_grad();
            let y = if fast {
                layer_norm(&norm, x.clone())
            } else {
                norm.forward(x.clone())
            };
            let w = Tensor::<B, 1, Int>::arange(0..y.shape().num_elements() as i64, &device)
                .float()
                .reshape(y.dims())
                .sin();
            let grads = (y.clone() * w).sum().backward();
            [
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                norm.gamma.grad(&grads).unwrap().into_data(),
                norm.beta
                    .as_ref()
                    .unwrap()
                    .grad(&grads)
                    .unwrap()
                    .into_data(),
            ]
        };
        // f64 statistics here, f32 in Burn's composite: agreement to float rounding.
        let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-5);
        // output, dx, dγ, dβ
        for (fast, reference) in run(true).into_iter().zip(run(false)) {
            fast.assert_approx_eq::<f32>(&reference, tol);
        }
    }

    /// dγ and dβ sum per-chunk partials: the sum must not depend on the thread count (a seed
    /// gives one run on 1 or N threads). 32 768 rows of width 32 make 64 chunks; a rayon
    /// `reduce` of those partials gave different bits on 1 and 4 threads.
    #[test]
    fn gradients_are_bit_identical_on_one_and_four_threads() {
        type B = CpuTrain;
        let device = Default::default();
        let dim = 32;
        let norm = burn::nn::LayerNormConfig::new(dim).init::<B>(&device);
        let x0 = Tensor::<B, 3>::random([64, 512, dim], Distribution::Normal(0.3, 2.0), &device);
        let w = Tensor::<B, 1, Int>::arange(0..x0.shape().num_elements() as i64, &device)
            .float()
            .reshape(x0.dims())
            .sin();
        let run = |threads: usize| {
            crate::on_threads(threads, || {
                let x = x0.clone().detach().require_grad();
                let y = layer_norm(&norm, x.clone());
                let grads = (y * w.clone()).sum().backward();
                let beta = norm.beta.as_ref().unwrap();
                [
                    x.grad(&grads).unwrap().into_data(),
                    norm.gamma.grad(&grads).unwrap().into_data(),
                    beta.grad(&grads).unwrap().into_data(),
                ]
            })
        };
        let (one, four) = (run(1), run(4));
        for (name, (a, b)) in ["dx", "dγ", "dβ"].iter().zip(one.iter().zip(&four)) {
            assert_eq!(
                a.as_slice::<f32>().unwrap(),
                b.as_slice::<f32>().unwrap(),
                "{name}"
            );
        }
    }
}

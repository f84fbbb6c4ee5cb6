//! Train-mode BatchNorm2d as one fused op with its own backward on the CPU training backend.
//!
//! The composed [`crate::batchnorm`] path runs ~10 Burn element-wise ops and reductions forward
//! and as many backward, most of them on flex's single-threaded path: with the convolutions
//! threaded, they were the bulk of the main thread's serial work in a U-Net step. Here the
//! forward is two passes (per-channel mean and biased variance in f64, in parallel over
//! channels; then `y = (x − μ)·γ/σ + β` in parallel over planes) and the backward two more
//! (per-channel `Σ dy` and `Σ dy·x̂`; then `dx = γ/σ · (dy − Σdy/n − x̂·Σdy·x̂/n)`).
//! `CTRCL_BURN_BATCHNORM=1` in the environment turns this path off (for A/B benchmarks).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn_std::Shape as StdShape;
use rayon::prelude::*;

use crate::cpu::{backprop_all, dims4, flex_tensor, record, values, CpuTrainTensor};

pub fn enabled() -> bool {
    crate::switches::Switch::Batchnorm.fast()
}

/// The batch statistics of one forward: per channel, the mean and the biased variance.
pub struct BatchStats {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// What the backward needs: the input, the per-channel mean and 1/σ, and γ.
#[derive(Debug, Clone)]
struct Saved {
    x: FlexTensor,
    mean: Vec<f32>,
    rstd: Vec<f32>,
    gamma: Vec<f32>,
}

/// Per channel `c`: `f(plane)` summed in f64 over the `B` planes `b·C + c` of `data`.
fn per_channel_sums(
    data: &[f32],
    [b, c, h, w]: [usize; 4],
    f: impl Fn(usize, &[f32]) -> [f64; 2] + Sync,
) -> Vec<[f64; 2]> {
    let hw = h * w;
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut sum = [0.0f64; 2];
            for n in 0..b {
                let plane = n * c + ch;
                let s = f(plane, &data[plane * hw..(plane + 1) * hw]);
                sum[0] += s[0];
                sum[1] += s[1];
            }
            sum
        })
        .collect()
}

/// Forward in train mode: `x` `[B, C, H, W]` (contiguous), `gamma`, `beta` `[C]` → the output,
/// the batch statistics, and what the backward needs.
fn forward(
    x: &FlexTensor,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
) -> (FlexTensor, BatchStats, Saved) {
    let x = x.to_contiguous();
    let shape = dims4(&x);
    let [b, c, h, w] = shape;
    let (hw, n) = (h * w, (b * h * w) as f64);
    let data: &[f32] = x.storage();
    let sums = per_channel_sums(data, shape, |_, plane| {
        [plane.iter().map(|&v| v as f64).sum(), 0.0]
    });
    let mean: Vec<f32> = sums.iter().map(|s| (s[0] / n) as f32).collect();
    let sq = per_channel_sums(data, shape, |p, plane| {
        let m = mean[p % c] as f64;
        [plane.iter().map(|&v| (v as f64 - m).powi(2)).sum(), 0.0]
    });
    let var: Vec<f32> = sq.iter().map(|s| (s[0] / n) as f32).collect();
    let rstd: Vec<f32> = sq
        .iter()
        .map(|s| (1.0 / (s[0] / n + eps).sqrt()) as f32)
        .collect();
    let mut y = vec![0.0f32; data.len()];
    if hw > 0 {
        y.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let scale = gamma[ch] * rstd[ch];
            let shift = beta[ch] - mean[ch] * scale;
            for (o, &v) in out.iter_mut().zip(&data[p * hw..(p + 1) * hw]) {
                *o = v * scale + shift;
            }
        });
    }
    let out = flex_tensor(y, StdShape::new(shape));
    let saved = Saved {
        x,
        mean: mean.clone(),
        rstd,
        gamma: gamma.to_vec(),
    };
    (out, BatchStats { mean, var }, saved)
}

/// Gradients of x, γ and β from the output gradient `dy`.
fn backward(dy: &FlexTensor, s: &Saved) -> (FlexTensor, FlexTensor, FlexTensor) {
    let dy = dy.to_contiguous();
    let shape = dims4(&s.x);
    let [b, c, h, w] = shape;
    let (hw, n) = (h * w, (b * h * w) as f32);
    let (x, g): (&[f32], &[f32]) = (s.x.storage(), dy.storage());
    // Per channel: Σ dy and Σ dy·x̂.
    let sums = per_channel_sums(g, shape, |p, g_plane| {
        let (m, r) = (s.mean[p % c], s.rstd[p % c]);
        let x_plane = &x[p * hw..(p + 1) * hw];
        let mut acc = [0.0f64; 2];
        for (&dy, &xv) in g_plane.iter().zip(x_plane) {
            acc[0] += dy as f64;
            acc[1] += (dy * (xv - m) * r) as f64;
        }
        acc
    });
    let dbeta: Vec<f32> = sums.iter().map(|s| s[0] as f32).collect();
    let dgamma: Vec<f32> = sums.iter().map(|s| s[1] as f32).collect();
    let mut dx = vec![0.0f32; x.len()];
    if hw > 0 {
        dx.par_chunks_mut(hw).enumerate().for_each(|(p, out)| {
            let ch = p % c;
            let (m, r) = (s.mean[ch], s.rstd[ch]);
            let k = s.gamma[ch] * r;
            let (mean_dy, mean_dy_xhat) = (dbeta[ch] / n, dgamma[ch] / n);
            let planes = g[p * hw..(p + 1) * hw].iter().zip(&x[p * hw..(p + 1) * hw]);
            for (o, (&dy, &xv)) in out.iter_mut().zip(planes) {
                *o = k * (dy - mean_dy - (xv - m) * r * mean_dy_xhat);
            }
        });
    }
    (
        flex_tensor(dx, StdShape::new(shape)),
        flex_tensor(dgamma, StdShape::new([c])),
        flex_tensor(dbeta, StdShape::new([c])),
    )
}

#[derive(Debug)]
struct BatchNormBackward;

impl Backward<Flex, 3> for BatchNormBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        backprop_all(ops, grads, |dy, saved| {
            let (dx, dgamma, dbeta) = backward(dy, saved);
            [dx, dgamma, dbeta]
        });
    }
}

/// Train-mode batch normalisation of `x` `[B, C, H, W]` with `gamma`, `beta` `[C]` (f32): the
/// output `[B, C, H, W]` and the batch statistics (for the running averages).
pub fn train_forward(
    x: CpuTrainTensor,
    gamma: CpuTrainTensor,
    beta: CpuTrainTensor,
    eps: f64,
) -> (CpuTrainTensor, BatchStats) {
    let (g, b) = (values(&gamma.primitive), values(&beta.primitive));
    let mut stats = None;
    let out = record(BatchNormBackward, [&x, &gamma, &beta], || {
        let (out, batch, saved) = forward(&x.primitive, &g, &b, eps);
        stats = Some(batch);
        (out, saved)
    });
    (out, stats.expect("the forward ran"))
}

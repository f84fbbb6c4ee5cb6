//! L_rlcl (METHOD.md §4: ARM rectification, KL into the student, optional certainty weights) as
//! one fused op with its own backward on the CPU training backend.
//!
//! Composed from Burn ops, one direction of RLCL is some forty passes over the class axis of
//! `[B, K, H, W]` (two softmaxes, the JS divergence, entropies, the ARM's λ, the KL), each a
//! strided walk in NCHW. Here one pass per image does all of it per pixel, and stores
//! `∂L/∂z_s` up to the upstream factor, since everything but the student's log-softmax is
//! detached (teacher side, the ARM's inputs, the pixel weights):
//! `∂L/∂z_s,k = τ·w_i/N·(softmax(z_s/τ)_k·Σ_j q_j − q_k)` for pixel i of N, rectified label q,
//! normalised pixel weight w_i (1 without weighting).
//!
//! Images run in parallel; their partial sums are added in image order, so a run does not depend
//! on the thread count. `CTRCL_BURN_LOSS=1` falls back to the composed ops.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::Shape as StdShape;
use ctrcl_models::cpu::activation::exp;
use ctrcl_models::cpu::{
    backprop_unary, cast, flex_tensor, record_unary, CpuTrain, CpuTrainTensor,
};
use rayon::prelude::*;

use crate::config::{PixelWeight, Rectify, RlclConfig};

/// Floor inside logarithms and of the mean pixel weight (as the composed ops).
const LOG_EPS: f32 = 1e-8;

/// L_rlcl^{A→B} on the CPU training backend; `None` elsewhere (the caller composes it).
///
/// # Shapes
/// `teacher_logits` (values only), `student_logits`, `onehot`: `[B, K, H, W]` → `[1]`.
pub fn rlcl_loss<B: Backend>(
    teacher_logits: &Tensor<B, 4>,
    student_logits: &Tensor<B, 4>,
    onehot: &Tensor<B, 4>,
    cfg: &RlclConfig,
) -> Option<Tensor<B, 1>> {
    fused(teacher_logits, student_logits, Some(onehot), cfg)
}

/// Plain distillation τ²·mean_i KL(softmax(sg[z_t]/τ) ‖ softmax(z_s/τ)) — DML (τ = 1), KD, and
/// KDCL with the ensemble as `teacher_logits` — on the CPU training backend (RLCL without
/// rectification or weights); `None` elsewhere.
///
/// # Shapes
/// `teacher_logits` (values only), `student_logits`: `[B, K, H, W]` → `[1]`.
pub fn distill_loss<B: Backend>(
    teacher_logits: &Tensor<B, 4>,
    student_logits: &Tensor<B, 4>,
    temperature: f64,
) -> Option<Tensor<B, 1>> {
    let cfg = RlclConfig {
        rectify: Rectify::None,
        pixel_weight: PixelWeight::None,
        temperature,
        ..RlclConfig::default()
    };
    fused(teacher_logits, student_logits, None, &cfg)
}

fn fused<B: Backend>(
    teacher_logits: &Tensor<B, 4>,
    student_logits: &Tensor<B, 4>,
    onehot: Option<&Tensor<B, 4>>,
    cfg: &RlclConfig,
) -> Option<Tensor<B, 1>> {
    if TypeId::of::<B>() != TypeId::of::<CpuTrain>()
        || [Some(teacher_logits), Some(student_logits), onehot]
            .iter()
            .flatten()
            .any(|t| t.dtype() != DType::F32)
        || !super::seg_cpu::enabled()
    {
        return None;
    }
    let t: CpuTrainTensor = cast(teacher_logits.clone().into_primitive().tensor());
    let s: CpuTrainTensor = cast(student_logits.clone().into_primitive().tensor());
    let y: Option<CpuTrainTensor> = onehot.map(|y| cast(y.clone().into_primitive().tensor()));
    let y = y.map(|y| y.primitive);
    let out: B::FloatTensorPrimitive = cast(autodiff(&t.primitive, s, y.as_ref(), cfg));
    Some(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

/// `∂L/∂z_s` for an upstream gradient of 1, `[B, K, H, W]`.
#[derive(Debug, Clone)]
struct Saved {
    dims: [usize; 4],
    grad: Vec<f32>,
}

/// Σ_k p·log max(p, ε) over a pixel's classes.
fn neg_entropy(p: &[f32]) -> f32 {
    p.iter().map(|&v| v * v.max(LOG_EPS).ln()).sum()
}

/// `out = softmax(z/τ)` over one pixel's classes; returns log Σ exp(z/τ − max) + max, so that
/// log_softmax_k = z_k/τ − that.
fn softmax_into(z: &[f32], tau: f32, out: &mut [f32]) -> f32 {
    let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v / tau));
    let mut sum = 0.0;
    for (o, &v) in out.iter_mut().zip(z) {
        *o = exp(v / tau - max);
        sum += *o;
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
    max + sum.ln()
}

/// The ARM's λ for one pixel (0 where the teacher is right).
fn lambda(pt: &[f32], ps: &[f32], y: &[f32], scratch: &mut [f32], cfg: &RlclConfig) -> f32 {
    let k = pt.len();
    let p_y: f32 = pt.iter().zip(y).map(|(p, t)| p * t).sum();
    // Subtracting 2 from the true class removes it from the maximum (probabilities are ≤ 1).
    let p_max = pt
        .iter()
        .zip(y)
        .fold(f32::NEG_INFINITY, |m, (p, t)| m.max(p - 2.0 * t));
    if p_y > p_max {
        return 0.0;
    }
    match cfg.rectify {
        Rectify::None => 0.0,
        Rectify::Hard => 1.0,
        Rectify::Adaptive => {
            let delta = cfg.margin as f32;
            let lambda_min =
                ((p_max - p_y + delta) / (p_max - p_y + 1.0).max(LOG_EPS)).clamp(0.0, 1.0);
            let alignment = 1.0 - p_y;
            // JS(p_t, p_s) with m = (p_t + p_s)/2.
            for ((m, a), b) in scratch.iter_mut().zip(pt).zip(ps) {
                *m = ((a + b) * 0.5).max(LOG_EPS).ln();
            }
            let cross = |p: &[f32]| -> f32 { p.iter().zip(&*scratch).map(|(p, l)| p * l).sum() };
            let (ent_t, ent_s) = (neg_entropy(pt), neg_entropy(ps));
            let js = (ent_t - cross(pt)) * 0.5 + (ent_s - cross(ps)) * 0.5;
            let similarity = 1.0 - js / std::f32::consts::LN_2;
            let certainty = ent_t / (k as f32).ln() + 1.0;
            let dynamic = (alignment * cfg.alignment_weight as f32
                + similarity * cfg.similarity_weight as f32
                + certainty * cfg.certainty_weight as f32)
                .clamp(0.0, 1.0);
            lambda_min.max(dynamic)
        }
    }
}

/// Per image: Σ w_raw·KL and Σ w_raw (f64), plus per pixel the raw weight; `grad` gets
/// `softmax(z_s/τ)·Σq − q` per pixel and class.
struct Partial {
    weighted_kl: f64,
    weight_sum: f64,
    weights: Vec<f32>,
}

/// `y`: the one-hot labels, or `None` for plain distillation (`cfg.rectify` must be `None`).
fn forward(
    t: &FlexTensor,
    s: &FlexTensor,
    y: Option<&FlexTensor>,
    cfg: &RlclConfig,
) -> (f32, Saved) {
    assert!(
        y.is_some() || cfg.rectify == Rectify::None,
        "rectification needs labels"
    );
    let dims: [usize; 4] = s.layout().shape().iter().copied().collect::<Vec<_>>()[..]
        .try_into()
        .expect("4D logits");
    let [b, k, h, w] = dims;
    let hw = h * w;
    let (t, s) = (t.to_contiguous(), s.to_contiguous());
    let y = y.map(|y| y.to_contiguous());
    let (ts, ss): (&[f32], &[f32]) = (t.storage(), s.storage());
    // Per image, its labels; without labels every class is 0 and λ stays 0 (no rectification).
    let labels: Vec<Option<&[f32]>> = (0..b)
        .map(|i| {
            y.as_ref()
                .map(|y| &y.storage::<f32>()[i * k * hw..(i + 1) * k * hw])
        })
        .collect();
    let tau = cfg.temperature as f32;
    let certainty_weighted = cfg.pixel_weight == PixelWeight::Certainty;
    let ln_k = (k as f32).ln();
    let mut grad = vec![0.0f32; ss.len()];
    let partials: Vec<Partial> = grad
        .par_chunks_mut(k * hw)
        .zip(ts.par_chunks(k * hw))
        .zip(ss.par_chunks(k * hw).zip(labels.par_iter()))
        .map(|((g, t), (s, y))| {
            let mut buf = vec![0.0f32; 7 * k];
            let mut part = Partial {
                weighted_kl: 0.0,
                weight_sum: 0.0,
                weights: vec![1.0; hw],
            };
            for i in 0..hw {
                let (zt, rest) = buf.split_at_mut(k);
                let (zs, rest) = rest.split_at_mut(k);
                let (yi, rest) = rest.split_at_mut(k);
                let (pt, rest) = rest.split_at_mut(k);
                let (ps, rest) = rest.split_at_mut(k);
                let (q, scratch) = rest.split_at_mut(k);
                for c in 0..k {
                    zt[c] = t[c * hw + i];
                    zs[c] = s[c * hw + i];
                    yi[c] = y.map_or(0.0, |y| y[c * hw + i]);
                }
                softmax_into(zt, tau, pt);
                let log_norm = softmax_into(zs, tau, ps);
                let l = lambda(pt, ps, yi, scratch, cfg);
                for c in 0..k {
                    q[c] = pt[c] * (1.0 - l) + yi[c] * l;
                }
                let ent_q = neg_entropy(q);
                let cross: f32 = (0..k).map(|c| q[c] * (zs[c] / tau - log_norm)).sum();
                let kl = ent_q - cross;
                let weight = if certainty_weighted {
                    ent_q / ln_k + 1.0
                } else {
                    1.0
                };
                part.weights[i] = weight;
                part.weighted_kl += f64::from(weight * kl);
                part.weight_sum += f64::from(weight);
                let q_sum: f32 = q.iter().sum();
                for c in 0..k {
                    g[c * hw + i] = ps[c] * q_sum - q[c];
                }
            }
            part
        })
        .collect();
    let n = (b * hw) as f64;
    let (mut weighted_kl, mut weight_sum) = (0.0f64, 0.0f64);
    for part in &partials {
        weighted_kl += part.weighted_kl;
        weight_sum += part.weight_sum;
    }
    // Weights are normalised by their mean (floored), as the composed op does.
    let mean_weight = if certainty_weighted {
        (weight_sum / n).max(f64::from(LOG_EPS))
    } else {
        1.0
    };
    let tau64 = cfg.temperature;
    let loss = tau64 * tau64 * weighted_kl / mean_weight / n;
    let scale = (tau64 / mean_weight / n) as f32;
    grad.par_chunks_mut(k * hw)
        .zip(partials.par_iter())
        .for_each(|(g, part)| {
            for c in 0..k {
                for (gi, &wi) in g[c * hw..(c + 1) * hw].iter_mut().zip(&part.weights) {
                    *gi *= scale * wi;
                }
            }
        });
    (loss as f32, Saved { dims, grad })
}

#[derive(Debug)]
struct RlclBackward;

impl Backward<Flex, 1> for RlclBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backprop_unary(ops, grads, |g, Saved { dims, mut grad }| {
            let g = g.to_contiguous();
            let g = g.storage::<f32>()[0];
            grad.par_iter_mut().for_each(|v| *v *= g);
            flex_tensor(grad, StdShape::from(dims.to_vec()))
        });
    }
}

fn autodiff(
    t: &FlexTensor,
    s: CpuTrainTensor,
    y: Option<&FlexTensor>,
    cfg: &RlclConfig,
) -> CpuTrainTensor {
    record_unary(RlclBackward, &s, || {
        let (loss, saved) = forward(t, &s.primitive, y, cfg);
        (flex_tensor(vec![loss], StdShape::new([1])), saved)
    })
}

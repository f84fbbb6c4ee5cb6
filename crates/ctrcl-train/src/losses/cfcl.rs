//! CFCL — class-aware feature-wise collaborative learning (METHOD.md §5).
//!
//! A Category Perception Module (CPM) projects a student's decoder features to a d-dimensional
//! unit sphere; class prototypes are the ground-truth-weighted means of the projected features of
//! the batch; every pixel's cosine similarities to the prototypes give a category perception map.
//! The perception loss teaches each student to perceive categories from its features, and the
//! alignment term makes the two students' perception maps agree. The CPM is training-only: it is
//! not part of a deployed student.

use crate::losses::total;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, relu, softmax};
use ctrcl_models::batchnorm::{BatchNorm2d, BatchNorm2dConfig};
use ctrcl_models::ops;

/// Denominator floor of prototype averages and normalisations.
const EPS: f64 = 1e-6;
/// Logit given to classes absent from the batch so their softmax mass is ~0.
const ABSENT_LOGIT: f64 = -1e4;

/// Projection head: 1×1 conv → BatchNorm → ReLU → 1×1 conv to d channels.
#[derive(Module, Debug)]
pub struct ProjectionHead<B: Backend> {
    conv1: Conv2d<B>,
    norm: BatchNorm2d<B>,
    conv2: Conv2d<B>,
}

impl<B: Backend> ProjectionHead<B> {
    pub fn new(channels: usize, dim: usize, device: &B::Device) -> Self {
        ProjectionHead {
            conv1: Conv2dConfig::new([channels, channels], [1, 1]).init(device),
            norm: BatchNorm2dConfig::new(channels).init(device),
            conv2: Conv2dConfig::new([channels, dim], [1, 1]).init(device),
        }
    }

    /// # Shapes
    /// `[B, C, h, w]` → `[B, d, h, w]`, unit L2 norm per pixel.
    pub fn forward(&self, features: Tensor<B, 4>) -> Tensor<B, 4> {
        // The students' convolution path (a GEMM with its own backward on the CPU backend).
        let h = relu(self.norm.forward(ops::conv2d(&self.conv1, features)));
        l2_normalize(ops::conv2d(&self.conv2, h), 1)
    }
}

/// x / sqrt(Σx² + ε²): differentiable everywhere, so an all-zero vector (the prototype of a class
/// absent from the batch) gets a zero gradient instead of sqrt's infinite one at 0.
fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    let norm = (x.clone().square().sum_dim(dim) + EPS * EPS).sqrt();
    x / norm
}

/// Area-downsamples a one-hot map by an integer `stride` (soft class fractions per cell).
///
/// # Shapes
/// `[B, K, H, W]` → `[B, K, H/stride, W/stride]`.
pub fn area_downsample<B: Backend>(onehot: Tensor<B, 4>, stride: usize) -> Tensor<B, 4> {
    let [b, k, h, w] = onehot.dims();
    let (oh, ow) = (h / stride, w / stride);
    onehot
        .reshape([b, k, oh, stride, ow, stride])
        .mean_dim(5)
        .mean_dim(3)
        .reshape([b, k, oh, ow])
}

/// Category perception of one student at one tap.
pub struct Perception<B: Backend> {
    /// log P_s: log-softmax over classes of cos(f, v_k)/t, `[N, K]` with N = B·h·w.
    pub log_probs: Tensor<B, 2>,
}

/// Computes the category perception map from projected features and soft class fractions.
///
/// # Shapes
/// `projected`: `[B, d, h, w]` (unit norm per pixel), `fractions`: `[B, K, h, w]` → `[N, K]`.
pub fn perceive<B: Backend>(
    projected: Tensor<B, 4>,
    fractions: Tensor<B, 4>,
    temperature: f64,
) -> Perception<B> {
    let [b, d, h, w] = projected.dims();
    let k = fractions.dims()[1];
    let n = b * h * w;
    let f = projected.swap_dims(0, 1).reshape([d, n]); // [d, N]
    let m = fractions.swap_dims(0, 1).reshape([k, n]); // [K, N]
    let mass = m.clone().sum_dim(1); // [K, 1]
    let prototypes = l2_normalize(m.matmul(f.clone().transpose()) / (mass.clone() + EPS), 1); // [K, d]
    let cosine = f.transpose().matmul(prototypes.transpose()); // [N, K]
    let absent = mass.lower_equal_elem(0.0).float().reshape([1, k]) * ABSENT_LOGIT;
    Perception {
        log_probs: log_softmax(cosine / temperature + absent, 1),
    }
}

/// L_cp = CE(P_s, arg-max of the class fractions), mean over pixels.
///
/// # Shapes
/// `perception.log_probs`: `[N, K]`, `fractions`: `[B, K, h, w]` → scalar `[1]`.
pub fn perception_loss<B: Backend>(
    perception: &Perception<B>,
    fractions: Tensor<B, 4>,
) -> Tensor<B, 1> {
    let onehot = dominant_onehot(fractions);
    let n = onehot.dims()[0];
    total(perception.log_probs.clone() * onehot).neg() / n as f64
}

/// One-hot of each cell's dominant class (arg-max of its fractions; the lowest index on ties).
///
/// # Shapes
/// `[B, K, h, w]` → `[N, K]` in [`perceive`]'s pixel order.
fn dominant_onehot<B: Backend>(fractions: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, k, h, w] = fractions.dims();
    let n = b * h * w;
    let dominant = fractions
        .swap_dims(0, 1)
        .reshape([k, n])
        .argmax(0)
        .reshape([n]);
    dominant.one_hot::<2>(k).float()
}

/// KL(sg[P_A] ‖ P_B) per cell and class, before summing.
///
/// # Shapes
/// `[N, K]` log-probabilities twice → `[N, K]`.
fn alignment_terms<B: Backend>(teacher: &Perception<B>, student: &Perception<B>) -> Tensor<B, 2> {
    let log_p = teacher.log_probs.clone().detach();
    let p = log_p.clone().exp();
    p * (log_p - student.log_probs.clone())
}

/// L_al^{A→B} = KL(sg[P_A] ‖ P_B), mean over pixels.
///
/// # Shapes
/// `[N, K]` log-probabilities twice → scalar `[1]`.
pub fn alignment_loss<B: Backend>(
    teacher: &Perception<B>,
    student: &Perception<B>,
) -> Tensor<B, 1> {
    let n = teacher.log_probs.dims()[0];
    total(alignment_terms(teacher, student)) / n as f64
}

/// One student's side of CFCL: its CPM heads and its features at the taps, both in tap order.
pub struct Taps<'a, B: Backend> {
    pub heads: &'a [ProjectionHead<B>],
    pub features: Vec<Tensor<B, 4>>,
}

/// L_CFCL of one student (METHOD.md §5), summed over the taps: its perception loss L_cp plus
/// the alignment of its perception to the peer's, L_al^{peer→own} (the peer's side detached).
///
/// # Shapes
/// features at tap i: `[B, C_i, h_i, w_i]`; `fractions[i]`: `[B, K, h_i, w_i]` → scalar `[1]`.
pub fn cfcl_loss<B: Backend>(
    own: Taps<B>,
    peer: Taps<B>,
    fractions: &[Tensor<B, 4>],
    temperature: f64,
    device: &B::Device,
) -> Tensor<B, 1> {
    sum_over_taps(
        own,
        peer,
        fractions,
        temperature,
        device,
        |p_own, p_peer, frac| (perception_loss(p_own, frac), alignment_loss(p_peer, p_own)),
    )
}

/// Σ over the taps of the perception and alignment terms that `terms(own perception, peer
/// perception, fractions)` returns, each student's perception from its CPM head at that tap
/// (added as `l + L_cp + L_al`, tap by tap, the order the supervised loss always had).
fn sum_over_taps<B: Backend>(
    own: Taps<B>,
    peer: Taps<B>,
    fractions: &[Tensor<B, 4>],
    temperature: f64,
    device: &B::Device,
    terms: impl Fn(&Perception<B>, &Perception<B>, Tensor<B, 4>) -> (Tensor<B, 1>, Tensor<B, 1>),
) -> Tensor<B, 1> {
    let mut l = Tensor::<B, 1>::zeros([1], device);
    for (i, (f_own, f_peer)) in own.features.into_iter().zip(peer.features).enumerate() {
        let frac = fractions[i].clone();
        let p_own = perceive(own.heads[i].forward(f_own), frac.clone(), temperature);
        let p_peer = perceive(peer.heads[i].forward(f_peer), frac.clone(), temperature);
        let (cp, al) = terms(&p_own, &p_peer, frac);
        l = l + cp + al;
    }
    l
}

/// The trusted share of each cell of `fractions` (Σ_k of its class fractions), in [`perceive`]'s
/// pixel order: 1 where every pixel of the cell is labelled, less where pseudo-labels were
/// untrusted (METHOD.md §9).
///
/// # Shapes
/// `[B, K, h, w]` → `[N, 1]` with N = B·h·w.
pub fn cell_weights<B: Backend>(fractions: Tensor<B, 4>) -> Tensor<B, 2> {
    let [b, _, h, w] = fractions.dims();
    fractions.sum_dim(1).reshape([b * h * w, 1])
}

/// [`perception_loss`] with each cell's term multiplied by its weight, mean over all cells.
///
/// # Shapes
/// `perception.log_probs`: `[N, K]`, `fractions`: `[B, K, h, w]`, `weights`: `[N, 1]` → `[1]`.
pub fn perception_loss_weighted<B: Backend>(
    perception: &Perception<B>,
    fractions: Tensor<B, 4>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let onehot = dominant_onehot(fractions);
    let n = onehot.dims()[0];
    total(perception.log_probs.clone() * onehot * weights).neg() / n as f64
}

/// [`alignment_loss`] with each cell's term multiplied by its weight, mean over all cells.
///
/// # Shapes
/// `[N, K]` log-probabilities twice, `weights`: `[N, 1]` → `[1]`.
pub fn alignment_loss_weighted<B: Backend>(
    teacher: &Perception<B>,
    student: &Perception<B>,
    weights: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let n = teacher.log_probs.dims()[0];
    total(alignment_terms(teacher, student) * weights) / n as f64
}

/// [`cfcl_loss`] on pseudo-labelled pixels (METHOD.md §9): `fractions` are the area-downsampled
/// one-hot pseudo-labels times the trust mask, so untrusted pixels add nothing to the
/// prototypes, and each cell's perception and alignment terms are weighted by its trusted share
/// ([`cell_weights`]).
///
/// # Shapes
/// As [`cfcl_loss`].
pub fn cfcl_loss_trusted<B: Backend>(
    own: Taps<B>,
    peer: Taps<B>,
    fractions: &[Tensor<B, 4>],
    temperature: f64,
    device: &B::Device,
) -> Tensor<B, 1> {
    sum_over_taps(
        own,
        peer,
        fractions,
        temperature,
        device,
        |p_own, p_peer, frac| {
            let weights = cell_weights(frac.clone());
            (
                perception_loss_weighted(p_own, frac, weights.clone()),
                alignment_loss_weighted(p_peer, p_own, weights),
            )
        },
    )
}

/// The perception loss alone, summed over the taps: a frozen teacher's CPM heads learning to
/// perceive categories on its fixed features (`ctrcl-offline`).
///
/// # Shapes
/// As [`cfcl_loss`].
pub fn perception_only_loss<B: Backend>(
    own: Taps<B>,
    fractions: &[Tensor<B, 4>],
    temperature: f64,
    device: &B::Device,
) -> Tensor<B, 1> {
    let mut l = Tensor::<B, 1>::zeros([1], device);
    for (i, f) in own.features.into_iter().enumerate() {
        let p = perceive(own.heads[i].forward(f), fractions[i].clone(), temperature);
        l = l + perception_loss(&p, fractions[i].clone());
    }
    l
}

/// Softmax probabilities of a perception (for inspection and tests).
pub fn probabilities<B: Backend>(perception: &Perception<B>) -> Tensor<B, 2> {
    softmax(perception.log_probs.clone(), 1)
}

//! Supervised loss L_seg = w_ce·CE + w_dice·Dice (METHOD.md §3, SSL4MIS form).

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Smoothing of the Dice ratio (SSL4MIS `DiceLoss`).
pub const DICE_EPS: f64 = 1e-5;

/// Mean cross-entropy over pixels.
///
/// # Shapes
/// `logits`: `[B, K, H, W]`, `onehot`: `[B, K, H, W]` → scalar `[1]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 4>, onehot: Tensor<B, 4>) -> Tensor<B, 1> {
    let [b, _, h, w] = logits.dims();
    let per_pixel = (log_softmax(logits, 1) * onehot).sum_dim(1);
    per_pixel.sum().neg() / (b * h * w) as f64
}

/// Soft Dice loss averaged over all K classes (background included), sums over the batch:
/// per class 1 − (2Σp·t + ε)/(Σp² + Σt² + ε).
///
/// # Shapes
/// `probs`, `onehot`: `[B, K, H, W]` → scalar `[1]`.
pub fn dice_loss<B: Backend>(probs: Tensor<B, 4>, onehot: Tensor<B, 4>) -> Tensor<B, 1> {
    let k = probs.dims()[1];
    let per_class = |t: Tensor<B, 4>| t.sum_dim(0).sum_dim(2).sum_dim(3).reshape([k]);
    let inter = per_class(probs.clone() * onehot.clone());
    let p2 = per_class(probs.square());
    let t2 = per_class(onehot.square());
    let dice = (inter * 2.0 + DICE_EPS) / (p2 + t2 + DICE_EPS);
    (dice.neg() + 1.0).mean()
}

/// The terms of L_seg, kept apart for logging.
pub struct SegTerms<B: Backend> {
    pub ce: Tensor<B, 1>,
    pub dice: Tensor<B, 1>,
    pub total: Tensor<B, 1>,
}

/// # Shapes
/// `logits`, `onehot`: `[B, K, H, W]`.
pub fn seg_loss<B: Backend>(
    logits: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    ce_weight: f64,
    dice_weight: f64,
) -> SegTerms<B> {
    let ce = cross_entropy(logits.clone(), onehot.clone());
    let dice = dice_loss(softmax(logits, 1), onehot);
    let total = ce.clone() * ce_weight + dice.clone() * dice_weight;
    SegTerms { ce, dice, total }
}

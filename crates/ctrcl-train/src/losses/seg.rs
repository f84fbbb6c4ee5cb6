//! Supervised loss L_seg = w_ce·CE + w_dice·Dice (METHOD.md §3, SSL4MIS form).

use crate::losses::{average, total, DICE_EPS};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Mean cross-entropy over pixels.
///
/// # Shapes
/// `logits`: `[B, K, H, W]`, `onehot`: `[B, K, H, W]` → scalar `[1]`.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 4>, onehot: Tensor<B, 4>) -> Tensor<B, 1> {
    let [b, _, h, w] = logits.dims();
    let per_pixel = (log_softmax(logits, 1) * onehot).sum_dim(1);
    total(per_pixel).neg() / (b * h * w) as f64
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
    average(dice.neg() + 1.0)
}

/// The terms of L_seg, kept apart for logging.
pub struct SegTerms<B: Backend> {
    pub ce: Tensor<B, 1>,
    pub dice: Tensor<B, 1>,
    pub total: Tensor<B, 1>,
}

/// On the CPU training backend CE and Dice come from one fused op ([`super::seg_cpu`]), elsewhere
/// from [`cross_entropy`] and [`dice_loss`].
///
/// # Shapes
/// `logits`, `onehot`: `[B, K, H, W]`.
pub fn seg_loss<B: Backend>(
    logits: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    ce_weight: f64,
    dice_weight: f64,
) -> SegTerms<B> {
    let (ce, dice) = match super::seg_cpu::ce_and_dice(&logits, &onehot) {
        Some(terms) => (terms.clone().narrow(0, 0, 1), terms.narrow(0, 1, 1)),
        None => (
            cross_entropy(logits.clone(), onehot.clone()),
            dice_loss(softmax(logits, 1), onehot),
        ),
    };
    let total = ce.clone() * ce_weight + dice.clone() * dice_weight;
    SegTerms { ce, dice, total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{Distribution, Tolerance};

    type B = Autodiff<Flex>;

    /// The fused CPU op against the composed one: both terms and the gradient of CE alone, Dice
    /// alone and a mix, on a batch of
    /// three images of 37×41 pixels (several pixel blocks, a ragged last one), 5 classes, with a
    /// class absent from the targets and soft-ish large logits.
    #[test]
    fn fused_cpu_terms_and_gradients_match_the_composed_ones() {
        let device = Default::default();
        let [b, k, h, w] = [3, 5, 37, 41];
        let z0 = Tensor::<B, 4>::random([b, k, h, w], Distribution::Normal(0.0, 3.0), &device);
        let labels =
            Tensor::<B, 3>::random([b, h, w], Distribution::Uniform(0.0, 4.0), &device).int(); // classes 0..3, class 4 absent
        let onehot: Tensor<B, 4> = labels.one_hot::<4>(k).permute([0, 3, 1, 2]).float();
        for (wc, wd) in [(1.0, 0.0), (0.0, 1.0), (0.3, 0.7)] {
            let fused = {
                let z = z0.clone().detach().require_grad();
                let terms = seg_loss(z.clone(), onehot.clone(), wc, wd);
                let g = terms.total.backward();
                (
                    terms.ce.into_data(),
                    terms.dice.into_data(),
                    z.grad(&g).unwrap().into_data(),
                )
            };
            let composed = {
                let z = z0.clone().detach().require_grad();
                let ce = cross_entropy(z.clone(), onehot.clone());
                let dice = dice_loss(softmax(z.clone(), 1), onehot.clone());
                let g = (ce.clone() * wc + dice.clone() * wd).backward();
                (
                    ce.inner().into_data(),
                    dice.inner().into_data(),
                    z.grad(&g).unwrap().into_data(),
                )
            };
            // f64 sums in the fused op, f32 in Burn's: agreement to float rounding. The
            // gradients are ~1/N ≈ 2e-4 per pixel, so the absolute floor sits far below them.
            let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-9);
            fused.0.assert_approx_eq::<f32>(&composed.0, tol);
            fused.1.assert_approx_eq::<f32>(&composed.1, tol);
            fused.2.assert_approx_eq::<f32>(&composed.2, tol);
        }
    }
}

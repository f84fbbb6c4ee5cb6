//! Pseudo-labels of the pair on unlabelled pixels (METHOD.md §9): the mean of both students'
//! probabilities p̄ = (p_A + p_B)/2 (detached), the pseudo-label ŷ = arg-max p̄, and the trusted
//! set M = {max p̄ ≥ τ_u}. RLCL and CFCL then act on M with ŷ in place of the ground truth
//! (`rlcl::rlcl_loss_masked`, `cfcl::cfcl_loss_trusted`).

use crate::losses::onehot_of;
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// The pair's pseudo-labels on a batch of unlabelled images.
pub struct PseudoLabels<B: Backend> {
    /// One-hot of ŷ, `[B, K, H, W]`.
    pub onehot: Tensor<B, 4>,
    /// 1 where max p̄ ≥ τ_u, else 0, `[B, 1, H, W]`.
    pub mask: Tensor<B, 4>,
}

/// Pseudo-labels from both students' logits (detached here: no gradient flows through them).
/// A tie in the arg-max goes to the lower class index.
///
/// # Shapes
/// `logits_a`, `logits_b`: `[B, K, H, W]` → onehot `[B, K, H, W]`, mask `[B, 1, H, W]`.
pub fn pseudo_labels<B: Backend>(
    logits_a: Tensor<B, 4>,
    logits_b: Tensor<B, 4>,
    threshold: f64,
) -> PseudoLabels<B> {
    let k = logits_a.dims()[1];
    let mean = (softmax(logits_a.detach(), 1) + softmax(logits_b.detach(), 1)) / 2.0;
    let mask = mean
        .clone()
        .max_dim(1)
        .greater_equal_elem(threshold)
        .float();
    let onehot = onehot_of(mean.argmax(1), k);
    PseudoLabels { onehot, mask }
}

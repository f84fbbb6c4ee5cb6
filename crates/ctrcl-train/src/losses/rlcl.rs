//! RLCL — rectified logit-wise collaborative learning (METHOD.md §4), one direction A → B.
//!
//! The teacher side A is detached: the ground truth selects the pixels where A's soft label is
//! wrong, the Adaptive Rectification Module (ARM) mixes them towards the one-hot label just enough
//! (at least λ_min, which guarantees the true class wins by the margin δ) or more when A is far
//! from the truth, agrees with B, or is confidently wrong; the result is distilled into B.

use crate::config::{PixelWeight, Rectify, RlclConfig};
use crate::losses::{average, total};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Floor inside logarithms of probabilities.
const LOG_EPS: f64 = 1e-8;

/// Σ_k p·log p along the class axis, with 0·log 0 = 0.
///
/// # Shapes
/// `[B, K, H, W]` → `[B, 1, H, W]`.
fn neg_entropy<B: Backend>(p: Tensor<B, 4>) -> Tensor<B, 4> {
    (p.clone() * p.clamp_min(LOG_EPS).log()).sum_dim(1)
}

/// The ARM's output for one direction, all detached.
pub struct Rectified<B: Backend> {
    /// Rectified soft labels q_A, `[B, K, H, W]`.
    pub target: Tensor<B, 4>,
    /// λ per pixel (0 outside the wrong region), `[B, 1, H, W]`.
    pub lambda: Tensor<B, 4>,
    /// 1 where A's arg-max is not the true class, `[B, 1, H, W]`.
    pub wrong: Tensor<B, 4>,
}

/// Rectifies the teacher's soft labels.
///
/// Wrong region: pixels where the true-class probability is not strictly larger than every other
/// class's (a tie counts as wrong: rectifying it only adds the margin).
///
/// # Shapes
/// `p_teacher`, `p_student`, `onehot`: `[B, K, H, W]` (probabilities at temperature τ, detached).
pub fn rectify<B: Backend>(
    p_teacher: Tensor<B, 4>,
    p_student: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    cfg: &RlclConfig,
) -> Rectified<B> {
    let k = p_teacher.dims()[1];
    let p_y = (p_teacher.clone() * onehot.clone()).sum_dim(1);
    // Subtracting 2 from the true class removes it from the maximum (probabilities are ≤ 1).
    let p_max = (p_teacher.clone() - onehot.clone() * 2.0).max_dim(1);
    let wrong = p_y.clone().lower_equal(p_max.clone()).float();
    let lambda = match cfg.rectify {
        Rectify::None => wrong.zeros_like(),
        Rectify::Hard => wrong.clone(),
        Rectify::Adaptive => {
            let delta = cfg.margin;
            // The denominator is 0 only for a saturated right pixel (p_y = 1, masked out below);
            // the floor keeps 0/0 from turning the whole target into NaN.
            let lambda_min = ((p_max.clone() - p_y.clone() + delta)
                / (p_max - p_y.clone() + 1.0).clamp_min(LOG_EPS))
            .clamp(0.0, 1.0);
            let alignment = p_y.neg() + 1.0;
            let similarity =
                js_divergence(p_teacher.clone(), p_student) / (-std::f64::consts::LN_2) + 1.0;
            let certainty = neg_entropy(p_teacher.clone()) / (k as f64).ln() + 1.0;
            let dynamic = (alignment * cfg.alignment_weight
                + similarity * cfg.similarity_weight
                + certainty * cfg.certainty_weight)
                .clamp(0.0, 1.0);
            lambda_min.max_pair(dynamic) * wrong.clone()
        }
    };
    let target = p_teacher.clone() * (lambda.clone().neg() + 1.0) + onehot * lambda.clone();
    Rectified {
        target,
        lambda,
        wrong,
    }
}

/// Jensen–Shannon divergence per pixel (natural log, in [0, ln 2]).
///
/// # Shapes
/// `[B, K, H, W]` twice → `[B, 1, H, W]`.
pub fn js_divergence<B: Backend>(p: Tensor<B, 4>, q: Tensor<B, 4>) -> Tensor<B, 4> {
    let m = (p.clone() + q.clone()) * 0.5;
    let log_m = m.clamp_min(LOG_EPS).log();
    let kl_pm = (neg_entropy(p.clone()) - (p * log_m.clone()).sum_dim(1)) * 0.5;
    let kl_qm = (neg_entropy(q.clone()) - (q * log_m).sum_dim(1)) * 0.5;
    kl_pm + kl_qm
}

/// KL(target ‖ softmax(logits/τ)) per pixel: Σ_k target·(log target − log_softmax).
///
/// # Shapes
/// `target`: `[B, K, H, W]` (detached), `logits`: `[B, K, H, W]` → `[B, 1, H, W]`.
pub fn kl_to_logits<B: Backend>(
    target: Tensor<B, 4>,
    logits: Tensor<B, 4>,
    temperature: f64,
) -> Tensor<B, 4> {
    let log_q = log_softmax(logits / temperature, 1);
    neg_entropy(target.clone()) - (target * log_q).sum_dim(1)
}

/// L_rlcl^{A→B} = τ²·mean_i w_i·KL(q_A,i ‖ softmax(z_B,i/τ)).
///
/// # Shapes
/// `teacher_logits` (detached inside), `student_logits`, `onehot`: `[B, K, H, W]` → scalar `[1]`.
pub fn rlcl_loss<B: Backend>(
    teacher_logits: Tensor<B, 4>,
    student_logits: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    cfg: &RlclConfig,
) -> Tensor<B, 1> {
    match super::rlcl_cpu::rlcl_loss(&teacher_logits, &student_logits, &onehot, cfg) {
        Some(loss) => loss,
        None => rlcl_loss_composed(teacher_logits, student_logits, onehot, cfg),
    }
}

/// Per pixel KL(q_A ‖ softmax(z_B/τ)) and the ARM's output q_A (teacher side detached).
///
/// # Shapes
/// `[B, K, H, W]` three times → `[B, 1, H, W]`.
fn rectified_kl<B: Backend>(
    teacher_logits: Tensor<B, 4>,
    student_logits: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    cfg: &RlclConfig,
) -> (Tensor<B, 4>, Rectified<B>) {
    let tau = cfg.temperature;
    let p_teacher = softmax(teacher_logits.detach() / tau, 1);
    let p_student = softmax(student_logits.clone().detach() / tau, 1);
    let rectified = rectify(p_teacher, p_student, onehot, cfg);
    let kl = kl_to_logits(rectified.target.clone(), student_logits, tau);
    (kl, rectified)
}

/// [`rlcl_loss`] from Burn ops (every backend; the CPU training backend runs the fused op).
fn rlcl_loss_composed<B: Backend>(
    teacher_logits: Tensor<B, 4>,
    student_logits: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    cfg: &RlclConfig,
) -> Tensor<B, 1> {
    let tau = cfg.temperature;
    let (kl, rectified) = rectified_kl(teacher_logits, student_logits, onehot, cfg);
    let kl = match cfg.pixel_weight {
        PixelWeight::None => kl,
        PixelWeight::Certainty => {
            let k = rectified.target.dims()[1] as f64;
            let w = neg_entropy(rectified.target) / k.ln() + 1.0;
            let w = w.clone() / average(w).clamp_min(LOG_EPS).unsqueeze::<4>();
            kl * w
        }
    };
    average(kl) * (tau * tau)
}

/// RLCL on the trusted pixels of an unlabelled batch (METHOD.md §9): [`rlcl_loss`] with the
/// pseudo-label's one-hot in place of the ground truth, each pixel's divergence multiplied by its
/// trust `mask` (1 trusted, 0 not), and the mean taken over all pixels — FixMatch's convention,
/// so the term grows as the pair's agreement spreads. Certainty pixel weights are normalised to
/// mean 1 over the trusted pixels. With a mask of ones this is [`rlcl_loss`].
///
/// # Shapes
/// `teacher_logits` (detached inside), `student_logits`, `onehot`: `[B, K, H, W]`;
/// `mask`: `[B, 1, H, W]` → scalar `[1]`.
pub fn rlcl_loss_masked<B: Backend>(
    teacher_logits: Tensor<B, 4>,
    student_logits: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    mask: Tensor<B, 4>,
    cfg: &RlclConfig,
) -> Tensor<B, 1> {
    let tau = cfg.temperature;
    let (kl, rectified) = rectified_kl(teacher_logits, student_logits, onehot, cfg);
    let kl = kl * mask.clone();
    let kl = match cfg.pixel_weight {
        PixelWeight::None => kl,
        PixelWeight::Certainty => {
            let k = rectified.target.dims()[1] as f64;
            let w = neg_entropy(rectified.target) / k.ln() + 1.0;
            let trusted_mean = total(w.clone() * mask.clone()) / total(mask).clamp_min(1.0);
            kl * (w / trusted_mean.clamp_min(LOG_EPS).unsqueeze::<4>())
        }
    };
    average(kl) * (tau * tau)
}

/// DML's term KL(sg[softmax(z_peer)] ‖ softmax(z_self)) at τ = 1, mean over pixels.
///
/// # Shapes
/// `[B, K, H, W]` twice → scalar `[1]`.
pub fn dml_loss<B: Backend>(peer_logits: Tensor<B, 4>, own_logits: Tensor<B, 4>) -> Tensor<B, 1> {
    if let Some(loss) = super::rlcl_cpu::distill_loss(&peer_logits, &own_logits, 1.0) {
        return loss;
    }
    let target = softmax(peer_logits.detach(), 1);
    average(kl_to_logits(target, own_logits, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// Two pixels, two classes, true class 1 at both. Pixel 0 is wrong (p = [0.7, 0.3]);
    /// pixel 1 is right (p = [0.2, 0.8]).
    fn probs(values: [[f32; 2]; 2]) -> Tensor<Flex, 4> {
        // [B=1, K=2, H=1, W=2]: class-major.
        let data = vec![values[0][0], values[1][0], values[0][1], values[1][1]];
        Tensor::from_data(TensorData::new(data, [1, 2, 1, 2]), &Default::default())
    }

    #[test]
    fn hand_worked_arm_case() {
        let p = probs([[0.7, 0.3], [0.2, 0.8]]);
        let onehot = probs([[0.0, 1.0], [0.0, 1.0]]);
        // Only λ_min: the dynamic factors switched off.
        let cfg = RlclConfig {
            alignment_weight: 0.0,
            similarity_weight: 0.0,
            certainty_weight: 0.0,
            ..RlclConfig::default()
        };
        let r = rectify(p.clone(), p.clone(), onehot.clone(), &cfg);
        let lambda: Vec<f32> = r.lambda.into_data().to_vec().unwrap();
        let q: Vec<f32> = r.target.into_data().to_vec().unwrap(); // [q0(px0), q0(px1), q1(px0), q1(px1)]
                                                                  // λ_min = (p_max − p_y + δ)/(1 − p_y + p_max) = (0.7 − 0.3 + 0.05)/(1 − 0.3 + 0.7) = 0.45/1.4.
        assert!((lambda[0] - 0.45 / 1.4).abs() < 1e-6, "{lambda:?}");
        // The rectified label is right by exactly the margin: q1 − q0 = δ = 0.05.
        assert!((q[2] - q[0] - 0.05).abs() < 1e-6, "{q:?}");
        // q0 = (1 − λ)·0.7 = 0.475, q1 = (1 − λ)·0.3 + λ = 0.525.
        assert!(
            (q[0] - 0.475).abs() < 1e-6 && (q[2] - 0.525).abs() < 1e-6,
            "{q:?}"
        );
        // The right pixel is untouched.
        assert_eq!(lambda[1], 0.0);
        assert_eq!((q[1], q[3]), (0.2, 0.8));

        // Alignment alone (ω_a = 1): λ = max(λ_min, 1 − p_y) = 0.7 > λ_min.
        let cfg = RlclConfig {
            alignment_weight: 1.0,
            ..cfg
        };
        let lambda: Vec<f32> = rectify(p.clone(), p.clone(), onehot.clone(), &cfg)
            .lambda
            .into_data()
            .to_vec()
            .unwrap();
        assert!(
            (lambda[0] - 0.7).abs() < 1e-6 && lambda[1] == 0.0,
            "{lambda:?}"
        );

        // Hard rectification replaces the wrong pixel by its one-hot label.
        let cfg = RlclConfig {
            rectify: Rectify::Hard,
            ..RlclConfig::default()
        };
        let q: Vec<f32> = rectify(p.clone(), p, onehot, &cfg)
            .target
            .into_data()
            .to_vec()
            .unwrap();
        assert_eq!(q, vec![0.0, 0.2, 1.0, 0.8]);
    }

    #[test]
    fn saturated_right_pixels_stay_finite() {
        // float32 softmax can reach exactly 1.0; λ_min's denominator is then 0.
        let p = probs([[0.0, 1.0], [1.0, 0.0]]);
        let onehot = probs([[0.0, 1.0], [0.0, 1.0]]);
        let r = rectify(p.clone(), p, onehot, &RlclConfig::default());
        let lambda: Vec<f32> = r.lambda.into_data().to_vec().unwrap();
        let q: Vec<f32> = r.target.into_data().to_vec().unwrap();
        assert!(
            lambda.iter().chain(&q).all(|v| v.is_finite()),
            "{lambda:?} {q:?}"
        );
        assert_eq!(lambda[0], 0.0, "right pixel untouched");
        assert_eq!((q[0], q[2]), (0.0, 1.0));
        // The confidently wrong pixel is fully rectified (λ = 1 by the certainty/alignment terms).
        assert_eq!((q[1], q[3]), (0.0, 1.0));
    }

    #[test]
    fn similarity_and_certainty_factors_follow_their_definitions() {
        // Identical teacher and student → JS = 0 → λˢ = 1; a uniform teacher → λᶜ = 0.
        let p = probs([[0.5, 0.5], [0.9, 0.1]]);
        let js: Vec<f32> = js_divergence(p.clone(), p.clone())
            .into_data()
            .to_vec()
            .unwrap();
        assert!(js.iter().all(|v| v.abs() < 1e-6), "{js:?}");
        let q = probs([[1.0, 0.0], [0.0, 1.0]]);
        let p1 = probs([[0.0, 1.0], [1.0, 0.0]]);
        let js: Vec<f32> = js_divergence(q, p1).into_data().to_vec().unwrap();
        assert!(
            js.iter().all(|v| (v - std::f32::consts::LN_2).abs() < 1e-5),
            "disjoint → ln 2: {js:?}"
        );
        let h: Vec<f32> = neg_entropy(p).into_data().to_vec().unwrap();
        assert!(
            (h[0] + std::f32::consts::LN_2).abs() < 1e-6,
            "uniform entropy is ln 2: {h:?}"
        );
    }

    /// The fused CPU op against the composed one, value and student gradient, in every ARM
    /// mode, with and without certainty weights, at τ = 1 and 2: 2 images of 23×29 pixels, 4
    /// classes, teacher and student logits with realistic spread (so both right and wrong
    /// pixels, λ_min and the dynamic factors all take part). The teacher gets no gradient.
    #[test]
    fn fused_cpu_loss_and_gradient_match_the_composed_ones() {
        use burn::backend::Autodiff;
        use burn::tensor::{Distribution, Tolerance};
        type T = Autodiff<Flex>;
        let device = Default::default();
        let [b, k, h, w] = [2, 4, 23, 29];
        let zt0 = Tensor::<T, 4>::random([b, k, h, w], Distribution::Normal(0.0, 2.0), &device);
        let zs0 = Tensor::<T, 4>::random([b, k, h, w], Distribution::Normal(0.0, 2.0), &device);
        let labels =
            Tensor::<T, 3>::random([b, h, w], Distribution::Uniform(0.0, k as f64), &device).int();
        let onehot: Tensor<T, 4> = labels.one_hot::<4>(k).permute([0, 3, 1, 2]).float();
        let base = RlclConfig::default();
        let configs = [
            base.clone(),
            RlclConfig {
                rectify: Rectify::Hard,
                ..base.clone()
            },
            RlclConfig {
                rectify: Rectify::None,
                ..base.clone()
            },
            RlclConfig {
                temperature: 2.0,
                ..base.clone()
            },
            RlclConfig {
                pixel_weight: PixelWeight::Certainty,
                ..base.clone()
            },
            RlclConfig {
                alignment_weight: 1.0,
                similarity_weight: 0.0,
                certainty_weight: 0.0,
                margin: 0.2,
                pixel_weight: PixelWeight::Certainty,
                temperature: 2.0,
                ..base.clone()
            },
        ];
        for cfg in &configs {
            let run = |fused: bool| {
                let zt = zt0.clone().detach().require_grad();
                let zs = zs0.clone().detach().require_grad();
                let loss = if fused {
                    rlcl_loss(zt.clone(), zs.clone(), onehot.clone(), cfg)
                } else {
                    rlcl_loss_composed(zt.clone(), zs.clone(), onehot.clone(), cfg)
                };
                let g = loss.backward();
                assert!(zt.grad(&g).is_none(), "the teacher is detached");
                (loss.inner().into_data(), zs.grad(&g).unwrap().into_data())
            };
            let ((v, g), (v_ref, g_ref)) = (run(true), run(false));
            // Same formulas; f64 sums and a different exp in the fused op: agreement to float
            // rounding. Gradients are ~1/N ≈ 8e-4 per pixel, far above the absolute floor.
            let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-8);
            v.assert_approx_eq::<f32>(&v_ref, tol);
            g.assert_approx_eq::<f32>(&g_ref, tol);
            assert!(v.to_vec::<f32>().unwrap()[0] > 0.0, "{cfg:?}");
        }
    }
}

//! Transfer terms of the online baselines of METHOD.md §7 that share the pair loop with CTRCL
//! (DML lives beside RLCL, whose KL it reuses).

use crate::losses::rlcl::kl_to_logits;
use crate::losses::seg::dice_loss;
use crate::losses::{average, onehot_of};
use burn::prelude::*;
use burn::tensor::activation::softmax;

/// KDCL (naive ensemble): the target softmax(mean(z_own, z_peer)/τ), detached, distilled into
/// the student: τ²·mean over pixels of KL(target ‖ softmax(z_own/τ)).
///
/// # Shapes
/// `own_logits`, `peer_logits`: `[B, K, H, W]` → scalar `[1]`.
pub fn kdcl_loss<B: Backend>(
    own_logits: Tensor<B, 4>,
    peer_logits: Tensor<B, 4>,
    temperature: f64,
) -> Tensor<B, 1> {
    let ensemble = (own_logits.clone().detach() + peer_logits.detach()) / 2.0;
    if let Some(loss) = super::rlcl_cpu::distill_loss(&ensemble, &own_logits, temperature) {
        return loss;
    }
    let target = softmax(ensemble / temperature, 1);
    average(kl_to_logits(target, own_logits, temperature)) * (temperature * temperature)
}

/// Offline KD (Hinton): τ²·mean over pixels of KL(softmax(sg[z_teacher]/τ) ‖ softmax(z_student/τ)).
///
/// # Shapes
/// `teacher_logits`, `student_logits`: `[B, K, H, W]` → scalar `[1]`.
pub fn kd_loss<B: Backend>(
    teacher_logits: Tensor<B, 4>,
    student_logits: Tensor<B, 4>,
    temperature: f64,
) -> Tensor<B, 1> {
    if let Some(loss) = super::rlcl_cpu::distill_loss(&teacher_logits, &student_logits, temperature)
    {
        return loss;
    }
    let target = softmax(teacher_logits.detach() / temperature, 1);
    average(kl_to_logits(target, student_logits, temperature)) * (temperature * temperature)
}

/// Cross teaching (SSL4MIS CTCT form): the soft Dice loss of the student's softmax against the
/// peer's hard prediction, one-hot of argmax sg[z_peer].
///
/// # Shapes
/// `own_logits`, `peer_logits`: `[B, K, H, W]` → scalar `[1]`.
pub fn cross_teaching_loss<B: Backend>(
    own_logits: Tensor<B, 4>,
    peer_logits: Tensor<B, 4>,
) -> Tensor<B, 1> {
    let k = peer_logits.dims()[1];
    let pseudo = onehot_of(peer_logits.detach().argmax(1), k);
    dice_loss(softmax(own_logits, 1), pseudo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    type A = Autodiff<Flex>;

    fn logits(seed: f32) -> Tensor<A, 4> {
        let data: Vec<f32> = (0..2 * 3 * 2 * 2)
            .map(|i| ((i as f32 + seed) * 0.7).sin() * 2.0)
            .collect();
        Tensor::<A, 4>::from_data(TensorData::new(data, [2, 3, 2, 2]), &Default::default())
            .require_grad()
    }

    #[test]
    fn only_the_student_receives_gradients() {
        for which in ["kdcl", "cross-teaching"] {
            let (own, peer) = (logits(0.0), logits(5.0));
            let loss = match which {
                "kdcl" => kdcl_loss(own.clone(), peer.clone(), 2.0),
                _ => cross_teaching_loss(own.clone(), peer.clone()),
            };
            let grads = loss.backward();
            let g_own = own.grad(&grads).expect("the student is trained");
            assert!(g_own.abs().sum().into_scalar() > 0.0, "{which}");
            assert!(
                peer.grad(&grads).is_none(),
                "{which}: the peer is a fixed target"
            );
        }
    }

    #[test]
    fn kdcl_of_identical_students_is_zero() {
        let z = logits(1.0);
        let l = kdcl_loss(z.clone(), z, 1.5).into_scalar();
        assert!(l.abs() < 1e-6, "{l}");
    }

    /// The fused distillation (CPU training backend) against the composed KL: KD at τ = 2 and
    /// KDCL at τ = 1.5, value and student gradient, on 2 images of 19×23 pixels, 5 classes.
    #[test]
    fn fused_distillation_matches_the_composed_kl() {
        use burn::tensor::{Distribution, Tolerance};
        let device = Default::default();
        let shape = [2, 5, 19, 23];
        let zt0 = Tensor::<A, 4>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        let zs0 = Tensor::<A, 4>::random(shape, Distribution::Normal(0.0, 2.0), &device);
        for (kdcl, tau) in [(false, 2.0), (true, 1.5)] {
            let zs = zs0.clone().detach().require_grad();
            let zt = zt0.clone().detach();
            let fused = if kdcl {
                kdcl_loss(zs.clone(), zt.clone(), tau)
            } else {
                kd_loss(zt.clone(), zs.clone(), tau)
            };
            let g = fused.backward();
            let (v, gz) = (fused.inner().into_data(), zs.grad(&g).unwrap().into_data());
            let zs = zs0.clone().detach().require_grad();
            let teacher = if kdcl {
                (zs.clone().detach() + zt) / 2.0
            } else {
                zt
            };
            let composed =
                kl_to_logits(softmax(teacher / tau, 1), zs.clone(), tau).mean() * (tau * tau);
            let g = composed.backward();
            let (v_ref, gz_ref) = (
                composed.inner().into_data(),
                zs.grad(&g).unwrap().into_data(),
            );
            // As the RLCL parity test: float rounding only.
            let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-8);
            v.assert_approx_eq::<f32>(&v_ref, tol);
            gz.assert_approx_eq::<f32>(&gz_ref, tol);
        }
    }
}

//! One optimizer step of the pair (METHOD.md §6): both students forward the batch, one backward
//! of L_C + L_T, one optimizer step per student with its own gradients — with gradient
//! accumulation over several batches, and, as one peer of a data-parallel step, gradients and
//! logged terms averaged over the peers (`crate::collective`). The loop around it
//! (`crate::trainer`), its data-parallel wrapper (`crate::distributed`), the memory calibration
//! (`crate::memory`) and `ctrcl bench` all call this one function.

use crate::config::TrainConfig;
use crate::objective::{pair_loss, DeviceTerms, PairLoss, Terms};
use crate::semi::semi_pair_loss;
use crate::student::{StudentOptimizer, TrainStudent};
use anyhow::{bail, Result};
use burn::collective::PeerId;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_data::loader::Batch;

/// The schedule's values for one step: each student's learning rate, the transfer weights
/// β_r (logit) and β_f (feature), and β_u(t), the unlabelled terms' weight of a semi-supervised
/// run (METHOD.md §9; unused otherwise).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepRates {
    pub(crate) lrs: [f64; 2],
    pub(crate) beta_r: f64,
    pub(crate) beta_f: f64,
    pub(crate) beta_u: f64,
}

/// The pair's losses on one batch: semi-supervised (`crate::semi`) when the one-hot labels
/// cover only the first images of `x`, else the supervised objective.
///
/// # Shapes
/// `x`: `[B, C, S, S]`; `onehot`: `[B, K, S, S]`, or `[B_l, K, S, S]` with B_l < B.
fn batch_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    students: &[TrainStudent<B>; 2],
    x: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    rates: StepRates,
) -> PairLoss<B> {
    if onehot.dims()[0] < x.dims()[0] {
        semi_pair_loss(
            cfg,
            students,
            x,
            onehot,
            [rates.beta_r, rates.beta_f],
            rates.beta_u,
        )
    } else {
        pair_loss(cfg, students, x, onehot, rates.beta_r, rates.beta_f)
    }
}

/// One optimizer step of both students over `batches` (gradient accumulation when there are
/// several: each batch's loss is divided by their number, so the step follows the mean gradient
/// — the gradient of one batch of all their samples, BatchNorm statistics aside). Returns the
/// loss terms averaged over the batches; the caller checks them for non-finite values.
///
/// With `sync = Some(peer)` this is one peer of a data-parallel step ([`crate::distributed`]):
/// each student's gradients are averaged over all peers (Burn's collective all-reduce) before
/// its optimizer step, and the returned loss terms are the all-peer means.
pub(crate) fn pair_step<B: AutodiffBackend>(
    cfg: &TrainConfig,
    students: &mut [TrainStudent<B>; 2],
    optims: &mut [StudentOptimizer<B>; 2],
    batches: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    rates: StepRates,
    sync: Option<PeerId>,
) -> Result<[Terms; 2]> {
    let lrs = rates.lrs;
    let n = batches.len();
    if n == 0 {
        bail!("a step needs at least one batch");
    }
    let device = batches[0].0.device();
    let synced = |g: GradientsParams, student: &TrainStudent<B>| -> Result<GradientsParams> {
        match sync {
            None => Ok(g),
            Some(peer) => crate::collective::all_reduce_mean(student, g, peer),
        }
    };
    let synced_terms = |terms: [Terms; 2]| -> Result<[Terms; 2]> {
        match sync {
            None => Ok(terms),
            Some(peer) => crate::collective::all_reduce_terms::<B::InnerBackend>(
                terms,
                peer,
                cfg.parallel.peers(),
                &device,
            ),
        }
    };
    if n == 1 {
        // The plain path, without scaling or accumulation (bit-identical to a single batch).
        let (x, onehot) = batches.into_iter().next().expect("one batch");
        let loss = batch_loss(cfg, students, x, onehot, rates);
        let mut grads = loss.total.backward();
        crate::memory::counter::optimizer_phase();
        for i in 0..2 {
            if loss.learns[i] {
                let g = GradientsParams::from_module(&mut grads, &students[i]);
                let g = synced(g, &students[i])?;
                let module = students[i].clone();
                students[i] = optims[i].step(lrs[i], module, g);
            }
        }
        // Read only now, with the whole step queued: one device sync per step.
        return synced_terms(loss.terms.each_ref().map(DeviceTerms::read));
    }
    let mut accumulators = [GradientsAccumulator::new(), GradientsAccumulator::new()];
    let mut terms = [Terms::default(); 2];
    let mut learns = [false; 2];
    for (x, onehot) in batches {
        let loss = batch_loss(cfg, students, x, onehot, rates);
        let mut grads = (loss.total / n as f64).backward();
        for i in 0..2 {
            if loss.learns[i] {
                let g = GradientsParams::from_module(&mut grads, &students[i]);
                accumulators[i].accumulate(&students[i], g);
            }
            terms[i].add_scaled(&loss.terms[i].read(), 1.0 / n as f64);
        }
        learns = loss.learns;
    }
    crate::memory::counter::optimizer_phase();
    for i in 0..2 {
        if learns[i] {
            let g = synced(accumulators[i].grads(), &students[i])?;
            let module = students[i].clone();
            students[i] = optims[i].step(lrs[i], module, g);
        }
    }
    synced_terms(terms)
}

/// A clear error when the backend cannot compute in `cfg.precision` on `device`.
pub(crate) fn check_precision<B: AutodiffBackend>(
    cfg: &TrainConfig,
    device: &B::Device,
    backend: &str,
) -> Result<()> {
    if !cfg.precision.supported_by::<B>(device) {
        bail!(
            "precision = \"{}\" is not supported by the {backend} backend on this device; use \"f32\"",
            cfg.precision.name()
        );
    }
    Ok(())
}

/// Builds the one-hot label tensor.
///
/// # Shapes
/// labels `B·S·S` → `[B, K, S, S]`.
pub(crate) fn onehot_tensor<B: Backend>(
    batch: &Batch,
    k: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (b, s) = (batch.batch_size, batch.size);
    let mut data = vec![0f32; b * k * s * s];
    for (i, &label) in batch.labels.iter().enumerate() {
        let (n, p) = (i / (s * s), i % (s * s));
        data[(n * k + label as usize) * s * s + p] = 1.0;
    }
    Tensor::from_data(TensorData::new(data, [b, k, s, s]), device)
}

#[cfg(test)]
mod tests {
    /// Reading a tensor's value waits for the device; a step reads its loss terms once, after
    /// the backward and the optimizer updates are queued (`DeviceTerms::read` in `pair_step`),
    /// never while the objective is being built. This fails if a read creeps back into the code
    /// that builds a step's loss (each file's non-test part).
    #[test]
    fn the_objective_reads_no_value_from_the_device() {
        let sources = [
            ("objective.rs", include_str!("objective.rs")),
            ("semi.rs", include_str!("semi.rs")),
            ("teacher.rs", include_str!("teacher.rs")),
            ("losses/mod.rs", include_str!("losses/mod.rs")),
            ("losses/seg.rs", include_str!("losses/seg.rs")),
            ("losses/rlcl.rs", include_str!("losses/rlcl.rs")),
            ("losses/cfcl.rs", include_str!("losses/cfcl.rs")),
            ("losses/baselines.rs", include_str!("losses/baselines.rs")),
        ];
        for (name, source) in sources {
            let code = source.split("#[cfg(test)]").next().unwrap();
            let reads = [
                "into_scalar(",
                "into_data(",
                "to_data(",
                "scalar)",
                "scalar(&",
            ]
            .iter()
            .map(|r| code.matches(r).count())
            .sum::<usize>();
            // objective.rs: `fn scalar` itself (one into_scalar) and its one use, in
            // `DeviceTerms::read`.
            let allowed = if name == "objective.rs" { 2 } else { 0 };
            assert_eq!(reads, allowed, "{name} reads values from the device");
        }
    }
}

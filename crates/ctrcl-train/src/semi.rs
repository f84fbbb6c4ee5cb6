//! The semi-supervised objective (METHOD.md §9): a batch of B_l labelled then B_u unlabelled
//! images, both students forward all of it once (their BatchNorm sees the whole batch, as in
//! SSL4MIS), and each student's loss is
//!
//! - **ctrcl**: the supervised objective of §6 on the labelled part, unchanged
//!   (`crate::objective`), plus β_u(t)·(L_rlcl,u + β_f·L_cfcl,u) on the unlabelled part: RLCL from
//!   the peer with the pair's pseudo-label ŷ in place of the ground truth, on the trusted pixels
//!   M only, and CFCL with prototypes from ŷ on M (`crate::losses::pseudo`). β_f is the constant
//!   `cfcl.weight`: β_u(t) carries the ramp-up.
//! - **cross-teaching** (SSL4MIS CTCT): L_seg on the labelled part, plus β_u(t)·Dice of its
//!   softmax against the peer's arg-max on the unlabelled part (every pixel, as SSL4MIS).
//!
//! `independent` never reaches here: the trainer hands it the labelled batches alone.
//! The trainer marks a semi-supervised batch by its one-hot covering only the first B_l images.

use crate::config::Method;
use crate::config::TrainConfig;
use crate::losses::baselines::cross_teaching_loss;
use crate::losses::cfcl::{area_downsample, cfcl_loss_trusted};
use crate::losses::pseudo::pseudo_labels;
use crate::losses::rlcl::rlcl_loss_masked;
use crate::objective::{keep, DeviceTerms, Objective, PairLoss, Side};
use crate::student::TrainStudent;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::SegOutput;

/// Images `start .. start + len` of a student's output (logits and every feature tap).
fn narrow<B: Backend>(out: &SegOutput<B>, start: usize, len: usize) -> SegOutput<B> {
    SegOutput {
        logits: out.logits.clone().narrow(0, start, len),
        features: out
            .features
            .iter()
            .map(|(s, f)| (*s, f.clone().narrow(0, start, len)))
            .collect(),
    }
}

/// Both students' losses on a semi-supervised batch.
///
/// # Shapes
/// `x`: `[B_l + B_u, C, S, S]`; `onehot`: `[B_l, K, S, S]` (the labels of the first B_l images).
pub(crate) fn semi_pair_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    students: &[TrainStudent<B>; 2],
    x: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    transfer: [f64; 2],
    beta_u: f64,
) -> PairLoss<B> {
    let [beta_r, beta_f] = transfer;
    let _autocast = ctrcl_models::precision::autocast(cfg.precision);
    let (b, b_l) = (x.dims()[0], onehot.dims()[0]);
    let b_u = b - b_l;
    let outs = [
        students[0].net.forward(x.clone()),
        students[1].net.forward(x),
    ];
    let labelled = [narrow(&outs[0], 0, b_l), narrow(&outs[1], 0, b_l)];
    let unlabelled = [narrow(&outs[0], b_l, b_u), narrow(&outs[1], b_l, b_u)];
    let objective = Objective::new(cfg, onehot, beta_r, beta_f);
    let side = |i: usize, out| Side {
        out,
        cpm: &students[i].cpm,
    };
    let pseudo = (cfg.method == Method::Ctrcl).then(|| {
        let p = pseudo_labels(
            unlabelled[0].logits.clone(),
            unlabelled[1].logits.clone(),
            cfg.semi.threshold,
        );
        let fractions: Vec<Tensor<B, 4>> = if cfg.cfcl.enabled {
            let trusted = p.onehot.clone() * p.mask.clone();
            cfg.cfcl
                .taps
                .iter()
                .map(|&s| area_downsample(trusted.clone(), s))
                .collect()
        } else {
            Vec::new()
        };
        let share = keep(&p.mask.clone().mean().reshape([1]));
        (p, fractions, share)
    });
    let mut terms = [DeviceTerms::default(), DeviceTerms::default()];
    let mut total = None;
    for i in 0..2 {
        let j = 1 - i;
        let (sup, mut t) = match cfg.method {
            Method::CrossTeaching => objective.seg(labelled[i].logits.clone()),
            _ => {
                let l = objective.student_loss(side(i, &labelled[i]), side(j, &labelled[j]));
                (l.total, l.terms)
            }
        };
        let (own, peer) = (&unlabelled[i], &unlabelled[j]);
        let unsup = match &pseudo {
            None => cross_teaching_loss(own.logits.clone(), peer.logits.clone()),
            Some((p, fractions, share)) => {
                t.trusted = share.clone();
                let device = own.logits.device();
                let mut l = Tensor::<B, 1>::zeros([1], &device);
                if cfg.rlcl.enabled {
                    l = l + rlcl_loss_masked(
                        peer.logits.clone(),
                        own.logits.clone(),
                        p.onehot.clone(),
                        p.mask.clone(),
                        &cfg.rlcl,
                    );
                }
                if cfg.cfcl.enabled {
                    let taps = &cfg.cfcl.taps;
                    let cf = cfcl_loss_trusted(
                        side(i, own).taps(taps),
                        side(j, peer).taps(taps),
                        fractions,
                        cfg.cfcl.temperature,
                        &device,
                    );
                    l = l + cf * cfg.cfcl.weight;
                }
                l
            }
        };
        t.unlabelled = keep(&unsup);
        let student_total = sup + unsup * beta_u;
        t.total = keep(&student_total);
        terms[i] = t;
        total = Some(match total {
            None => student_total,
            Some(sum) => sum + student_total,
        });
    }
    PairLoss {
        terms,
        total: total.expect("two students"),
        learns: [true, true],
    }
}

//! The objective per method (METHOD.md §7): each student's L_seg plus the transfer terms its
//! method adds — one logit-space term for the baselines (dml, kdcl, cross-teaching, kd), RLCL and
//! CFCL for CTRCL — and the pair's sum that one backward differentiates. Offline methods
//! (`kd`, `ctrcl-offline`) forward the teacher slot frozen and learn one way.
//!
//! Which terms a method has, and their log keys, are asked of [`Method`]; the terms themselves
//! live in `crate::losses`. Nothing here touches optimizers, data or the run directory.

use crate::config::{Method, TrainConfig};
use crate::losses::baselines::{cross_teaching_loss, kd_loss, kdcl_loss};
use crate::losses::cfcl::{area_downsample, cfcl_loss, perception_only_loss, ProjectionHead, Taps};
use crate::losses::rlcl::{dml_loss, rlcl_loss};
use crate::losses::seg::seg_loss;
use crate::student::TrainStudent;
use crate::teacher::{frozen_forward, teacher_slot};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::SegOutput;
use serde_json::json;

/// A one-element tensor's value, for the log.
pub(crate) fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
    t.clone().into_scalar().elem::<f64>()
}

/// Loss terms of one student at one step, as logged.
#[derive(Default, Clone, Copy)]
pub(crate) struct Terms {
    pub(crate) ce: f64,
    pub(crate) dice: f64,
    pub(crate) seg: f64,
    pub(crate) transfer_logit: f64,
    pub(crate) transfer_feature: f64,
    /// The unlabelled term of a semi-supervised run before β_u (METHOD.md §9; 0 otherwise).
    pub(crate) unlabelled: f64,
    /// The share of unlabelled pixels whose pseudo-label is trusted (semi-supervised ctrcl).
    pub(crate) trusted: f64,
    pub(crate) total: f64,
}

impl Terms {
    /// `self += other · w`, field by field (averaging over accumulated batches).
    pub(crate) fn add_scaled(&mut self, other: &Terms, w: f64) {
        self.ce += other.ce * w;
        self.dice += other.dice * w;
        self.seg += other.seg * w;
        self.transfer_logit += other.transfer_logit * w;
        self.transfer_feature += other.transfer_feature * w;
        self.unlabelled += other.unlabelled * w;
        self.trusted += other.trusted * w;
        self.total += other.total * w;
    }

    /// The fields in declaration order (for the cross-peer all-reduce).
    pub(crate) fn to_array(self) -> [f64; 8] {
        [
            self.ce,
            self.dice,
            self.seg,
            self.transfer_logit,
            self.transfer_feature,
            self.total,
            self.unlabelled,
            self.trusted,
        ]
    }

    /// Inverse of [`Terms::to_array`]; `v` holds at least 8 values.
    pub(crate) fn from_slice(v: &[f32]) -> Terms {
        let f = |i: usize| f64::from(v[i]);
        Terms {
            ce: f(0),
            dice: f(1),
            seg: f(2),
            transfer_logit: f(3),
            transfer_feature: f(4),
            total: f(5),
            unlabelled: f(6),
            trusted: f(7),
        }
    }

    /// The terms as `log.jsonl` records them, under the method's keys (and, in a semi-supervised
    /// run, `unlabelled` and, for ctrcl, `trusted`).
    pub(crate) fn json(&self, cfg: &TrainConfig) -> serde_json::Value {
        let method = cfg.method;
        let mut v = json!({"ce": self.ce, "dice": self.dice, "seg": self.seg, "total": self.total});
        let (logit, feature) = method.transfer_log_keys();
        if let Some(key) = logit {
            v[key] = json!(self.transfer_logit);
        }
        if let Some(key) = feature {
            v[key] = json!(self.transfer_feature);
        }
        if cfg.is_semi() && method != Method::Independent {
            v["unlabelled"] = json!(self.unlabelled);
            if method == Method::Ctrcl {
                v["trusted"] = json!(self.trusted);
            }
        }
        v
    }
}

/// Loss terms of one student at one step, still on the device (one-element tensors, detached
/// from the graph). Reading a value waits for every kernel queued before it — on a GPU the
/// queue drains and Burn's fusion is cut there — so the terms are not read where they are
/// computed (that was a dozen syncs in the middle of every step, before the backward was even
/// queued) but once, by [`DeviceTerms::read`], after the step's backward and optimizer updates
/// are queued. The values are the same; only when they are read changes.
#[derive(Clone)]
pub(crate) struct DeviceTerms<B: Backend> {
    pub(crate) ce: Option<Tensor<B, 1>>,
    pub(crate) dice: Option<Tensor<B, 1>>,
    pub(crate) seg: Option<Tensor<B, 1>>,
    pub(crate) transfer_logit: Option<Tensor<B, 1>>,
    pub(crate) transfer_feature: Option<Tensor<B, 1>>,
    pub(crate) unlabelled: Option<Tensor<B, 1>>,
    pub(crate) trusted: Option<Tensor<B, 1>>,
    pub(crate) total: Option<Tensor<B, 1>>,
}

impl<B: Backend> Default for DeviceTerms<B> {
    fn default() -> Self {
        DeviceTerms {
            ce: None,
            dice: None,
            seg: None,
            transfer_logit: None,
            transfer_feature: None,
            unlabelled: None,
            trusted: None,
            total: None,
        }
    }
}

/// `t` detached, to be read later: keeps the value, not the autodiff graph.
pub(crate) fn keep<B: Backend>(t: &Tensor<B, 1>) -> Option<Tensor<B, 1>> {
    Some(t.clone().detach())
}

impl<B: Backend> DeviceTerms<B> {
    /// The values (0 for a term the method does not have).
    pub(crate) fn read(&self) -> Terms {
        let v = |t: &Option<Tensor<B, 1>>| t.as_ref().map_or(0.0, scalar);
        Terms {
            ce: v(&self.ce),
            dice: v(&self.dice),
            seg: v(&self.seg),
            transfer_logit: v(&self.transfer_logit),
            transfer_feature: v(&self.transfer_feature),
            unlabelled: v(&self.unlabelled),
            trusted: v(&self.trusted),
            total: v(&self.total),
        }
    }
}

/// One student's loss and its terms, given both outputs.
pub(crate) struct StudentLoss<B: Backend> {
    pub(crate) total: Tensor<B, 1>,
    pub(crate) terms: DeviceTerms<B>,
}

/// One student's side of a loss: its outputs and its CPM heads (empty without CFCL).
pub(crate) struct Side<'a, B: Backend> {
    pub(crate) out: &'a SegOutput<B>,
    pub(crate) cpm: &'a [ProjectionHead<B>],
}

impl<B: Backend> Side<'_, B> {
    /// The CFCL view of this side: its heads and its features at `taps`.
    pub(crate) fn taps(&self, taps: &[usize]) -> Taps<'_, B> {
        Taps {
            heads: self.cpm,
            features: taps
                .iter()
                .map(|&s| self.out.feature(s).expect("taps validated with the config"))
                .collect(),
        }
    }
}

/// What every student's loss at one step shares: the configuration, the targets and the ramped
/// transfer weights.
pub(crate) struct Objective<'a, B: Backend> {
    pub(crate) cfg: &'a TrainConfig,
    /// `[B, K, S, S]`.
    onehot: Tensor<B, 4>,
    /// The class fractions at each CFCL tap, `[B, K, S/s, S/s]` (empty unless CTRCL with CFCL).
    fractions: Vec<Tensor<B, 4>>,
    /// β_r: the logit-space transfer weight (RLCL, or the baseline's term).
    beta_r: f64,
    /// β_f: CFCL's weight.
    beta_f: f64,
}

impl<'a, B: AutodiffBackend> Objective<'a, B> {
    pub(crate) fn new(
        cfg: &'a TrainConfig,
        onehot: Tensor<B, 4>,
        beta_r: f64,
        beta_f: f64,
    ) -> Self {
        let fractions = if cfg.method.is_ctrcl() && cfg.cfcl.enabled {
            cfg.cfcl
                .taps
                .iter()
                .map(|&s| area_downsample(onehot.clone(), s))
                .collect()
        } else {
            Vec::new()
        };
        Objective {
            cfg,
            onehot,
            fractions,
            beta_r,
            beta_f,
        }
    }

    /// L_seg of `logits` and its logged terms (the total so far is L_seg).
    pub(crate) fn seg(&self, logits: Tensor<B, 4>) -> (Tensor<B, 1>, DeviceTerms<B>) {
        let seg = seg_loss(
            logits,
            self.onehot.clone(),
            self.cfg.seg.ce_weight,
            self.cfg.seg.dice_weight,
        );
        let terms = DeviceTerms {
            ce: keep(&seg.ce),
            dice: keep(&seg.dice),
            seg: keep(&seg.total),
            ..Default::default()
        };
        (seg.total, terms)
    }

    /// `own`'s loss: L_seg plus its method's transfer terms from `peer`.
    pub(crate) fn student_loss(&self, own: Side<B>, peer: Side<B>) -> StudentLoss<B> {
        let cfg = self.cfg;
        let (mut total, mut terms) = self.seg(own.out.logits.clone());
        match cfg.method {
            Method::Independent => {}
            Method::Dml | Method::Kdcl | Method::CrossTeaching | Method::Kd => {
                // The logit-space baselines: one transfer term, weighted by baseline.weight
                // (ramped in, passed as beta_r).
                let (z_own, z_peer) = (own.out.logits.clone(), peer.out.logits.clone());
                let tau = cfg.baseline.temperature;
                let l = match cfg.method {
                    Method::Dml => dml_loss(z_peer, z_own),
                    Method::Kdcl => kdcl_loss(z_own, z_peer, tau),
                    Method::CrossTeaching => cross_teaching_loss(z_own, z_peer),
                    _ => kd_loss(z_peer, z_own, tau),
                };
                terms.transfer_logit = keep(&l);
                total = total + l * self.beta_r;
            }
            Method::Ctrcl | Method::CtrclOffline => {
                if cfg.rlcl.enabled {
                    let l = rlcl_loss(
                        peer.out.logits.clone(),
                        own.out.logits.clone(),
                        self.onehot.clone(),
                        &cfg.rlcl,
                    );
                    terms.transfer_logit = keep(&l);
                    total = total + l * self.beta_r;
                }
                if cfg.cfcl.enabled {
                    let taps = &cfg.cfcl.taps;
                    let l = cfcl_loss(
                        own.taps(taps),
                        peer.taps(taps),
                        &self.fractions,
                        cfg.cfcl.temperature,
                        &self.onehot.device(),
                    );
                    terms.transfer_feature = keep(&l);
                    total = total + l * self.beta_f;
                }
            }
        }
        terms.total = keep(&total);
        StudentLoss { total, terms }
    }
}

/// The losses of one batch: each student's terms, the sum to differentiate, and which slots
/// learn (a frozen teacher without CPM heads does not).
pub(crate) struct PairLoss<B: Backend> {
    /// Read them after the step is queued ([`DeviceTerms::read`]).
    pub(crate) terms: [DeviceTerms<B>; 2],
    pub(crate) total: Tensor<B, 1>,
    pub(crate) learns: [bool; 2],
}

/// Both students forward `x`; each student's loss (L_seg plus the method's transfer terms,
/// METHOD.md §7). Offline methods forward the teacher slot frozen.
///
/// # Shapes
/// `x`: `[B, C, S, S]`; `onehot`: `[B, K, S, S]`.
pub(crate) fn pair_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    students: &[TrainStudent<B>; 2],
    x: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    beta_r: f64,
    beta_f: f64,
) -> PairLoss<B> {
    // Mixed precision: the students' products in `cfg.precision`, the rest f32; the casts are
    // recorded, so the backward after this returns needs no guard.
    let _autocast = ctrcl_models::precision::autocast(cfg.precision);
    let objective = Objective::new(cfg, onehot, beta_r, beta_f);
    if cfg.method.is_offline() {
        return offline_loss(&objective, students, x);
    }
    let out_c = students[0].net.forward(x.clone());
    let out_t = students[1].net.forward(x);
    let side = |i: usize, out| Side {
        out,
        cpm: &students[i].cpm,
    };
    let loss_c = objective.student_loss(side(0, &out_c), side(1, &out_t));
    let loss_t = objective.student_loss(side(1, &out_t), side(0, &out_c));
    PairLoss {
        terms: [loss_c.terms, loss_t.terms],
        total: loss_c.total + loss_t.total,
        learns: [true, true],
    }
}

/// The losses of `kd` and `ctrcl-offline`: the teacher slot forwards frozen; the student learns
/// from it one way; the teacher's CPM heads (ctrcl-offline with CFCL) learn to perceive
/// categories on the teacher's fixed features. The teacher network itself never changes.
fn offline_loss<B: AutodiffBackend>(
    objective: &Objective<B>,
    students: &[TrainStudent<B>; 2],
    x: Tensor<B, 4>,
) -> PairLoss<B> {
    let cfg = objective.cfg;
    let t = teacher_slot(cfg);
    let s = 1 - t;
    let out_s = students[s].net.forward(x.clone());
    let out_t = frozen_forward(&students[t].net, x);
    let teacher = Side {
        out: &out_t,
        cpm: &students[t].cpm,
    };
    let student = Side {
        out: &out_s,
        cpm: &students[s].cpm,
    };
    let loss_s = objective.student_loss(student, teacher);
    // The frozen teacher's L_seg is logged, not learned from.
    let (_, mut terms_t) = objective.seg(out_t.logits.clone());
    terms_t.total = terms_t.seg.clone();
    let mut total = loss_s.total;
    let teacher_cpm = !students[t].cpm.is_empty();
    if teacher_cpm {
        let teacher = Side {
            out: &out_t,
            cpm: &students[t].cpm,
        };
        let cp = perception_only_loss(
            teacher.taps(&cfg.cfcl.taps),
            &objective.fractions,
            cfg.cfcl.temperature,
            &total.device(),
        );
        terms_t.transfer_feature = keep(&cp);
        total = total + cp * objective.beta_f;
    }
    let mut terms = [loss_s.terms, terms_t];
    let mut learns = [true, teacher_cpm];
    if t == 0 {
        terms.swap(0, 1);
        learns.swap(0, 1);
    }
    PairLoss {
        terms,
        total,
        learns,
    }
}

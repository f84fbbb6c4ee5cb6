//! The collaborative training loop (METHOD.md §6): one forward of both students per batch, one
//! backward of L_C + L_T, one optimizer step per student with its own gradients.

use crate::checkpoint::{lock_run, recover_checkpoint, write_checkpoint, write_text_atomic};
use crate::config::{Method, TeacherRole, TrainConfig};
use crate::distributed::DataParallel;
use crate::evaluate::{dice_on_samples, DiceScores};
use crate::losses::baselines::{cross_teaching_loss, kd_loss, kdcl_loss};
use crate::losses::cfcl::{
    alignment_loss, area_downsample, perceive, perception_loss, ProjectionHead,
};
use crate::losses::rlcl::{dml_loss, rlcl_loss};
use crate::losses::seg::seg_loss;
use crate::run_dir;
use crate::student::{
    materialize_params, recorder, save_module, Role, StudentOptimizer, TrainStudent,
};
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use burn::collective::PeerId;
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_data::dataset::Dataset;
use ctrcl_data::loader::{Batch, BatchLoader};
use ctrcl_data::split::Split;
use ctrcl_models::{Architecture, SegOutput, Student};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A split by cases (Kvasir-SEG's generated 880/120-style split, nnU-Net, ACDC, Synapse) is
/// written as `split/{train,val,test}.txt`, one case id per line — the list-file format the
/// layouts read, so copying the files next to the data reproduces the split exactly.
fn write_split_lists(dataset: &Dataset, out: &Path) -> Result<()> {
    if !matches!(dataset.split, ctrcl_data::dataset::DatasetSplit::Cases(_)) {
        return Ok(());
    }
    if let Some(folds) = &dataset.folds {
        // nnU-Net's own file of all folds, so the run can be reproduced in nnU-Net.
        let text = serde_json::to_string_pretty(folds)?;
        write_text_atomic(&out.join(ctrcl_data::nnunet::SPLITS_FINAL), &text)?;
    }
    for (split, name) in [
        (Split::Train, "train"),
        (Split::Val, "val"),
        (Split::Test, "test"),
    ] {
        let mut text = dataset.split_ids(split).join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        write_text_atomic(&out.join("split").join(format!("{name}.txt")), &text)?;
    }
    Ok(())
}

/// Metadata written as `run.json`: what `test` and `predict` need besides the config.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunInfo {
    pub ctrcl_version: String,
    pub backend: String,
    pub method: String,
    pub dataset: PathBuf,
    pub class_names: Vec<String>,
    pub image_size: usize,
    pub cnn: String,
    pub transformer: String,
    /// Each channel's normalisation under `data.normalize = "channel-names"`, with the training
    /// data's CT statistics, so `predict` needs no access to the training data (empty otherwise,
    /// and in runs older than this field).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channel_normalization: Vec<ctrcl_data::dataset::ChannelNorm>,
    /// The `CTRCL_BURN_*` variables that sent a family of CPU ops back to Burn's own
    /// implementation for this run (`ctrcl_models::switches`); empty: all fast paths on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub burn_fallbacks: Vec<String>,
}

/// What a finished training run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub best_val: [DiceScores; 2],
    pub seconds: f64,
}

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Poly learning-rate decay: lr·(1 − it/max_it)^power.
pub fn poly_lr(base: f64, step: usize, total: usize, power: f64) -> f64 {
    base * (1.0 - step as f64 / total as f64).max(0.0).powf(power)
}

/// Sigmoid ramp-up: β·exp(−5(1 − min(t, t_r)/t_r)²); the full β when t_r is 0.
pub fn ramp_up(beta: f64, step: usize, rampup_steps: f64) -> f64 {
    if rampup_steps <= 0.0 {
        return beta;
    }
    let phase = 1.0 - (step as f64).min(rampup_steps) / rampup_steps;
    beta * (-5.0 * phase * phase).exp()
}

fn scalar<B: Backend>(t: &Tensor<B, 1>) -> f64 {
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
        self.total += other.total * w;
    }

    /// The fields in declaration order (for the cross-peer all-reduce).
    pub(crate) fn to_array(self) -> [f64; 6] {
        [
            self.ce,
            self.dice,
            self.seg,
            self.transfer_logit,
            self.transfer_feature,
            self.total,
        ]
    }

    /// Inverse of [`Terms::to_array`]; `v` holds at least 6 values.
    pub(crate) fn from_slice(v: &[f32]) -> Terms {
        let f = |i: usize| f64::from(v[i]);
        Terms {
            ce: f(0),
            dice: f(1),
            seg: f(2),
            transfer_logit: f(3),
            transfer_feature: f(4),
            total: f(5),
        }
    }

    fn json(&self, method: Method) -> serde_json::Value {
        let mut v = json!({"ce": self.ce, "dice": self.dice, "seg": self.seg, "total": self.total});
        match method {
            Method::Independent => {}
            Method::Dml => v["dml"] = json!(self.transfer_logit),
            Method::Kdcl => v["kdcl"] = json!(self.transfer_logit),
            Method::CrossTeaching => v["cross_teaching"] = json!(self.transfer_logit),
            Method::Kd => v["kd"] = json!(self.transfer_logit),
            Method::Ctrcl | Method::CtrclOffline => {
                v["rlcl"] = json!(self.transfer_logit);
                v["cfcl"] = json!(self.transfer_feature);
            }
        }
        v
    }
}

/// One student's loss and its terms, given both outputs.
struct StudentLoss<B: Backend> {
    total: Tensor<B, 1>,
    terms: Terms,
}

#[allow(clippy::too_many_arguments)]
fn student_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    own: &SegOutput<B>,
    peer: &SegOutput<B>,
    own_cpm: &[ProjectionHead<B>],
    peer_cpm: &[ProjectionHead<B>],
    onehot: &Tensor<B, 4>,
    fractions: &[Tensor<B, 4>],
    beta_r: f64,
    beta_f: f64,
) -> StudentLoss<B> {
    let seg = seg_loss(
        own.logits.clone(),
        onehot.clone(),
        cfg.seg.ce_weight,
        cfg.seg.dice_weight,
    );
    let mut terms = Terms {
        ce: scalar(&seg.ce),
        dice: scalar(&seg.dice),
        seg: scalar(&seg.total),
        ..Default::default()
    };
    let mut total = seg.total;
    match cfg.method {
        Method::Independent => {}
        Method::Dml | Method::Kdcl | Method::CrossTeaching | Method::Kd => {
            // The logit-space baselines: one transfer term, weighted by baseline.weight
            // (ramped in, passed as beta_r).
            let (z_own, z_peer) = (own.logits.clone(), peer.logits.clone());
            let tau = cfg.baseline.temperature;
            let l = match cfg.method {
                Method::Dml => dml_loss(z_peer, z_own),
                Method::Kdcl => kdcl_loss(z_own, z_peer, tau),
                Method::CrossTeaching => cross_teaching_loss(z_own, z_peer),
                _ => kd_loss(z_peer, z_own, tau),
            };
            terms.transfer_logit = scalar(&l);
            total = total + l * beta_r;
        }
        Method::Ctrcl | Method::CtrclOffline => {
            if cfg.rlcl.enabled {
                let l = rlcl_loss(
                    peer.logits.clone(),
                    own.logits.clone(),
                    onehot.clone(),
                    &cfg.rlcl,
                );
                terms.transfer_logit = scalar(&l);
                total = total + l * beta_r;
            }
            if cfg.cfcl.enabled {
                let mut l = Tensor::<B, 1>::zeros([1], &onehot.device());
                for (i, &stride) in cfg.cfcl.taps.iter().enumerate() {
                    let f_own = own.feature(stride).expect("taps validated with the config");
                    let f_peer = peer
                        .feature(stride)
                        .expect("taps validated with the config");
                    let p_own = perceive(
                        own_cpm[i].forward(f_own),
                        fractions[i].clone(),
                        cfg.cfcl.temperature,
                    );
                    let p_peer = perceive(
                        peer_cpm[i].forward(f_peer),
                        fractions[i].clone(),
                        cfg.cfcl.temperature,
                    );
                    l = l
                        + perception_loss(&p_own, fractions[i].clone())
                        + alignment_loss(&p_peer, &p_own);
                }
                terms.transfer_feature = scalar(&l);
                total = total + l * beta_f;
            }
        }
    }
    terms.total = scalar(&total);
    StudentLoss { total, terms }
}

/// Builds the one-hot label tensor.
///
/// # Shapes
/// labels `B·S·S` → `[B, K, S, S]`.
fn onehot_tensor<B: Backend>(batch: &Batch, k: usize, device: &B::Device) -> Tensor<B, 4> {
    let (b, s) = (batch.batch, batch.size);
    let mut data = vec![0f32; b * k * s * s];
    for (i, &label) in batch.labels.iter().enumerate() {
        let (n, p) = (i / (s * s), i % (s * s));
        data[(n * k + label as usize) * s * s + p] = 1.0;
    }
    Tensor::from_data(TensorData::new(data, [b, k, s, s]), device)
}

/// The losses of one batch: each student's terms, the sum to differentiate, and which slots
/// learn (a frozen teacher without CPM heads does not).
pub(crate) struct PairLoss<B: Backend> {
    pub(crate) terms: [Terms; 2],
    total: Tensor<B, 1>,
    learns: [bool; 2],
}

/// Both students forward `x`; each student's loss (L_seg plus the method's transfer terms,
/// METHOD.md §7). Offline methods forward the teacher slot frozen.
///
/// # Shapes
/// `x`: `[B, 1, S, S]`; `onehot`: `[B, K, S, S]`.
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
    let fractions: Vec<Tensor<B, 4>> = if cfg.method.is_ctrcl() && cfg.cfcl.enabled {
        cfg.cfcl
            .taps
            .iter()
            .map(|&s| area_downsample(onehot.clone(), s))
            .collect()
    } else {
        Vec::new()
    };
    if cfg.method.is_offline() {
        return offline_loss(cfg, students, x, onehot, &fractions, beta_r, beta_f);
    }
    let out_c = students[0].net.forward(x.clone());
    let out_t = students[1].net.forward(x);
    let loss_c = student_loss(
        cfg,
        &out_c,
        &out_t,
        &students[0].cpm,
        &students[1].cpm,
        &onehot,
        &fractions,
        beta_r,
        beta_f,
    );
    let loss_t = student_loss(
        cfg,
        &out_t,
        &out_c,
        &students[1].cpm,
        &students[0].cpm,
        &onehot,
        &fractions,
        beta_r,
        beta_f,
    );
    PairLoss {
        terms: [loss_c.terms, loss_t.terms],
        total: loss_c.total + loss_t.total,
        learns: [true, true],
    }
}

/// The schedule's values for one step: each student's learning rate and the transfer weights
/// β_r (logit) and β_f (feature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepRates {
    pub(crate) lrs: [f64; 2],
    pub(crate) beta_r: f64,
    pub(crate) beta_f: f64,
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
    let StepRates {
        lrs,
        beta_r,
        beta_f,
    } = rates;
    let n = batches.len();
    if n == 0 {
        bail!("a step needs at least one batch");
    }
    let device = batches[0].0.device();
    let synced = |g: GradientsParams, student: &TrainStudent<B>| -> Result<GradientsParams> {
        match sync {
            None => Ok(g),
            Some(peer) => crate::distributed::all_reduce_mean(student, g, peer),
        }
    };
    let synced_terms = |terms: [Terms; 2]| -> Result<[Terms; 2]> {
        match sync {
            None => Ok(terms),
            Some(peer) => crate::distributed::all_reduce_terms::<B::InnerBackend>(
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
        let loss = pair_loss(cfg, students, x, onehot, beta_r, beta_f);
        let mut grads = loss.total.backward();
        crate::memory::optimizer_phase();
        for i in 0..2 {
            if loss.learns[i] {
                let g = GradientsParams::from_module(&mut grads, &students[i]);
                let g = synced(g, &students[i])?;
                let module = students[i].clone();
                students[i] = optims[i].step(lrs[i], module, g);
            }
        }
        return synced_terms(loss.terms);
    }
    let mut accumulators = [GradientsAccumulator::new(), GradientsAccumulator::new()];
    let mut terms = [Terms::default(); 2];
    let mut learns = [false; 2];
    for (x, onehot) in batches {
        let loss = pair_loss(cfg, students, x, onehot, beta_r, beta_f);
        let mut grads = (loss.total / n as f64).backward();
        for i in 0..2 {
            if loss.learns[i] {
                let g = GradientsParams::from_module(&mut grads, &students[i]);
                accumulators[i].accumulate(&students[i], g);
            }
            terms[i].add_scaled(&loss.terms[i], 1.0 / n as f64);
        }
        learns = loss.learns;
    }
    crate::memory::optimizer_phase();
    for i in 0..2 {
        if learns[i] {
            let g = synced(accumulators[i].grads(), &students[i])?;
            let module = students[i].clone();
            students[i] = optims[i].step(lrs[i], module, g);
        }
    }
    synced_terms(terms)
}

/// The slot (0 = cnn, 1 = transformer) of the frozen teacher of an offline method.
fn teacher_slot(cfg: &TrainConfig) -> usize {
    match cfg.teacher.role {
        TeacherRole::Cnn => 0,
        TeacherRole::Transformer => 1,
    }
}

/// A frozen network's outputs as constants of the autodiff graph: evaluation mode (BatchNorm
/// running statistics, no dropout), no gradients, running statistics untouched.
fn frozen_forward<B: AutodiffBackend>(net: &Student<B>, x: Tensor<B, 4>) -> SegOutput<B> {
    let out = net.valid().forward(x.inner());
    SegOutput {
        logits: Tensor::from_inner(out.logits),
        features: out
            .features
            .into_iter()
            .map(|(s, f)| (s, Tensor::from_inner(f)))
            .collect(),
    }
}

/// The losses of `kd` and `ctrcl-offline`: the teacher slot forwards frozen; the student learns
/// from it one way; the teacher's CPM heads (ctrcl-offline with CFCL) learn to perceive
/// categories on the teacher's fixed features. The teacher network itself never changes.
fn offline_loss<B: AutodiffBackend>(
    cfg: &TrainConfig,
    students: &[TrainStudent<B>; 2],
    x: Tensor<B, 4>,
    onehot: Tensor<B, 4>,
    fractions: &[Tensor<B, 4>],
    beta_r: f64,
    beta_f: f64,
) -> PairLoss<B> {
    let t = teacher_slot(cfg);
    let s = 1 - t;
    let out_s = students[s].net.forward(x.clone());
    let out_t = frozen_forward(&students[t].net, x);
    let loss_s = student_loss(
        cfg,
        &out_s,
        &out_t,
        &students[s].cpm,
        &students[t].cpm,
        &onehot,
        fractions,
        beta_r,
        beta_f,
    );
    let seg_t = seg_loss(
        out_t.logits.clone(),
        onehot,
        cfg.seg.ce_weight,
        cfg.seg.dice_weight,
    );
    let mut terms_t = Terms {
        ce: scalar(&seg_t.ce),
        dice: scalar(&seg_t.dice),
        seg: scalar(&seg_t.total),
        total: scalar(&seg_t.total),
        ..Default::default()
    };
    let mut total = loss_s.total;
    let teacher_cpm = !students[t].cpm.is_empty();
    if teacher_cpm {
        let mut cp = Tensor::<B, 1>::zeros([1], &total.device());
        for (i, &stride) in cfg.cfcl.taps.iter().enumerate() {
            let f = out_t
                .feature(stride)
                .expect("taps validated with the config");
            let p = perceive(
                students[t].cpm[i].forward(f),
                fractions[i].clone(),
                cfg.cfcl.temperature,
            );
            cp = cp + perception_loss(&p, fractions[i].clone());
        }
        terms_t.transfer_feature = scalar(&cp);
        total = total + cp * beta_f;
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

/// For an offline method: the teacher run's architecture and sizes for the teacher's role, so
/// that this run's config (written to `config.toml`, used by `test` and `--resume`) describes
/// the network in that slot.
fn resolve_teacher(cfg: &TrainConfig, class_names: &[String]) -> Result<TrainConfig> {
    let mut cfg = cfg.clone();
    let run = cfg.teacher.run.clone();
    let (tcfg, tinfo) = crate::tester::open_run(&run)
        .with_context(|| format!("teacher.run = {}", run.display()))?;
    if tinfo.class_names != class_names {
        bail!(
            "teacher.run = {}: its classes {:?} differ from this dataset's {:?}",
            run.display(),
            tinfo.class_names,
            class_names
        );
    }
    if tcfg.data.image_size != cfg.data.image_size {
        bail!(
            "teacher.run = {}: trained at image_size {}, this run uses {}; set data.image_size = {0}",
            run.display(),
            tcfg.data.image_size,
            cfg.data.image_size
        );
    }
    let (arch, other) = match cfg.teacher.role {
        TeacherRole::Cnn => (tcfg.students.cnn, cfg.students.transformer),
        TeacherRole::Transformer => (tcfg.students.transformer, cfg.students.cnn),
    };
    let sizes_differ = match arch {
        Architecture::Unet => tcfg.models.unet != cfg.models.unet,
        Architecture::Resunet => tcfg.models.resunet != cfg.models.resunet,
        Architecture::Segformer => tcfg.models.segformer != cfg.models.segformer,
        Architecture::SwinUnet => tcfg.models.swin_unet != cfg.models.swin_unet,
    };
    if arch == other && sizes_differ {
        bail!(
            "teacher.run = {}: the teacher and the student are both {} with different sizes; \
             give the student the teacher's models.* sizes",
            run.display(),
            arch.name()
        );
    }
    match cfg.teacher.role {
        TeacherRole::Cnn => cfg.students.cnn = arch,
        TeacherRole::Transformer => cfg.students.transformer = arch,
    }
    match arch {
        Architecture::Unet => cfg.models.unet = tcfg.models.unet.clone(),
        Architecture::Resunet => cfg.models.resunet = tcfg.models.resunet.clone(),
        Architecture::Segformer => cfg.models.segformer = tcfg.models.segformer.clone(),
        Architecture::SwinUnet => cfg.models.swin_unet = tcfg.models.swin_unet.clone(),
    }
    cfg.teacher.run = std::fs::canonicalize(&run).unwrap_or(run);
    cfg.validate()?;
    Ok(cfg)
}

/// Loads the teacher's checkpoint (its `best-ROLE/`, else `last/`) into a network of `cfg`.
fn load_teacher<B: AutodiffBackend>(
    cfg: &TrainConfig,
    k: usize,
    device: &B::Device,
) -> Result<Student<B>> {
    let role = Role::BOTH[teacher_slot(cfg)];
    let (net, _) = crate::tester::load_student::<B>(&cfg.teacher.run, cfg, role, k, device)
        .with_context(|| format!("loading the teacher from {}", cfg.teacher.run.display()))?;
    Ok(net)
}

pub(crate) fn build_student<B: AutodiffBackend>(
    cfg: &TrainConfig,
    role: Role,
    k: usize,
    device: &B::Device,
) -> TrainStudent<B> {
    let arch = cfg.students.of(role);
    let net = cfg
        .models
        .init(arch, cfg.data.image_size, cfg.data.channels, k, device);
    let cpm = if cfg.method.is_ctrcl() && cfg.cfcl.enabled {
        let taps = cfg.models.tap_channels(arch);
        cfg.cfcl
            .taps
            .iter()
            .map(|stride| {
                let channels = taps.iter().find(|(s, _)| s == stride).expect("validated").1;
                ProjectionHead::new(channels, cfg.cfcl.dim, device)
            })
            .collect()
    } else {
        Vec::new()
    };
    TrainStudent { net, cpm }
}

/// A run directory must be new or empty, so that an earlier run is never overwritten. Returns
/// a guard that empties it again (removing it if it was created here) unless
/// [`NewRunDir::keep`] is called: a run that fails while setting up leaves no half-created
/// directory to block the next `--out`.
pub fn prepare_run_dir(out: &Path) -> Result<NewRunDir> {
    let existed = out.exists();
    if existed {
        let non_empty = std::fs::read_dir(out)
            .with_context(|| format!("cannot read {}", out.display()))?
            .next()
            .is_some();
        if non_empty {
            bail!(
                "{} already exists and is not empty; choose a new --out so that earlier results are kept",
                out.display()
            );
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    Ok(NewRunDir {
        dir: Some((out.to_path_buf(), existed)),
    })
}

/// A run directory being set up; see [`prepare_run_dir`].
pub struct NewRunDir {
    /// The directory and whether it existed (empty) before; `None` once kept.
    dir: Option<(PathBuf, bool)>,
}

impl NewRunDir {
    /// The run has started: its directory stays, whatever happens next.
    pub fn keep(mut self) {
        self.dir = None;
    }
}

impl Drop for NewRunDir {
    fn drop(&mut self) {
        let Some((dir, existed)) = self.dir.take() else {
            return;
        };
        // Everything in it was written by this setup (it was empty or absent before).
        if existed {
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
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

/// Trains both students as `cfg` says, writing everything into `out`.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    out: &Path,
    device: &B::Device,
    backend: &str,
    progress: bool,
) -> Result<TrainSummary> {
    cfg.validate()?;
    let dataset = Dataset::open(&cfg.data.dataset, cfg.data.open_options())
        .with_context(|| format!("opening dataset {}", cfg.data.dataset.display()))?;
    if progress {
        for note in &dataset.notes {
            eprintln!("data: {note}");
        }
    }
    // The input layer follows the data (3 channels for RGB datasets); recorded with the run.
    let mut with_channels = cfg.clone();
    with_channels.data.channels = dataset.channels();
    let cfg = &with_channels;
    let resolved;
    let cfg = if cfg.method.is_offline() {
        resolved = resolve_teacher(cfg, &dataset.class_names)?;
        &resolved
    } else {
        cfg
    };
    check_precision::<B>(cfg, device, backend)?;
    let k = dataset.num_classes();
    let memory = crate::memory::gate::<B>(cfg, k, device, progress)?;
    let run_dir = prepare_run_dir(out)?;
    let _lock = lock_run(out)?;
    let size = cfg.data.image_size;
    let info = RunInfo {
        ctrcl_version: env!("CARGO_PKG_VERSION").to_string(),
        backend: backend.to_string(),
        method: cfg.method.name().to_string(),
        dataset: std::fs::canonicalize(&cfg.data.dataset)
            .unwrap_or_else(|_| cfg.data.dataset.clone()),
        class_names: dataset.class_names.clone(),
        image_size: size,
        cnn: cfg.students.cnn.name().to_string(),
        transformer: cfg.students.transformer.name().to_string(),
        channel_normalization: dataset.channel_norms.clone(),
        burn_fallbacks: ctrcl_models::switches::fallbacks()
            .into_iter()
            .map(String::from)
            .collect(),
    };
    write_text_atomic(&run_dir::config(out), &cfg.to_toml())?;
    write_text_atomic(&run_dir::info(out), &serde_json::to_string_pretty(&info)?)?;
    write_split_lists(&dataset, out)?;
    let log = std::fs::File::create(run_dir::log(out)).context("cannot create log.jsonl")?;
    let mut log = RunLog {
        file: log,
        events: EventWriter::create(out)?,
        class_names: dataset.class_names.clone(),
    };
    log.line(json!({"event": "start", "backend": backend, "method": cfg.method.name(), "image_size": size, "iterations": cfg.schedule.iterations, "batch_size": cfg.data.batch_size, "accumulate": cfg.optim.accumulate, "precision": cfg.precision.name(), "devices": cfg.parallel.devices, "nodes": cfg.parallel.nodes, "node_rank": cfg.parallel.node_rank, "seed": cfg.seed}))?;
    if let Some((estimate, available)) = memory {
        log.line(json!({"event": "memory", "estimated_bytes": estimate.bytes, "available_bytes": available,
            "calibration_batch": estimate.calibration_batch,
            "calibration": estimate.measured.iter().map(|(size, peak)| json!({"image_size": size,
                "forward_backward_bytes": peak.gradients, "optimizer_bytes": peak.optimizer})).collect::<Vec<_>>()}))?;
    }

    B::seed(device, cfg.seed);
    let mut students = [
        build_student::<B>(cfg, Role::Cnn, k, device),
        build_student::<B>(cfg, Role::Transformer, k, device),
    ];
    if cfg.method.is_offline() {
        students[teacher_slot(cfg)].net = load_teacher(cfg, k, device)?;
    }
    for (i, role) in Role::BOTH.into_iter().enumerate() {
        if cfg.method.is_offline() && i == teacher_slot(cfg) {
            continue;
        }
        let m = &cfg.models;
        let imported = match cfg.students.of(role) {
            Architecture::Resunet if !m.resunet.pretrained.as_os_str().is_empty() => {
                let path = &m.resunet.pretrained;
                let (net, report) = m
                    .resunet
                    .init_pretrained::<B>(path, cfg.data.channels, k, device)
                    .map_err(|e| anyhow::anyhow!("models.resunet.pretrained: {e}"))?;
                Some((Student::Resunet(net), report, path))
            }
            Architecture::Segformer if !m.segformer.pretrained.as_os_str().is_empty() => {
                let path = &m.segformer.pretrained;
                let (net, report) = m
                    .segformer
                    .init_pretrained::<B>(path, cfg.data.channels, k, device)
                    .map_err(|e| anyhow::anyhow!("models.segformer.pretrained: {e}"))?;
                Some((Student::Segformer(net), report, path))
            }
            Architecture::SwinUnet if !m.swin_unet.pretrained.as_os_str().is_empty() => {
                let path = &m.swin_unet.pretrained;
                let (net, report) = m
                    .swin_unet
                    .init_pretrained::<B>(path, size, cfg.data.channels, k, device)
                    .map_err(|e| anyhow::anyhow!("models.swin_unet.pretrained: {e}"))?;
                Some((Student::SwinUnet(net), report, path))
            }
            _ => None,
        };
        if let Some((net, report, path)) = imported {
            students[i].net = net;
            log.line(json!({"event": "pretrained", "role": role.name(), "file": path,
                "loaded": report.loaded.len(), "missing": report.missing, "unexpected": report.unexpected}))?;
        }
    }
    // Each student's lazily initialised parameters are drawn now from a stream of its own, so
    // its initial weights depend on the seed and its role only — not on the forward order, the
    // other student, or a frozen teacher in the other slot — and data-parallel replicas can copy
    // them.
    for (i, s) in students.iter().enumerate() {
        B::seed(device, step_seed(cfg.seed, usize::MAX - i));
        materialize_params(s);
    }
    let optims = [
        StudentOptimizer::<B>::new(&cfg.optim.cnn),
        StudentOptimizer::<B>::new(&cfg.optim.transformer),
    ];
    run_dir.keep();
    run_loop(
        cfg,
        out,
        &dataset,
        students,
        optims,
        0,
        [None, None],
        log,
        device,
        progress,
    )
}

/// Appends JSON lines to `log.jsonl`, flushed at once so a crash loses nothing logged, and
/// mirrors their numbers into the run's TensorBoard event file (`crate::tensorboard`).
struct RunLog {
    file: std::fs::File,
    events: EventWriter,
    class_names: Vec<String>,
}

impl RunLog {
    fn line(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").context("cannot write log.jsonl")?;
        self.file.flush().context("cannot write log.jsonl")?;
        self.events.log_line(&v, &self.class_names)
    }
}

/// The seed of step `t`'s random draws (dropout, stochastic depth): a function of (seed, t) only,
/// so that a resumed run draws exactly what an uninterrupted one would.
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Continues an interrupted run from its `last/` checkpoint: both students, their CPM heads,
/// both optimizers' state and the step; the data order and random draws depend only on (seed,
/// step), so the resumed run logs exactly what the uninterrupted one would have. Log lines after
/// the checkpoint's step (written before the interruption) are dropped first.
pub fn resume<B: AutodiffBackend>(
    run: &Path,
    device: &B::Device,
    backend: &str,
    progress: bool,
) -> Result<TrainSummary> {
    let (cfg, info) = crate::tester::open_run(run)?;
    check_precision::<B>(&cfg, device, backend)?;
    let _lock = lock_run(run)?;
    for name in [
        run_dir::LAST.to_string(),
        run_dir::best_name(Role::Cnn),
        run_dir::best_name(Role::Transformer),
    ] {
        if let Some(note) = recover_checkpoint(run, &name)? {
            eprintln!("{note}");
        }
    }
    let last = run_dir::last(run);
    let state_path = run_dir::state(&last);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).with_context(|| {
            format!(
                "{} has no checkpoint to resume from ({})",
                run.display(),
                state_path.display()
            )
        })?)
        .with_context(|| format!("{} is not valid", state_path.display()))?;
    let step = state["step"]
        .as_u64()
        .with_context(|| format!("{}: no step", state_path.display()))? as usize;
    if step >= cfg.schedule.iterations {
        bail!(
            "{} already finished all {} iterations",
            run.display(),
            cfg.schedule.iterations
        );
    }
    let dataset = Dataset::open(&info.dataset, cfg.data.open_options())
        .with_context(|| format!("opening the run's dataset {}", info.dataset.display()))?;
    let k = dataset.num_classes();
    crate::memory::gate::<B>(&cfg, k, device, progress)?;
    B::seed(device, cfg.seed);
    let mut students = Vec::with_capacity(2);
    let mut optims = Vec::with_capacity(2);
    let mut best = Vec::with_capacity(2);
    for (role, optim_cfg) in Role::BOTH
        .into_iter()
        .zip([&cfg.optim.cnn, &cfg.optim.transformer])
    {
        let s = build_student::<B>(&cfg, role, k, device);
        let net = crate::student::load_net(s.net, &last, role, device)?;
        let cpm_path = last.join(format!("{}-cpm", role.name()));
        let cpm = s
            .cpm
            .load_file(cpm_path.clone(), &recorder(), device)
            .map_err(|e| anyhow::anyhow!("cannot load {}.mpk: {e}", cpm_path.display()))?;
        students.push(TrainStudent { net, cpm });
        optims.push(
            StudentOptimizer::<B>::new(optim_cfg)
                .load(&last.join(format!("{}-optim", role.name())), device)?,
        );
        best.push(read_best(run, role));
    }
    truncate_log(&run_dir::log(run), step)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir::log(run))
        .context("cannot open log.jsonl")?;
    let mut log = RunLog {
        file,
        events: EventWriter::resume(run, step as u64)?,
        class_names: info.class_names.clone(),
    };
    log.line(json!({"event": "resume", "from_step": step, "backend": backend}))?;
    let students: [TrainStudent<B>; 2] = students
        .try_into()
        .map_err(|_| anyhow::anyhow!("two students"))?;
    let optims: [StudentOptimizer<B>; 2] = optims
        .try_into()
        .map_err(|_| anyhow::anyhow!("two optimizers"))?;
    let best: [Option<DiceScores>; 2] = best
        .try_into()
        .map_err(|_| anyhow::anyhow!("two students"))?;
    run_loop(
        &cfg, run, &dataset, students, optims, step, best, log, device, progress,
    )
}

/// The validation scores recorded with a `best-ROLE/` checkpoint, if any.
fn read_best(run: &Path, role: Role) -> Option<DiceScores> {
    let text = std::fs::read_to_string(run_dir::state(&run_dir::best(run, role))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(DiceScores {
        mean: v["val_mean_dice"].as_f64()?,
        per_class: v["val_per_class_dice"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_f64())
            .collect(),
    })
}

/// Keeps the log lines up to `step` (and events without a step), atomically.
fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut kept = String::new();
    for line in text.lines() {
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => continue, // a line cut by the interruption
        };
        if v.get("step")
            .and_then(|s| s.as_u64())
            .is_none_or(|s| s as usize <= step)
        {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    write_text_atomic(path, &kept)
}

#[allow(clippy::too_many_arguments)]
fn run_loop<B: AutodiffBackend>(
    cfg: &TrainConfig,
    out: &Path,
    dataset: &Dataset,
    mut students: [TrainStudent<B>; 2],
    mut optims: [StudentOptimizer<B>; 2],
    first_step: usize,
    mut best: [Option<DiceScores>; 2],
    mut log: RunLog,
    device: &B::Device,
    progress: bool,
) -> Result<TrainSummary> {
    let k = dataset.num_classes();
    let size = cfg.data.image_size;
    let base_lr = [cfg.optim.cnn.lr, cfg.optim.transformer.lr];
    let train_samples = Arc::new(dataset.samples(Split::Train, size));
    let val_samples = dataset.samples(Split::Val, size);
    let total = cfg.schedule.iterations;
    let rampup_steps = cfg.schedule.rampup_fraction * total as f64;
    // With accumulation, step t consumes batches t·N .. t·N + N − 1 of the loader's stream.
    let accumulate = cfg.optim.accumulate;
    let mut loader = BatchLoader::start(
        train_samples,
        size,
        cfg.data.batch_size,
        cfg.seed,
        ctrcl_data::loader::Plan {
            geometric: cfg.data.augment,
            extra: cfg.augmentation,
            foreground: cfg.data.foreground_oversample,
        },
        first_step * accumulate,
        total * accumulate,
        cfg.data.workers,
    );

    let bar = if progress {
        ProgressBar::new(total as u64).with_position(first_step as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(format!(
        "{} {}+{}",
        cfg.method.name(),
        cfg.students.cnn.name(),
        cfg.students.transformer.name()
    ));
    let parallel = DataParallel::start(cfg, &students, &optims, device)?;
    let started = Instant::now();
    for step in first_step..total {
        B::seed(device, step_seed(cfg.seed, step));
        let beta_r = ramp_up(cfg.transfer_weight(), step, rampup_steps);
        let beta_f = ramp_up(cfg.cfcl.weight, step, rampup_steps);
        let lrs = base_lr.map(|lr| poly_lr(lr, step, total, cfg.optim.poly_power));
        let mut batches = Vec::with_capacity(accumulate);
        for _ in 0..accumulate {
            let mut batch = loader
                .next()
                .context("the batch loader stopped early (a worker thread failed)")?;
            let x = Tensor::<B, 4>::from_data(
                TensorData::new(
                    std::mem::take(&mut batch.images),
                    [batch.batch, batch.channels, size, size],
                ),
                device,
            );
            batches.push((x, onehot_tensor::<B>(&batch, k, device)));
        }
        let rates = StepRates {
            lrs,
            beta_r,
            beta_f,
        };
        let [terms_c, terms_t] = parallel.step(cfg, &mut students, &mut optims, batches, rates)?;
        for (role, t) in Role::BOTH.iter().zip([&terms_c, &terms_t]) {
            if !t.total.is_finite() {
                // Recorded in the log too, so the run directory says why it stopped.
                log.line(
                    json!({"event": "stop", "reason": "diverged", "step": step + 1,
                    "role": role.name(), "terms": t.json(cfg.method)}),
                )?;
                bail!(
                    "step {}: the {} student's loss is not finite (ce {}, dice {}, logit transfer {}, feature transfer {}); \
                     training stopped; {}",
                    step + 1,
                    role.name(),
                    t.ce,
                    t.dice,
                    t.transfer_logit,
                    t.transfer_feature,
                    last_checkpoint_note(out)
                );
            }
        }
        bar.inc(1);
        bar.set_message(format!(
            "loss cnn {:.3} transformer {:.3}",
            terms_c.total, terms_t.total
        ));
        let done = step + 1;
        if done % cfg.schedule.log_every == 0 || done == total {
            log.line(json!({
                "step": done,
                "lr": {"cnn": lrs[0], "transformer": lrs[1]},
                "beta_r": beta_r, "beta_f": beta_f,
                "cnn": terms_c.json(cfg.method),
                "transformer": terms_t.json(cfg.method),
                "elapsed_s": started.elapsed().as_secs_f64(),
            }))?;
        }
        if done % cfg.schedule.validate_every == 0 || done == total {
            let mut val = serde_json::Map::new();
            for (i, role) in Role::BOTH.iter().enumerate() {
                let net = students[i].net.valid();
                let scores = if val_samples.is_empty() {
                    DiceScores {
                        per_class: vec![f64::NAN; k - 1],
                        mean: f64::NAN,
                    }
                } else {
                    dice_on_samples(&net, &val_samples, size, k, device)
                };
                val.insert(
                    role.name().into(),
                    json!({"mean_dice": scores.mean, "per_class_dice": scores.per_class}),
                );
                // Without a validation split (Synapse's protocol) the best checkpoints follow
                // the last one.
                if val_samples.is_empty() || best[i].as_ref().is_none_or(|b| scores.mean > b.mean) {
                    write_checkpoint(out, &run_dir::best_name(*role), |dir| {
                        save_module(students[i].net.clone(), &dir.join(role.name()))?;
                        write_text_atomic(
                            &run_dir::state(dir),
                            &json!({"step": done, "val_mean_dice": scores.mean, "val_per_class_dice": scores.per_class}).to_string(),
                        )
                    })?;
                    best[i] = Some(scores);
                }
            }
            log.line(json!({"step": done, "val": val}))?;
            save_last(out, &students, &optims, done)?;
            let message = if val_samples.is_empty() {
                format!("step {done}/{total}: no validation split; best-* checkpoints = last")
            } else {
                format!(
                    "step {done}/{total}: validation mean Dice cnn {:.4} transformer {:.4}",
                    val["cnn"]["mean_dice"].as_f64().unwrap_or(f64::NAN),
                    val["transformer"]["mean_dice"].as_f64().unwrap_or(f64::NAN)
                )
            };
            say(&bar, message);
        }
    }
    bar.finish_and_clear();
    parallel.finish::<B>(device)?;
    let seconds = started.elapsed().as_secs_f64();
    log.line(json!({"event": "end", "seconds": seconds}))?;
    let [c, t] = best;
    Ok(TrainSummary {
        run_dir: out.to_path_buf(),
        best_val: [
            c.expect("validated at the end"),
            t.expect("validated at the end"),
        ],
        seconds,
    })
}

/// What a stopped run leaves to resume from: the step of its intact `last/` checkpoint, or that
/// there is none yet.
fn last_checkpoint_note(out: &Path) -> String {
    match crate::tester::checkpoint_step(&run_dir::last(out)) {
        Some(step) => format!(
            "the last checkpoint, {} (step {step}), is intact",
            run_dir::last(out).display()
        ),
        None => format!(
            "no checkpoint was written yet (one is written every schedule.validate_every steps), so {} cannot be resumed",
            out.display()
        ),
    }
}

fn save_last<B: AutodiffBackend>(
    out: &Path,
    students: &[TrainStudent<B>; 2],
    optims: &[StudentOptimizer<B>; 2],
    step: usize,
) -> Result<()> {
    write_checkpoint(out, run_dir::LAST, |dir| {
        for (i, role) in Role::BOTH.iter().enumerate() {
            save_module(students[i].net.clone(), &dir.join(role.name()))?;
            save_module(
                students[i].cpm.clone(),
                &dir.join(format!("{}-cpm", role.name())),
            )?;
            optims[i].save(&dir.join(format!("{}-optim", role.name())))?;
        }
        write_text_atomic(&run_dir::state(dir), &json!({"step": step}).to_string())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_and_ramp_follow_their_formulas() {
        assert!((poly_lr(0.01, 0, 100, 0.9) - 0.01).abs() < 1e-15);
        assert!((poly_lr(0.01, 50, 100, 0.9) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(poly_lr(0.01, 100, 100, 0.9), 0.0);
        assert!((ramp_up(1.0, 0, 10.0) - (-5.0f64).exp()).abs() < 1e-15);
        assert!((ramp_up(2.0, 5, 10.0) - 2.0 * (-1.25f64).exp()).abs() < 1e-15);
        assert_eq!(ramp_up(0.1, 10, 10.0), 0.1);
        assert_eq!(ramp_up(0.1, 50, 10.0), 0.1);
        assert_eq!(ramp_up(0.3, 0, 0.0), 0.3);
    }
}

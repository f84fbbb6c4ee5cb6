//! The experiment configuration: a TOML file with every key documented in `configs/*.toml`,
//! overridable with `--set key=value`. Unknown keys are errors that name the key.
//!
//! This file holds the keys (one struct per TOML table, with its defaults); `load.rs` reads text
//! and overrides into them, `validate.rs` checks what serde cannot.

use anyhow::Result;
use ctrcl_data::geometry::Upsample;
use ctrcl_data::loader::Augment;
use ctrcl_data::normalize::{Intensity, Normalize};
use ctrcl_models::{Architecture, ModelSizes};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

mod load;
mod validate;

pub use load::fuzz_config;

/// Training method (METHOD.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Each student with L_seg only.
    Independent,
    /// Deep mutual learning: L_seg + KL(sg[p_peer] ‖ p_self).
    Dml,
    /// KDCL: L_seg + τ²·KL(sg[softmax(mean of both logits/τ)] ‖ softmax(z_self/τ)).
    Kdcl,
    /// Cross teaching (SSL4MIS CTCT): L_seg + Dice(softmax(z_self), argmax sg[z_peer]).
    CrossTeaching,
    /// CTRCL: L_seg + β_r·RLCL + β_f·CFCL.
    #[default]
    Ctrcl,
    /// Offline knowledge distillation from a frozen teacher (`[teacher]`):
    /// L_seg + β_r·τ²·KL(sg[softmax(z_T/τ)] ‖ softmax(z_S/τ)).
    Kd,
    /// CTRCL's transfers (ARM-rectified logits, CPM features) from a frozen teacher, one way.
    CtrclOffline,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Independent => "independent",
            Method::Dml => "dml",
            Method::Kdcl => "kdcl",
            Method::CrossTeaching => "cross-teaching",
            Method::Ctrcl => "ctrcl",
            Method::Kd => "kd",
            Method::CtrclOffline => "ctrcl-offline",
        }
    }

    /// Whether one student is a frozen teacher loaded from another run.
    pub fn is_offline(self) -> bool {
        matches!(self, Method::Kd | Method::CtrclOffline)
    }

    /// Whether the method uses RLCL/CFCL (and so CPM heads when CFCL is on).
    pub fn is_ctrcl(self) -> bool {
        matches!(self, Method::Ctrcl | Method::CtrclOffline)
    }

    /// Whether the method is a logit-space baseline with one transfer term (`[baseline]`).
    pub fn is_baseline(self) -> bool {
        matches!(
            self,
            Method::Dml | Method::Kdcl | Method::CrossTeaching | Method::Kd
        )
    }

    /// The `log.jsonl` keys of the method's transfer terms: the logit-space one and the
    /// feature-space one, where the method has them.
    pub fn transfer_log_keys(self) -> (Option<&'static str>, Option<&'static str>) {
        match self {
            Method::Independent => (None, None),
            Method::Dml => (Some("dml"), None),
            Method::Kdcl => (Some("kdcl"), None),
            Method::CrossTeaching => (Some("cross_teaching"), None),
            Method::Kd => (Some("kd"), None),
            Method::Ctrcl | Method::CtrclOffline => (Some("rlcl"), Some("cfcl")),
        }
    }
}

/// Which student of the teacher run teaches (and is frozen in this run's slot of that role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherRole {
    Cnn,
    #[default]
    Transformer,
}

/// The frozen teacher of `kd` and `ctrcl-offline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TeacherConfig {
    /// Run directory of a finished `ctrcl train` whose student of `role` teaches.
    pub run: PathBuf,
    /// `transformer` (default: the Transformer teaches the CNN) or `cnn`.
    pub role: TeacherRole,
}

/// How wrong pixels of a soft label are rectified (METHOD.md §4 step 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rectify {
    /// ARM: λ = max(λ_min, λ_dyn).
    Adaptive,
    /// λ = 1: wrong pixels become the one-hot ground truth.
    Hard,
    /// No rectification (plain mutual distillation).
    None,
}

/// Per-pixel weights of the RLCL divergence (METHOD.md §4 step 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelWeight {
    None,
    Certainty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// A prepared dataset directory (`ctrcl data prepare` output). Relative paths are resolved
    /// against the working directory.
    pub dataset: PathBuf,
    /// Side of the square network input; slices are padded to a square and resized to it.
    pub image_size: usize,
    /// Intensity window `[low, high]` applied before normalisation (CT: e.g. `[-125, 275]`);
    /// empty = none.
    pub clip: Vec<f32>,
    /// A named CT window used when `clip` is empty: see [`ct_window`].
    pub window: String,
    pub normalize: Normalize,
    /// Image channels of the dataset (1 grey, 3 RGB): set by `train` from the data and recorded
    /// with the run, so test/predict build the same input layer.
    pub channels: usize,
    /// 2D masks (Kvasir-SEG's JPEGs): grey level from which a pixel is foreground.
    pub mask_threshold: u8,
    /// Image resize to the network input: bilinear, or TransUNet's cubic spline (`spline3`).
    pub image_resize: ctrcl_data::geometry::ImageResize,
    /// nnU-Net raw datasets: stored label value → class (`"*"` = every other value), e.g. to
    /// group vertebra ids or drop structures; empty = labels are the classes as stored.
    pub label_map: std::collections::BTreeMap<String, u8>,
    /// nnU-Net raw datasets without `ctrcl_split.json`: which of nnU-Net's folds to train on
    /// (`splits_final.json`, else nnU-Net's generated five; `ctrcl_data::nnunet`).
    pub fold: usize,
    /// nnU-Net raw datasets: a split file (`ctrcl_split.json` format: slabs of the one case, or
    /// case lists) used instead of the dataset's own, e.g. to evaluate on other slabs without a
    /// copy of the data; recorded with the run as an absolute path. Absent: the dataset's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<PathBuf>,
    /// Share of each training batch forced to hold a slice containing a foreground class chosen
    /// uniformly among those present in the training slices (nnU-Net's
    /// `oversample_foreground_percent`, 0.33 there); 0 = off (`ctrcl_data::loader`).
    pub foreground_oversample: f64,
    /// Semi-supervised training (METHOD.md §9): a fraction in (0, 1] of the training slices
    /// (evenly spaced), or a list of training case ids, keep their labels; the other training
    /// slices are used without them (`ctrcl_data::labelled`, `[semi]`). Absent: all labelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labelled: Option<ctrcl_data::labelled::Labelled>,
    pub augment: Augment,
    pub batch_size: usize,
    /// Threads preparing batches.
    pub workers: usize,
}

/// Named CT windows in HU, `[level − width/2, level + width/2]`: `abdomen` [-125, 275] is
/// TransUNet's Synapse preprocessing (W400/L75); `liver` W150/L30 → [-45, 105]; `lung`
/// W1500/L−600; `mediastinum` W350/L50; `bone` W1800/L400; `brain` W80/L40.
pub fn ct_window(name: &str) -> Option<[f32; 2]> {
    Some(match name {
        "abdomen" => [-125.0, 275.0],
        "liver" => [-45.0, 105.0],
        "lung" => [-1350.0, 150.0],
        "mediastinum" => [-125.0, 225.0],
        "bone" => [-500.0, 1300.0],
        "brain" => [0.0, 80.0],
        _ => return None,
    })
}

impl DataConfig {
    /// How to read the dataset: intensities and the mask threshold.
    pub fn open_options(&self) -> ctrcl_data::dataset::OpenOptions {
        ctrcl_data::dataset::OpenOptions {
            intensity: self.intensity(),
            mask_threshold: self.mask_threshold,
            image_resize: self.image_resize,
            label_map: self.label_map.clone(),
            fold: self.fold,
            split: self.split.clone(),
        }
    }

    /// The clip window and normalisation as one value.
    pub fn intensity(&self) -> Intensity {
        Intensity {
            clip: match self.clip.as_slice() {
                [lo, hi] => Some([*lo, *hi]),
                _ => ct_window(&self.window),
            },
            normalize: self.normalize,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            dataset: PathBuf::from("data/icbm152"),
            image_size: 224,
            clip: Vec::new(),
            window: String::new(),
            normalize: Normalize::Zscore,
            channels: 1,
            mask_threshold: 128,
            image_resize: Default::default(),
            label_map: Default::default(),
            fold: 0,
            split: None,
            foreground_oversample: 0.0,
            labelled: None,
            augment: Augment::Rot90Flip,
            batch_size: 8,
            workers: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudentsConfig {
    pub cnn: Architecture,
    pub transformer: Architecture,
}

impl StudentsConfig {
    /// The architecture of the student in `role`.
    pub fn of(&self, role: crate::role::Role) -> Architecture {
        match role {
            crate::role::Role::Cnn => self.cnn,
            crate::role::Role::Transformer => self.transformer,
        }
    }
}

impl Default for StudentsConfig {
    fn default() -> Self {
        StudentsConfig {
            cnn: Architecture::Unet,
            transformer: Architecture::SwinUnet,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SegLossConfig {
    pub ce_weight: f64,
    pub dice_weight: f64,
}

impl Default for SegLossConfig {
    fn default() -> Self {
        SegLossConfig {
            ce_weight: 0.5,
            dice_weight: 0.5,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlclConfig {
    pub enabled: bool,
    /// β_r: weight of the logit-wise transfer.
    pub weight: f64,
    /// τ: distillation temperature.
    pub temperature: f64,
    pub rectify: Rectify,
    /// δ: margin by which the rectified label's true class must win.
    pub margin: f64,
    /// ω_a, ω_s, ω_c: weights of the alignment, similarity and certainty factors (0 = off).
    pub alignment_weight: f64,
    pub similarity_weight: f64,
    pub certainty_weight: f64,
    pub pixel_weight: PixelWeight,
}

impl Default for RlclConfig {
    fn default() -> Self {
        RlclConfig {
            enabled: true,
            weight: 1.0,
            temperature: 1.0,
            rectify: Rectify::Adaptive,
            margin: 0.05,
            alignment_weight: 1.0 / 3.0,
            similarity_weight: 1.0 / 3.0,
            certainty_weight: 1.0 / 3.0,
            pixel_weight: PixelWeight::None,
        }
    }
}

/// The one transfer term of the logit-space baselines (DML, KD, KDCL, cross teaching).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Weight of the transfer term, ramped in over `schedule.rampup_fraction` as β_r is.
    pub weight: f64,
    /// τ of KD and KDCL.
    pub temperature: f64,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            weight: 1.0,
            temperature: 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CfclConfig {
    pub enabled: bool,
    /// β_f: weight of the feature-wise transfer.
    pub weight: f64,
    /// Strides of the feature taps to align; both students must tap them.
    pub taps: Vec<usize>,
    /// d: channels of the CPM projection.
    pub dim: usize,
    /// t: temperature of the category perception softmax.
    pub temperature: f64,
}

impl Default for CfclConfig {
    fn default() -> Self {
        CfclConfig {
            enabled: true,
            weight: 0.1,
            taps: vec![8, 4],
            dim: 64,
            temperature: 0.1,
        }
    }
}

/// The optimizer of one student.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StudentOptimConfig {
    pub optimizer: OptimizerKind,
    pub lr: f64,
    /// SGD momentum (no dampening, as PyTorch).
    pub momentum: f64,
    pub weight_decay: f64,
    /// AdamW epsilon (set explicitly: Burn's default 1e-5 differs from PyTorch's 1e-8).
    pub adam_epsilon: f64,
}

impl Default for StudentOptimConfig {
    fn default() -> Self {
        StudentOptimConfig {
            optimizer: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.9,
            weight_decay: 1e-4,
            adam_epsilon: 1e-8,
        }
    }
}

/// One optimizer per student, so each may have its own kind and learning rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub cnn: StudentOptimConfig,
    pub transformer: StudentOptimConfig,
    /// Exponent of the poly decay lr·(1 − it/max_it)^power, for both students.
    pub poly_power: f64,
    /// Batches per optimizer step (gradient accumulation): the step follows the mean gradient of
    /// `accumulate` batches of `data.batch_size`, i.e. an effective batch of accumulate × batch_size.
    /// Learning rates are not rescaled: give the lr you would use for the effective batch.
    pub accumulate: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            cnn: StudentOptimConfig::default(),
            transformer: StudentOptimConfig::default(),
            poly_power: 0.9,
            accumulate: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub iterations: usize,
    /// Ramp-up of the transfer weights as a fraction of the iterations (t_r).
    pub rampup_fraction: f64,
    /// Validate both students every this many iterations (and at the end).
    pub validate_every: usize,
    /// Log the loss terms every this many iterations.
    pub log_every: usize,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            iterations: 600,
            rampup_fraction: 0.1,
            validate_every: 100,
            log_every: 10,
        }
    }
}

/// Semi-supervised training (METHOD.md §9), in effect when `data.labelled` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SemiConfig {
    /// B_l: labelled samples of each batch of `data.batch_size`; the rest (B_u) are unlabelled.
    /// 0 = half, rounded up. `independent` trains on the B_l labelled samples alone.
    pub labelled_batch: usize,
    /// τ_u: a pixel's pseudo-label (arg-max of the pair's mean probabilities) is trusted when
    /// that mean probability is at least τ_u.
    pub threshold: f64,
    /// β_u: weight of the unlabelled terms after their ramp-up (SSL4MIS's consistency 0.1).
    pub weight: f64,
    /// t_u as a share of the iterations: β_u(t) = β_u·exp(−5(1 − t/t_u)²) before it.
    pub rampup_fraction: f64,
}

impl Default for SemiConfig {
    fn default() -> Self {
        SemiConfig {
            labelled_batch: 0,
            threshold: 0.8,
            weight: 0.1,
            rampup_fraction: 0.4,
        }
    }
}

impl SemiConfig {
    /// B_l of a batch of `batch_size`.
    pub fn labelled_batch(&self, batch_size: usize) -> usize {
        if self.labelled_batch == 0 {
            batch_size.div_ceil(2)
        } else {
            self.labelled_batch
        }
    }
}

/// Data-parallel training (crate::distributed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParallelConfig {
    /// Devices of this machine that train replicas on equal shards of each batch, with their
    /// gradients averaged by Burn's collective all-reduce (`ctrcl train --devices N`).
    /// `data.batch_size` must be a multiple of it.
    pub devices: usize,
    /// Machines (nodes) taking part (`ctrcl train --nodes N`). Each runs `devices` replicas; the
    /// global batch `data.batch_size` is split over `nodes × devices` peers.
    pub nodes: usize,
    /// This machine's rank, 0 … nodes − 1 (`--node-rank R`). Rank 0 hosts the coordinator
    /// unless `host_coordinator = false`.
    pub node_rank: usize,
    /// `HOST:PORT` of Burn's global collective orchestrator (`--coordinator`); required when
    /// `nodes > 1`. With `host_coordinator`, HOST is rank 0's address (as torchrun's
    /// MASTER_ADDR).
    pub coordinator: String,
    /// `HOST:PORT` at which the other nodes reach this node's tensor service (`--node-address`).
    /// Empty: this machine's address on the route to the coordinator, port = coordinator port
    /// + 1 + node_rank.
    pub node_address: String,
    /// Whether rank 0's `ctrcl train` starts the orchestrator itself (a `ctrcl coordinator`
    /// child process on the coordinator's port). `false`: run `ctrcl coordinator` yourself.
    pub host_coordinator: bool,
}

impl Default for ParallelConfig {
    fn default() -> Self {
        ParallelConfig {
            devices: 1,
            nodes: 1,
            node_rank: 0,
            coordinator: String::new(),
            node_address: String::new(),
            host_coordinator: true,
        }
    }
}

/// Splits `HOST:PORT` (HOST may be a name, an IPv4 address or a bracketed IPv6 address).
pub fn host_port(text: &str) -> Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .filter(|(h, _)| !h.is_empty())
        .ok_or_else(|| anyhow::anyhow!("\"{text}\" is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| anyhow::anyhow!("\"{text}\": the port must be a number in 1…65535"))?;
    Ok((host.to_string(), port))
}

/// How `test`, `predict` and validation map predictions back to the native grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// `nearest` (published convention: arg-max, then nearest-neighbour resize) or `bilinear`
    /// (probabilities resized bilinearly, arg-max at native size). `test`/`predict --upsample`
    /// override it.
    pub upsample: Upsample,
}

/// Everything a training run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    pub method: Method,
    pub seed: u64,
    /// Dtype of the students' matrix products in training (`f32` or `bf16`; `f16` is refused:
    /// it would need loss scaling); parameters, normalisation, softmax and losses stay f32
    /// (`ctrcl_models::precision`).
    pub precision: ctrcl_models::precision::Precision,
    /// Train without first estimating whether a step fits in memory (`crate::memory`).
    pub skip_memory_check: bool,
    pub data: DataConfig,
    /// Extra augmentations after `data.augment` (all off by default).
    pub augmentation: ctrcl_data::augment::Augmentations,
    pub students: StudentsConfig,
    pub models: ModelSizes,
    pub seg: SegLossConfig,
    pub rlcl: RlclConfig,
    pub cfcl: CfclConfig,
    pub baseline: BaselineConfig,
    pub semi: SemiConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub parallel: ParallelConfig,
    pub eval: EvalConfig,
    pub teacher: TeacherConfig,
}

impl ParallelConfig {
    /// Peers over all nodes: each takes `data.batch_size / peers()` samples of every batch.
    pub fn peers(&self) -> usize {
        self.devices * self.nodes
    }
}

impl TrainConfig {
    /// Weight of the logit-wise transfer term before ramp-up: the baselines' `baseline.weight`,
    /// CTRCL's β_r (`rlcl.weight`).
    pub fn transfer_weight(&self) -> f64 {
        if self.method.is_baseline() {
            self.baseline.weight
        } else {
            self.rlcl.weight
        }
    }

    /// Whether this is a semi-supervised run (`data.labelled` set).
    pub fn is_semi(&self) -> bool {
        self.data.labelled.is_some()
    }

    /// The resolved configuration as TOML (written into every run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

#[cfg(test)]
mod tests;

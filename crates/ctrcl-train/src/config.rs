//! The experiment configuration: a TOML file with every key documented in `configs/*.toml`,
//! overridable with `--set key=value`. Unknown keys are errors that name the key.

use anyhow::{bail, Context, Result};
use ctrcl_data::geometry::Upsample;
use ctrcl_data::loader::Augment;
use ctrcl_data::normalize::{Intensity, Normalize};
use ctrcl_models::{Architecture, ModelSizes};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Share of each training batch forced to hold a slice containing a foreground class chosen
    /// uniformly among those present in the training slices (nnU-Net's
    /// `oversample_foreground_percent`, 0.33 there); 0 = off (`ctrcl_data::loader`).
    pub foreground_oversample: f64,
    pub augment: Augment,
    pub batch_size: usize,
    /// Threads preparing batches.
    pub workers: usize,
}

/// Deep-merges `over` into `base`: tables key by key, anything else replaced.
fn merge_toml(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_toml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
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
            foreground_oversample: 0.0,
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

impl ParallelConfig {
    /// Peers over all nodes: each takes `data.batch_size / peers()` samples of every batch.
    pub fn peers(&self) -> usize {
        self.devices * self.nodes
    }

    /// Checks the topology against the global batch size.
    fn validate(&self, batch_size: usize) -> Result<()> {
        let (devices, nodes) = (self.devices, self.nodes);
        if devices == 0 || !batch_size.is_multiple_of(devices) {
            bail!(
                "parallel.devices = {devices}: must be at least 1 and divide data.batch_size ({batch_size})"
            );
        }
        if nodes == 0 || !batch_size.is_multiple_of(self.peers()) {
            bail!(
                "parallel.nodes = {nodes}: with {devices} device(s) per node, nodes × devices ({}) must divide data.batch_size ({batch_size})",
                nodes * devices
            );
        }
        if self.node_rank >= nodes {
            bail!(
                "parallel.node_rank = {}: must be below parallel.nodes ({nodes})",
                self.node_rank
            );
        }
        if nodes > 1 {
            if self.coordinator.is_empty() {
                bail!("parallel.nodes = {nodes} needs parallel.coordinator = \"HOST:PORT\" (--coordinator)");
            }
            host_port(&self.coordinator).with_context(|| "parallel.coordinator")?;
            if !self.node_address.is_empty() {
                host_port(&self.node_address).with_context(|| "parallel.node_address")?;
            }
        }
        Ok(())
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
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    pub parallel: ParallelConfig,
    pub eval: EvalConfig,
    pub teacher: TeacherConfig,
}

/// The value of serde's "unknown variant `X`, expected …" message.
fn bad_variant(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown variant `")?;
    rest.split_once('`').map(|(value, _)| value)
}

/// The dotted key of the first string equal to `needle` in `value`.
fn key_holding(value: &toml::Value, needle: &str, prefix: &str) -> Option<String> {
    match value {
        toml::Value::String(s) if s == needle => Some(prefix.to_string()),
        toml::Value::Table(t) => t.iter().find_map(|(k, child)| {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            key_holding(child, needle, &path)
        }),
        _ => None,
    }
}

/// Where a config error comes from: the file, or a `--set` override (then the file is not
/// blamed).
enum ConfigError {
    File(anyhow::Error),
    /// The `--set` item that set the bad value, and the error.
    Override(String, anyhow::Error),
}

impl ConfigError {
    fn into_inner(self) -> anyhow::Error {
        match self {
            ConfigError::File(e) | ConfigError::Override(_, e) => e,
        }
    }
}

/// `key = v` must be finite and above 0.
fn positive(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        bail!("{key} = {v}: must be a finite number above 0");
    }
    Ok(())
}

/// `key = v` must be finite and at least 0.
fn non_negative(key: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{key} = {v}: must be a finite number, 0 or more");
    }
    Ok(())
}

/// `key: message`, or the message alone when the key is unknown.
fn keyed(key: &str, message: &str) -> String {
    if key.is_empty() || key == "." {
        message.to_string()
    } else {
        format!("{key}: {message}")
    }
}

/// An error about `key`: blamed on the last `--set` item that set it (or a table above it), else
/// on the file.
fn blame(key: &str, overrides: &[String], error: anyhow::Error) -> ConfigError {
    let set_by = overrides.iter().rev().find(|item| {
        let k = item
            .split_once('=')
            .map_or(item.as_str(), |(k, _)| k)
            .trim();
        !key.is_empty() && (key == k || key.starts_with(&format!("{k}.")))
    });
    match set_by {
        Some(item) => ConfigError::Override(item.clone(), error),
        None => ConfigError::File(error),
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

    /// Reads a TOML file, applies `key=value` overrides, and validates. An error in a value that
    /// an override set names the `--set` item, not the file.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        Self::from_toml_in(&text, &path.display().to_string(), overrides)
    }

    /// [`TrainConfig::load`] for config text named `source` in errors (a built-in config).
    pub fn from_toml_in(text: &str, source: &str, overrides: &[String]) -> Result<Self> {
        Self::parse(text, overrides).map_err(|e| match e {
            ConfigError::Override(item, e) => e.context(format!("--set {item}")),
            ConfigError::File(e) => e.context(format!("in config {source}")),
        })
    }

    /// Parses TOML text plus overrides; unknown keys are errors naming the key.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        Self::parse(text, overrides).map_err(ConfigError::into_inner)
    }

    fn parse(text: &str, overrides: &[String]) -> std::result::Result<Self, ConfigError> {
        let mut value: toml::Value = toml::from_str(text)
            .context("not valid TOML")
            .map_err(ConfigError::File)?;
        for item in overrides {
            apply_override(&mut value, item).map_err(|e| ConfigError::Override(item.clone(), e))?;
        }
        // Keys left out take their defaults, also inside a partly given table
        // (`--set augmentation.gamma.p=0.3` keeps gamma's default range).
        let mut merged = toml::Value::try_from(TrainConfig::default()).expect("defaults serialise");
        merge_toml(&mut merged, value);
        let value = merged;
        let config: TrainConfig = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
            let key = e.path().to_string();
            let message = e.inner().message().trim().to_string();
            // serde names the bad value, not its key: the path tracker names the key; for an
            // unknown variant of an enum the key holding the value is looked up as before.
            let key = match (key.as_str(), bad_variant(&message)) {
                ("." | "", Some(v)) => key_holding(&value, v, "").unwrap_or_default(),
                _ => key,
            };
            blame(
                &key,
                overrides,
                anyhow::anyhow!("{}", keyed(&key, &message)),
            )
        })?;
        config.validate().map_err(|e| {
            // A range check names its key first ("optim.cnn.lr = -0.1: ...").
            let text = format!("{e:#}");
            let key = text
                .split([' ', ':'])
                .next()
                .unwrap_or_default()
                .to_string();
            blame(&key, overrides, e)
        })?;
        Ok(config)
    }

    /// Checks values that serde cannot (ranges, model sizes for the image size).
    pub fn validate(&self) -> Result<()> {
        if self.precision == ctrcl_models::precision::Precision::F16 {
            bail!(
                "precision = \"f16\": training in f16 needs loss scaling (gradients underflow \
                 f16's range), which ctrcl does not implement; use \"bf16\" (f32's range, the \
                 same tensor-core speed) or \"f32\""
            );
        }
        self.augmentation
            .validate()
            .map_err(|m| anyhow::anyhow!(m))?;
        self.parallel.validate(self.data.batch_size)?;
        let d = &self.data;
        if !d.window.is_empty() && ct_window(&d.window).is_none() {
            bail!(
                "data.window \"{}\" is not a known CT window (abdomen, liver, lung, mediastinum, bone, brain)",
                d.window
            );
        }
        match d.clip.as_slice() {
            [] => {}
            [lo, hi] if lo < hi => {}
            other => bail!("data.clip must be empty or [low, high] with low < high, got {other:?}"),
        }
        if d.batch_size == 0 {
            bail!("data.batch_size must be at least 1");
        }
        if !(0.0..=1.0).contains(&d.foreground_oversample) {
            bail!(
                "data.foreground_oversample = {}: must be a share of the batch in [0, 1] \
                 (nnU-Net uses 0.33)",
                d.foreground_oversample
            );
        }
        if self.optim.accumulate == 0 {
            bail!("optim.accumulate must be at least 1");
        }
        if self.schedule.iterations == 0 {
            bail!("schedule.iterations must be at least 1");
        }
        if self.schedule.validate_every == 0 || self.schedule.log_every == 0 {
            bail!("schedule.validate_every and schedule.log_every must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.schedule.rampup_fraction) {
            bail!("schedule.rampup_fraction must be in [0, 1]");
        }
        // Numbers that would train without a word but wrongly: a negative or non-finite learning
        // rate ascends the loss, a negative weight turns a loss term into a reward.
        for (role, o) in [
            ("cnn", &self.optim.cnn),
            ("transformer", &self.optim.transformer),
        ] {
            positive(&format!("optim.{role}.lr"), o.lr)?;
            non_negative(&format!("optim.{role}.weight_decay"), o.weight_decay)?;
            positive(&format!("optim.{role}.adam_epsilon"), o.adam_epsilon)?;
            if !(0.0..1.0).contains(&o.momentum) {
                bail!("optim.{role}.momentum = {}: must be in [0, 1)", o.momentum);
            }
        }
        non_negative("optim.poly_power", self.optim.poly_power)?;
        for (key, v) in [
            ("seg.ce_weight", self.seg.ce_weight),
            ("seg.dice_weight", self.seg.dice_weight),
            ("rlcl.weight", self.rlcl.weight),
            ("rlcl.alignment_weight", self.rlcl.alignment_weight),
            ("rlcl.similarity_weight", self.rlcl.similarity_weight),
            ("rlcl.certainty_weight", self.rlcl.certainty_weight),
            ("cfcl.weight", self.cfcl.weight),
        ] {
            non_negative(key, v)?;
        }
        if self.seg.ce_weight + self.seg.dice_weight == 0.0 {
            bail!("seg.ce_weight and seg.dice_weight are both 0: the students would learn nothing from the labels");
        }
        if self.rlcl.temperature <= 0.0 || self.cfcl.temperature <= 0.0 {
            bail!("rlcl.temperature and cfcl.temperature must be positive");
        }
        non_negative("baseline.weight", self.baseline.weight)?;
        positive("baseline.temperature", self.baseline.temperature)?;
        // The baselines read [rlcl] until they had their own keys: a baseline config that still
        // tunes them there would now change nothing, silently.
        let old = RlclConfig::default();
        if self.method.is_baseline() {
            for (key, set, default, new) in [
                ("weight", self.rlcl.weight, old.weight, "baseline.weight"),
                (
                    "temperature",
                    self.rlcl.temperature,
                    old.temperature,
                    "baseline.temperature",
                ),
            ] {
                if set != default {
                    bail!(
                        "rlcl.{key} = {set}: [rlcl] is CTRCL's; method = \"{}\" takes its \
                         transfer {key} from {new} (set that instead)",
                        self.method.name()
                    );
                }
            }
        }
        if !(0.0..1.0).contains(&self.rlcl.margin) {
            bail!("rlcl.margin must be in [0, 1)");
        }
        for (name, arch) in [
            ("students.cnn", self.students.cnn),
            ("students.transformer", self.students.transformer),
        ] {
            self.models
                .validate(arch, d.image_size, 1)
                .map_err(|e| anyhow::anyhow!("{name} = \"{}\": {e}", arch.name()))?;
        }
        if self.method.is_offline() && self.teacher.run.as_os_str().is_empty() {
            bail!(
                "method = \"{}\" needs teacher.run = \"RUN_DIR\" (a finished run whose {} student teaches)",
                self.method.name(),
                match self.teacher.role {
                    TeacherRole::Cnn => "cnn",
                    TeacherRole::Transformer => "transformer",
                }
            );
        }
        if self.method.is_ctrcl() && self.cfcl.enabled {
            for arch in [self.students.cnn, self.students.transformer] {
                let taps = self.models.tap_channels(arch);
                for stride in &self.cfcl.taps {
                    if !taps.iter().any(|(s, _)| s == stride) {
                        bail!(
                            "cfcl.taps: {} has no feature tap at stride {stride} (it taps {:?})",
                            arch.name(),
                            taps.iter().map(|(s, _)| *s).collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// The resolved configuration as TOML (written into every run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

/// The fuzzers' entry point (`fuzz/fuzz_targets/config.rs`, `tests/config_fuzz.rs`): the text
/// up to the first NUL is a config file, each line after it a `--set` item. Whatever the bytes,
/// a configuration or an error — never a panic.
#[doc(hidden)]
pub fn fuzz_config(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let (file, sets) = text.split_once('\0').unwrap_or((&text, ""));
    let sets: Vec<String> = sets.lines().map(str::to_string).collect();
    if let Ok(cfg) = TrainConfig::from_toml(file, &sets) {
        // A configuration that validates also writes and reads back.
        let _ = TrainConfig::from_toml(&cfg.to_toml(), &[]);
    }
}

/// Sets a dotted `key=value` in a TOML tree. The value is parsed as TOML (numbers, booleans,
/// arrays), falling back to a string. Creating a new key is allowed here; deserialisation then
/// rejects it by name if it is unknown.
fn apply_override(root: &mut toml::Value, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item}: expected key=value"))?;
    let key = key.trim();
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .with_context(|| format!("--set {key}: '{}' is not a table", parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), parsed);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    unreachable!("split always yields at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_parse_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                TrainConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                n += 1;
            }
        }
        assert!(n >= 2, "expected the shipped configs in {}", dir.display());
    }

    #[test]
    fn foreground_oversample_is_a_share_of_the_batch() {
        let cfg = TrainConfig::from_toml("", &["data.foreground_oversample=0.33".into()]).unwrap();
        assert_eq!(cfg.data.foreground_oversample, 0.33);
        assert_eq!(TrainConfig::default().data.foreground_oversample, 0.0);
        for bad in ["1.5", "-0.1", "nan"] {
            let err = TrainConfig::from_toml("", &[format!("data.foreground_oversample={bad}")])
                .unwrap_err();
            assert!(
                format!("{err:#}").contains("data.foreground_oversample"),
                "{bad}: {err:#}"
            );
        }
    }

    #[test]
    fn baselines_have_their_own_transfer_keys() {
        let dml = |sets: &[&str]| {
            let mut all = vec!["method=dml".to_string()];
            all.extend(sets.iter().map(|s| s.to_string()));
            TrainConfig::from_toml("", &all)
        };
        let cfg = dml(&["baseline.weight=0.3", "baseline.temperature=2.0"]).unwrap();
        assert_eq!(cfg.transfer_weight(), 0.3);
        assert_eq!(cfg.baseline.temperature, 2.0);
        // Where the baselines read them before: refused, naming the new key.
        for (old, new) in [
            ("rlcl.weight=0.5", "baseline.weight"),
            ("rlcl.temperature=2.0", "baseline.temperature"),
        ] {
            let err = dml(&[old]).unwrap_err();
            assert!(format!("{err:#}").contains(new), "{old}: {err:#}");
        }
        // CTRCL keeps β_r in [rlcl].
        let cfg = TrainConfig::from_toml("", &["rlcl.weight=0.5".into()]).unwrap();
        assert_eq!(cfg.transfer_weight(), 0.5);
        assert!(dml(&["baseline.temperature=0.0"]).is_err());
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = TrainConfig::from_toml("[rlcl]\ntemprature = 2.0\n", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("temprature"), "{err:#}");
        let err = TrainConfig::from_toml("", &["optim.cnn.lrr=0.1".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("lrr"), "{err:#}");
        // A bad value of an enumerated key names the key too.
        let err = TrainConfig::from_toml("", &["precision=f8".into()]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("precision: unknown variant `f8`"),
            "{err:#}"
        );
        let err = TrainConfig::from_toml("precision = \"f16\"", &[]).unwrap_err();
        assert!(format!("{err:#}").contains("bf16"), "{err:#}");
        let err =
            TrainConfig::from_toml("[optim.transformer]\noptimizer = \"adam\"\n", &[]).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("optim.transformer.optimizer: "),
            "{err:#}"
        );
    }

    /// Found by the hostile-input probe (issue #21): a type error named neither its key nor its
    /// source, and blamed the config file for a `--set` value.
    #[test]
    fn type_errors_name_the_key_and_blame_the_override_that_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[schedule]\niterations = 10\n").unwrap();
        let err = TrainConfig::load(&file, &["schedule.iterations=abc".into()]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with("--set schedule.iterations=abc: schedule.iterations: invalid type"),
            "{msg}"
        );
        assert!(!msg.contains("c.toml"), "the file is not to blame: {msg}");
        // The same mistake in the file names the file and the key.
        std::fs::write(&file, "[schedule]\niterations = \"abc\"\n").unwrap();
        let msg = format!("{:#}", TrainConfig::load(&file, &[]).unwrap_err());
        assert!(
            msg.contains("c.toml") && msg.contains("schedule.iterations: invalid type"),
            "{msg}"
        );
        // A nested key inside an array-of-numbers key.
        let msg = format!(
            "{:#}",
            TrainConfig::from_toml("", &["models.unet.channels=[4,\"x\"]".into()]).unwrap_err()
        );
        assert!(msg.starts_with("models.unet.channels"), "{msg}");
        // A range error from a --set value blames the --set too (it replaced the file's value).
        let msg = format!(
            "{:#}",
            TrainConfig::load(&file, &["schedule.iterations=0".into()]).unwrap_err()
        );
        assert!(
            msg.starts_with("--set schedule.iterations=0: schedule.iterations must be at least 1"),
            "{msg}"
        );
    }

    /// Found by the probe: a negative learning rate trained (gradient ascent) without a word.
    #[test]
    fn learning_rates_and_loss_weights_must_be_sensible_numbers() {
        for (set, key) in [
            ("optim.cnn.lr=-0.01", "optim.cnn.lr = -0.01"),
            ("optim.transformer.lr=0.0", "optim.transformer.lr = 0"),
            ("optim.cnn.lr=nan", "optim.cnn.lr = NaN"),
            ("optim.cnn.weight_decay=-1e-4", "optim.cnn.weight_decay"),
            ("optim.cnn.momentum=1.5", "optim.cnn.momentum = 1.5"),
            ("rlcl.weight=-1.0", "rlcl.weight = -1"),
            ("cfcl.weight=inf", "cfcl.weight = inf"),
            (
                "optim.transformer.adam_epsilon=0.0",
                "optim.transformer.adam_epsilon",
            ),
        ] {
            let msg = format!(
                "{:#}",
                TrainConfig::from_toml("", &[set.into()]).unwrap_err()
            );
            assert!(msg.starts_with(key), "{set}: {msg}");
        }
        let msg = format!(
            "{:#}",
            TrainConfig::from_toml(
                "",
                &["seg.ce_weight=0.0".into(), "seg.dice_weight=0.0".into()]
            )
            .unwrap_err()
        );
        assert!(msg.contains("learn nothing"), "{msg}");
        // Zero weights of the transfer terms stay allowed (ablations).
        TrainConfig::from_toml("", &["rlcl.weight=0.0".into(), "cfcl.weight=0.0".into()]).unwrap();
    }

    #[test]
    fn overrides_set_typed_values() {
        let c = TrainConfig::from_toml(
            "",
            &[
                "method=dml".into(),
                "schedule.iterations=7".into(),
                "rlcl.rectify=hard".into(),
                "cfcl.taps=[8]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.method, Method::Dml);
        assert_eq!(c.schedule.iterations, 7);
        assert_eq!(c.rlcl.rectify, Rectify::Hard);
        assert_eq!(c.cfcl.taps, vec![8]);
    }

    #[test]
    fn host_port_accepts_names_and_addresses_and_names_the_problem() {
        assert_eq!(host_port("node-a:29500").unwrap(), ("node-a".into(), 29500));
        assert_eq!(host_port("10.0.0.2:1").unwrap(), ("10.0.0.2".into(), 1));
        assert_eq!(host_port("[::1]:29500").unwrap(), ("[::1]".into(), 29500));
        for bad in [
            "node-a",
            ":29500",
            "node-a:",
            "node-a:0",
            "node-a:70000",
            "node-a:x",
        ] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_multi_node_topology_is_checked_against_the_batch() {
        let with = |sets: &[&str]| {
            let mut all = vec!["data.batch_size=8".to_string()];
            all.extend(sets.iter().map(|s| s.to_string()));
            TrainConfig::from_toml("", &all)
        };
        let ok = with(&[
            "parallel.nodes=2",
            "parallel.devices=2",
            "parallel.node_rank=1",
            "parallel.coordinator=\"10.0.0.1:29500\"",
        ])
        .unwrap();
        assert_eq!(ok.parallel.peers(), 4);
        let err = |sets: &[&str]| format!("{:#}", with(sets).unwrap_err());
        let e = err(&["parallel.nodes=3", "parallel.coordinator=\"h:1\""]);
        assert!(
            e.contains("parallel.nodes = 3") && e.contains("data.batch_size (8)"),
            "{e}"
        );
        let e = err(&["parallel.nodes=2"]);
        assert!(e.contains("parallel.coordinator"), "{e}");
        let e = err(&[
            "parallel.nodes=2",
            "parallel.node_rank=2",
            "parallel.coordinator=\"h:1\"",
        ]);
        assert!(e.contains("parallel.node_rank = 2"), "{e}");
        let e = err(&["parallel.nodes=2", "parallel.coordinator=\"h\""]);
        assert!(
            e.contains("parallel.coordinator") && e.contains("HOST:PORT"),
            "{e}"
        );
    }

    /// configs/icbm152_ctrcl.toml documents every key: each key of the default configuration
    /// (tables walked recursively) is present in it, and it parses.
    #[test]
    fn the_documented_config_lists_every_key() {
        fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, child) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    out.push(path.clone());
                    keys(child, &path, out);
                }
            }
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/icbm152_ctrcl.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        TrainConfig::from_toml(&text, &[]).unwrap();
        let documented: toml::Value = toml::from_str(&text).unwrap();
        let mut documented_keys = Vec::new();
        keys(&documented, "", &mut documented_keys);
        let mut default_keys = Vec::new();
        keys(
            &toml::Value::try_from(TrainConfig::default()).unwrap(),
            "",
            &mut default_keys,
        );
        let missing: Vec<&String> = default_keys
            .iter()
            .filter(|k| !documented_keys.contains(k))
            .collect();
        assert!(missing.is_empty(), "undocumented keys: {missing:?}");
    }

    #[test]
    fn ct_windows_and_augmentation_ranges_are_checked() {
        let cfg = TrainConfig::from_toml("[data]\nwindow = \"liver\"", &[]).unwrap();
        assert_eq!(cfg.data.intensity().clip, Some([-45.0, 105.0]));
        // An explicit clip wins over the window.
        let cfg =
            TrainConfig::from_toml("[data]\nwindow = \"liver\"\nclip = [0.0, 1.0]", &[]).unwrap();
        assert_eq!(cfg.data.intensity().clip, Some([0.0, 1.0]));
        let err = TrainConfig::from_toml("[data]\nwindow = \"kidney\"", &[]).unwrap_err();
        assert!(err.to_string().contains("kidney"), "{err}");
        let err = TrainConfig::from_toml("", &["augmentation.gamma.p=1.5".into()]).unwrap_err();
        assert!(err.to_string().contains("augmentation.gamma.p"), "{err}");
        let err = TrainConfig::from_toml("", &["augmentation.blurr.p=0.5".into()]).unwrap_err();
        assert!(format!("{err:#}").contains("blurr"), "{err:#}");
    }

    #[test]
    fn untileable_swin_size_is_a_config_error() {
        let err = TrainConfig::from_toml("[data]\nimage_size = 112\n", &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("students.transformer") && msg.contains("112"),
            "{msg}"
        );
    }
}

//! The checks serde cannot make: value ranges, the model sizes an image size allows, the
//! parallel topology against the batch size. Each error starts with the key it is about, which
//! is how `load` blames a `--set` item for it.

use super::{ct_window, host_port, ParallelConfig, RlclConfig, TeacherRole, TrainConfig};
use anyhow::{bail, Context, Result};

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

impl TrainConfig {
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
        self.validate_semi()
    }

    /// `data.labelled` and `[semi]` (METHOD.md §9).
    fn validate_semi(&self) -> Result<()> {
        let Some(labelled) = &self.data.labelled else {
            return Ok(());
        };
        labelled.validate().map_err(|m| anyhow::anyhow!(m))?;
        use super::Method;
        if !matches!(
            self.method,
            Method::Ctrcl | Method::CrossTeaching | Method::Independent
        ) {
            bail!(
                "data.labelled: semi-supervised training is defined for method = \"ctrcl\",                  \"cross-teaching\" and \"independent\" (METHOD.md §9), not \"{}\"",
                self.method.name()
            );
        }
        if self.parallel.peers() > 1 {
            bail!(
                "data.labelled: semi-supervised training runs on one device \
                 (parallel.devices = 1, parallel.nodes = 1); data-parallel semi-supervised \
                 batches are not implemented"
            );
        }
        let (b, s) = (self.data.batch_size, &self.semi);
        let b_l = s.labelled_batch(b);
        if self.method != Method::Independent && b_l >= b {
            bail!(
                "semi.labelled_batch = {b_l}: must leave unlabelled samples in each batch of \
                 data.batch_size = {b} (0 = half)"
            );
        }
        if b_l > b {
            bail!("semi.labelled_batch = {b_l}: more than data.batch_size = {b}");
        }
        if !(0.0..=1.0).contains(&s.threshold) {
            bail!("semi.threshold = {}: a probability in [0, 1]", s.threshold);
        }
        non_negative("semi.weight", s.weight)?;
        if !(0.0..=1.0).contains(&s.rampup_fraction) {
            bail!(
                "semi.rampup_fraction = {}: must be in [0, 1]",
                s.rampup_fraction
            );
        }
        Ok(())
    }
}

impl ParallelConfig {
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

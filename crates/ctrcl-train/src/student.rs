//! A student as trained: the deployable network plus its training-only CPM heads, and the
//! optimizer that updates them (one per student, so each may have its own learning rate).

use crate::config::{OptimizerKind, StudentOptimConfig};
use crate::losses::cfcl::ProjectionHead;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::Student;
use std::path::Path;

/// The two roles of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cnn,
    Transformer,
}

impl Role {
    pub const BOTH: [Role; 2] = [Role::Cnn, Role::Transformer];

    pub fn name(self) -> &'static str {
        match self {
            Role::Cnn => "cnn",
            Role::Transformer => "transformer",
        }
    }
}

/// Network + CPM heads (one per CFCL tap; empty when CFCL is off).
#[derive(Module, Debug)]
pub struct TrainStudent<B: Backend> {
    pub net: Student<B>,
    pub cpm: Vec<ProjectionHead<B>>,
}

/// The recorder of every checkpoint file: named MessagePack, full precision.
pub fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Creates every lazily initialised parameter of `module` now, in module order. Burn draws a
/// parameter's initial values on its first use, and a clone of a not-yet-created parameter draws
/// its own; creating them at a fixed point makes the initial weights independent of the forward
/// order and lets data-parallel replicas copy them.
pub fn materialize_params<B: Backend, M: Module<B>>(module: &M) {
    struct Materialize;
    impl<B: Backend> ModuleVisitor<B> for Materialize {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    module.visit(&mut Materialize);
}

/// SGD (momentum, no dampening, as PyTorch) or AdamW for one student.
pub enum StudentOptimizer<B: AutodiffBackend> {
    Sgd(OptimizerAdaptor<Sgd<B::InnerBackend>, TrainStudent<B>, B>),
    AdamW(OptimizerAdaptor<AdamW, TrainStudent<B>, B>),
}

impl<B: AutodiffBackend> StudentOptimizer<B> {
    pub fn new(cfg: &StudentOptimConfig) -> Self {
        match cfg.optimizer {
            OptimizerKind::Sgd => StudentOptimizer::Sgd(
                SgdConfig::new()
                    .with_momentum(Some(MomentumConfig {
                        momentum: cfg.momentum,
                        // Burn defaults to 0.1; PyTorch (and SSL4MIS) use 0.
                        dampening: 0.0,
                        nesterov: false,
                    }))
                    .with_weight_decay(Some(WeightDecayConfig::new(cfg.weight_decay as f32)))
                    .init(),
            ),
            OptimizerKind::Adamw => StudentOptimizer::AdamW(
                AdamWConfig::new()
                    .with_epsilon(cfg.adam_epsilon as f32)
                    .with_weight_decay(cfg.weight_decay as f32)
                    .init(),
            ),
        }
    }

    /// One update of `module` with its own gradients.
    pub fn step(
        &mut self,
        lr: f64,
        module: TrainStudent<B>,
        grads: GradientsParams,
    ) -> TrainStudent<B> {
        match self {
            StudentOptimizer::Sgd(o) => o.step(lr, module, grads),
            StudentOptimizer::AdamW(o) => o.step(lr, module, grads),
        }
    }

    /// A copy with the same state (for a data-parallel replica); `cfg` is the config this
    /// optimizer was built from.
    pub fn replicate(&self, cfg: &StudentOptimConfig) -> Self {
        match (self, Self::new(cfg)) {
            (StudentOptimizer::Sgd(o), StudentOptimizer::Sgd(fresh)) => {
                StudentOptimizer::Sgd(fresh.load_record(o.to_record()))
            }
            (StudentOptimizer::AdamW(o), StudentOptimizer::AdamW(fresh)) => {
                StudentOptimizer::AdamW(fresh.load_record(o.to_record()))
            }
            // `cfg` names the other kind: not the config this optimizer came from.
            (_, fresh) => fresh,
        }
    }

    /// Saves the optimizer state (momentum buffers or Adam moments) to `path` (+ `.mpk`).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use burn::record::Recorder;
        let rec = recorder();
        match self {
            StudentOptimizer::Sgd(o) => rec.record(o.to_record(), path.to_path_buf())?,
            StudentOptimizer::AdamW(o) => rec.record(o.to_record(), path.to_path_buf())?,
        }
        Ok(())
    }
}

impl<B: AutodiffBackend> StudentOptimizer<B> {
    /// Restores the state saved by [`Self::save`] (same optimizer kind).
    pub fn load(self, path: &Path, device: &B::Device) -> anyhow::Result<Self> {
        use burn::record::Recorder;
        let rec = recorder();
        let err = |e| anyhow::anyhow!("cannot load optimizer state {}.mpk: {e}", path.display());
        Ok(match self {
            StudentOptimizer::Sgd(o) => StudentOptimizer::Sgd(
                o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?),
            ),
            StudentOptimizer::AdamW(o) => StudentOptimizer::AdamW(
                o.load_record(rec.load(path.to_path_buf(), device).map_err(err)?),
            ),
        })
    }
}

/// Loads a deployable network saved as `dir/ROLE.mpk` into `template` (built with the run's sizes).
pub fn load_net<B: Backend>(
    template: Student<B>,
    dir: &Path,
    role: Role,
    device: &B::Device,
) -> anyhow::Result<Student<B>> {
    let path = dir.join(role.name());
    template
        .load_file(path.clone(), &recorder(), device)
        .map_err(|e| anyhow::anyhow!("cannot load {}.mpk: {e}", path.display()))
}

/// The network in eval mode on the inner (non-autodiff) backend.
pub fn eval_net<B: AutodiffBackend>(s: &TrainStudent<B>) -> Student<B::InnerBackend> {
    s.net.valid()
}

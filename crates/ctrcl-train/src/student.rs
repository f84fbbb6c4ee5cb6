//! A student as trained: the deployable network plus its training-only CPM heads, and the
//! optimizer that updates them (one per student, so each may have its own learning rate).

use crate::config::{OptimizerKind, StudentOptimConfig, TrainConfig};
use crate::losses::cfcl::ProjectionHead;
use crate::role::Role;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer, Sgd, SgdConfig};
use burn::prelude::*;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, NamedMpkFileRecorder};
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::{Architecture, Student};
use std::path::Path;

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
        match self {
            StudentOptimizer::Sgd(o) => save_record::<B, _>(o.to_record(), path),
            StudentOptimizer::AdamW(o) => save_record::<B, _>(o.to_record(), path),
        }
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

/// Saves `record` as `path` + `.mpk` in the format of [`recorder`] (named MessagePack, full
/// precision), encoded in memory and written and synced by us, so that a full disk is reported
/// as the operating system's error naming the file rather than as an encoder error.
pub fn save_record<B: Backend, R: burn::record::Record<B>>(
    record: R,
    path: &Path,
) -> anyhow::Result<()> {
    use burn::record::Recorder;
    let bytes = NamedMpkBytesRecorder::<FullPrecisionSettings>::new()
        .record(record, ())
        .map_err(|e| anyhow::anyhow!("cannot encode {}.mpk: {e}", path.display()))?;
    crate::checkpoint::write_synced(&path.with_extension("mpk"), &bytes)
}

/// Saves a module as `path` + `.mpk` (see [`save_record`]).
pub fn save_module<B: Backend, M: Module<B>>(module: M, path: &Path) -> anyhow::Result<()> {
    save_record::<B, _>(module.into_record(), path)
}

/// `f()`, or `None` if it panicked; the panic message is not printed.
fn quiet_catch<T>(f: impl FnOnce() -> T) -> Option<T> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    std::panic::set_hook(previous);
    result
}

/// Every float parameter's dotted path and shape, in module order.
pub fn param_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    #[derive(Default)]
    struct Shapes {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Shapes {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out
                .push((self.path.join("."), param.lazy_shape().dims::<D>().to_vec()));
        }
    }
    let mut shapes = Shapes::default();
    module.visit(&mut shapes);
    shapes.out
}

/// Loads a deployable network saved as `dir/ROLE.mpk` into `template` (built with the run's
/// sizes). A checkpoint of another architecture, or of the same one with other layer sizes, is
/// an error naming the file and the difference, never a panic or a silently wrong network.
pub fn load_net<B: Backend>(
    template: Student<B>,
    dir: &Path,
    role: Role,
    device: &B::Device,
) -> anyhow::Result<Student<B>> {
    use burn::record::Recorder;
    let path = dir.join(role.name());
    let file = path.with_extension("mpk");
    let record: <Student<B> as Module<B>>::Record = recorder()
        .load(path.clone(), device)
        .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", file.display()))?;
    let (want, found) = (
        template.architecture(),
        Student::<B>::record_architecture(&record),
    );
    if want != found {
        anyhow::bail!(
            "{} holds a {} network, but this run's {} student is a {} (config.toml): the checkpoint belongs to another run",
            file.display(),
            found.name(),
            role.name(),
            want.name()
        );
    }
    let expected = param_shapes(&template);
    // Burn asserts (panics) when a list of layers has another length (other depths); that is a
    // checkpoint of other sizes too. The panic is caught, without its message, and named.
    let net = quiet_catch(|| template.load_record(record)).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: its layer lists differ from this run's {} student ({}): the checkpoint was trained with other layer sizes (models.* in config.toml)",
            file.display(),
            role.name(),
            want.name()
        )
    })?;
    let loaded = param_shapes(&net);
    if let Some(((name, want), (_, got))) = expected
        .iter()
        .zip(&loaded)
        .find(|((_, want), (_, got))| want != got)
    {
        anyhow::bail!(
            "{}: parameter {name} has shape {got:?}, but this run's {} ({}) needs {want:?}: the checkpoint was trained with other layer sizes (models.* in config.toml)",
            file.display(),
            role.name(),
            net.architecture().name()
        );
    }
    if expected.len() != loaded.len() {
        anyhow::bail!(
            "{}: {} parameters, but this run's {} student has {}: the checkpoint was trained with other layer sizes",
            file.display(),
            loaded.len(),
            role.name(),
            expected.len()
        );
    }
    Ok(net)
}

/// The network in eval mode on the inner (non-autodiff) backend.
pub fn eval_net<B: AutodiffBackend>(s: &TrainStudent<B>) -> Student<B::InnerBackend> {
    s.net.valid()
}

/// A new student of `role` as `cfg` sizes it, with CPM heads at the CFCL taps when the method
/// is CTRCL with CFCL.
pub fn build_student<B: AutodiffBackend>(
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

/// A new student of `role` initialised from the ImageNet weights its `models.*.pretrained`
/// names (ResUNet, SegFormer, Swin-UNet encoders), with the import's report and the file; `None`
/// when none is named.
pub fn import_pretrained<'a, B: AutodiffBackend>(
    cfg: &'a TrainConfig,
    role: Role,
    k: usize,
    device: &B::Device,
) -> anyhow::Result<
    Option<(
        Student<B>,
        ctrcl_models::ImportReport,
        &'a std::path::PathBuf,
    )>,
> {
    let m = &cfg.models;
    let size = cfg.data.image_size;
    Ok(match cfg.students.of(role) {
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
    })
}

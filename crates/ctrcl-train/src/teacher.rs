//! The frozen teacher of the offline methods (`kd`, `ctrcl-offline`): which slot it fills, how
//! this run's configuration takes the teacher run's architecture for that slot, loading it, and
//! forwarding it as a constant of the autodiff graph.

use crate::config::{TeacherRole, TrainConfig};
use crate::role::Role;
use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_models::{Architecture, SegOutput, Student};

/// The slot (0 = cnn, 1 = transformer) of the frozen teacher of an offline method.
pub(crate) fn teacher_slot(cfg: &TrainConfig) -> usize {
    match cfg.teacher.role {
        TeacherRole::Cnn => 0,
        TeacherRole::Transformer => 1,
    }
}

/// A frozen network's outputs as constants of the autodiff graph: evaluation mode (BatchNorm
/// running statistics, no dropout), no gradients, running statistics untouched.
pub(crate) fn frozen_forward<B: AutodiffBackend>(
    net: &Student<B>,
    x: Tensor<B, 4>,
) -> SegOutput<B> {
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

/// For an offline method: the teacher run's architecture and sizes for the teacher's role, so
/// that this run's config (written to `config.toml`, used by `test` and `--resume`) describes
/// the network in that slot.
pub(crate) fn resolve_teacher(cfg: &TrainConfig, class_names: &[String]) -> Result<TrainConfig> {
    let mut cfg = cfg.clone();
    let run = cfg.teacher.run.clone();
    let (tcfg, tinfo) = crate::run_dir::open_run(&run)
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
pub(crate) fn load_teacher<B: AutodiffBackend>(
    cfg: &TrainConfig,
    k: usize,
    device: &B::Device,
) -> Result<Student<B>> {
    let role = Role::BOTH[teacher_slot(cfg)];
    let (net, _) = crate::tester::load_student::<B>(&cfg.teacher.run, cfg, role, k, device)
        .with_context(|| format!("loading the teacher from {}", cfg.teacher.run.display()))?;
    Ok(net)
}

//! `ctrcl predict`: label maps for new, unlabeled volumes with a trained student. Each volume is
//! normalised as in training, segmented slice by slice, and written with the input's header
//! (dims, pixdim, qform/sform) so that it overlays the input in any viewer.

use crate::evaluate::predict_native;
use crate::student::{load_net, Role};
use crate::tester::{checkpoint_dir, open_run};
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use ctrcl_data::dataset::{normalize_in_place, Geometry};
use ctrcl_data::nifti::{nifti_stem, read_nifti, write_nifti};
use std::path::{Path, PathBuf};

/// The NIfTI files to predict: `input` itself, or the `.nii`/`.nii.gz` files in it, sorted.
pub fn inputs(input: &Path) -> Result<Vec<PathBuf>> {
    if input.is_file() {
        return Ok(vec![input.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| nifti_stem(p).is_some())
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .nii or .nii.gz files", input.display());
    }
    Ok(files)
}

/// Output name: the input's case id, with nnU-Net's `_0000` channel suffix removed.
pub fn case_id(path: &Path) -> String {
    let stem = nifti_stem(path).unwrap_or_default();
    stem.strip_suffix("_0000").unwrap_or(&stem).to_string()
}

/// A loaded student ready to segment volumes.
pub struct Predictor<B: Backend> {
    net: ctrcl_models::Student<B>,
    size: usize,
    normalize: ctrcl_data::dataset::Normalize,
    pub checkpoint: PathBuf,
}

impl<B: Backend> Predictor<B> {
    pub fn load(run: &Path, role: Role, device: &B::Device) -> Result<Self> {
        let (cfg, info) = open_run(run)?;
        let arch = match role {
            Role::Cnn => cfg.students.cnn,
            Role::Transformer => cfg.students.transformer,
        };
        let dir = checkpoint_dir(run, role)?;
        let template =
            cfg.models
                .init::<B>(arch, cfg.data.image_size, 1, info.class_names.len(), device);
        Ok(Predictor {
            net: load_net(template, &dir, role, device)?,
            size: cfg.data.image_size,
            normalize: cfg.data.normalize,
            checkpoint: dir,
        })
    }

    /// Segments one NIfTI volume and writes `output/CASE.nii.gz`; returns the written path.
    pub fn predict_file(&self, input: &Path, output: &Path, device: &B::Device) -> Result<PathBuf> {
        let mut volume = read_nifti(input)?;
        let mut data = std::mem::take(&mut volume.data);
        normalize_in_place(&mut data, self.normalize);
        let background = data.iter().cloned().fold(f32::INFINITY, f32::min);
        let [w, h, _] = volume.dims;
        let geo = Geometry {
            h,
            w,
            size: self.size,
        };
        let labels = predict_native(&self.net, data.chunks(w * h), geo, background, device);
        let labels: Vec<f32> = labels.into_iter().map(f32::from).collect();
        let path = output.join(format!("{}.nii.gz", case_id(input)));
        write_nifti(
            &path,
            volume.dims,
            &labels,
            true,
            Some(&volume),
            volume.spacing,
            volume.affine,
        )?;
        Ok(path)
    }
}

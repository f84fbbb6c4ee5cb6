//! The dataset folders ctrcl reads as they are, and [`Dataset::open`], which tells them apart:
//! nnU-Net raw (a `ctrcl data prepare` output, or any nnU-Net / Decathlon folder;
//! [`nnunet_raw`]), and TransUNet's Synapse, SSL4MIS's ACDC and Kvasir-SEG
//! ([`kvasir_and_npz`]). Each returns the same [`Dataset`]; nothing above this folder knows
//! which layout a dataset came in.

pub mod kvasir_and_npz;
pub mod nnunet_raw;
#[cfg(test)]
mod tests;

use crate::dataset::{Dataset, OpenOptions};
use crate::error::{DataError, Result};
use std::path::Path;

impl Dataset {
    /// Opens a dataset folder: a `ctrcl data prepare` output or any nnU-Net raw dataset with a
    /// `ctrcl_split.json`, a Synapse folder (`train_npz/`, `test_vol_h5/`), an SSL4MIS ACDC
    /// folder (`data/slices/`, `train_slices.list`, …) or a Kvasir-SEG folder (`images/`,
    /// `masks/`); validates geometry and labels. `options.split` replaces an nnU-Net raw folder's
    /// split file (an error for the other layouts, whose list files are their split).
    pub fn open(root: &Path, options: impl Into<OpenOptions>) -> Result<Self> {
        let options = options.into();
        let intensity = options.intensity;
        let image_resize = options.image_resize;
        let kvasir = root.join("images").is_dir() && root.join("masks").is_dir();
        let synapse = root.join("train_npz").is_dir() || root.join("test_vol_h5").is_dir();
        let acdc = root.join("data").join("slices").is_dir();
        if let (Some(split), true) = (&options.split, kvasir || synapse || acdc) {
            return Err(DataError::invalid(
                split,
                format!(
                    "data.split is for nnU-Net raw folders; {} splits by its own list files \
                     (edit those instead)",
                    root.display()
                ),
            ));
        }
        let mut dataset = if kvasir {
            kvasir_and_npz::open_kvasir(root, options.clone())?
        } else if synapse {
            kvasir_and_npz::open_synapse(root, intensity)?
        } else if acdc {
            kvasir_and_npz::open_acdc(root, intensity)?
        } else {
            nnunet_raw::open_nnunet(
                root,
                intensity,
                &options.label_map,
                options.fold,
                options.split.as_deref(),
            )?
        };
        dataset.image_resize = image_resize;
        Ok(dataset)
    }
}

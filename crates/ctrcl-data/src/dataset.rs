//! An opened dataset, whatever folder it came from (`crate::layouts` reads them and
//! `Dataset::open` is there): its cases (normalised volumes with labels), how they split, and
//! the 2D axial slices of each split at native resolution or resampled to the training size.
//! Intensities are `crate::normalize`, the input geometry `crate::geometry`, classes and label
//! values `crate::classes`.

use crate::error::{DataError, Result};
use crate::geometry::{Geometry, ImageResize};
use crate::nifti::NiftiVolume;
use crate::normalize::{ChannelNorm, Intensity};
use crate::split::{CaseSplit, SlabSplit, Split};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How a dataset is read: intensities, the grey level from which a 2D mask pixel is foreground
/// (Kvasir-SEG's JPEG masks are not binary), and a label remap for nnU-Net raw datasets.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenOptions {
    pub intensity: Intensity,
    pub mask_threshold: u8,
    pub image_resize: ImageResize,
    /// Stored label value → class, applied to nnU-Net raw label files before they are checked
    /// against dataset.json's classes; the key `"*"` maps every value not listed. Empty: labels
    /// are classes as stored.
    pub label_map: BTreeMap<String, u8>,
    /// The nnU-Net fold to train on when an nnU-Net raw folder has no `ctrcl_split.json`
    /// ([`crate::nnunet`]).
    pub fold: usize,
    /// nnU-Net raw folders: read the split from this file (the `ctrcl_split.json` format)
    /// instead of the folder's own, so another split needs no copy of the data; `None`: the
    /// folder's `ctrcl_split.json`, else nnU-Net's folds.
    pub split: Option<std::path::PathBuf>,
}

impl<T: Into<Intensity>> From<T> for OpenOptions {
    fn from(intensity: T) -> Self {
        OpenOptions {
            intensity: intensity.into(),
            mask_threshold: 128,
            image_resize: ImageResize::Bilinear,
            label_map: BTreeMap::new(),
            fold: 0,
            split: None,
        }
    }
}

/// One labelled case: image and label volumes on the same grid.
pub struct Case {
    pub id: String,
    /// Normalised intensities (x fastest, then y, z), channel after channel: `image.data` holds
    /// [`Case::channels`] volumes of the `image.dims` grid.
    pub image: NiftiVolume,
    /// Label per voxel (0..num_classes), same order as `image.data`.
    pub label: Vec<u8>,
    /// Normalised value of the volume's minimum: the fill for padding.
    pub background: f32,
}

impl Case {
    /// Builds a case from an image volume (normalised here, each channel on its own) and its
    /// labels.
    pub fn new(id: String, mut image: NiftiVolume, label: Vec<u8>, intensity: Intensity) -> Self {
        let voxels = label.len().max(1);
        image
            .data
            .chunks_mut(voxels)
            .for_each(|channel| intensity.apply(channel));
        let background = image.data.iter().cloned().fold(f32::INFINITY, f32::min);
        Case {
            id,
            image,
            label,
            background,
        }
    }

    /// Slice geometry for a network input of `size × size`.
    pub fn geometry(&self, size: usize) -> Geometry {
        let [w, h, _] = self.image.dims;
        Geometry {
            h,
            w,
            size,
            image_resize: ImageResize::Bilinear,
        }
    }

    /// Image channels (1 grey, 3 RGB).
    pub fn channels(&self) -> usize {
        self.image.data.len() / self.label.len().max(1)
    }

    /// The intensities of slice `z`, all channels.
    ///
    /// # Shapes
    /// → `[C, h, w]`.
    pub fn slice_image(&self, z: usize) -> Vec<f32> {
        let [w, h, _] = self.image.dims;
        let plane = w * h;
        let volume = self.label.len();
        (0..self.channels())
            .flat_map(|c| {
                let at = c * volume + z * plane;
                self.image.data[at..at + plane].iter().copied()
            })
            .collect()
    }
}

/// A 2D axial slice at native resolution: `h = Y` rows of `w = X` pixels, `image` channel-major
/// (`[C, h, w]`).
#[derive(Debug, Clone)]
pub struct Slice2d {
    /// Index of the case in [`Dataset::cases`].
    pub case: usize,
    pub z: usize,
    pub h: usize,
    pub w: usize,
    pub image: Vec<f32>,
    pub label: Vec<u8>,
}

/// A slice resampled to the square training size.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Row-major `C × size × size` intensities.
    pub image: Vec<f32>,
    /// Row-major `size × size` labels.
    pub label: Vec<u8>,
}

/// How a dataset is split: axial slabs of one volume, or whole cases.
#[derive(Debug, Clone, PartialEq)]
pub enum DatasetSplit {
    Slabs(SlabSplit),
    Cases(CaseSplit),
}

impl DatasetSplit {
    /// Every case id the split names, in first-use order.
    pub(crate) fn case_ids(&self) -> Vec<String> {
        match self {
            DatasetSplit::Slabs(s) => vec![s.case.clone()],
            DatasetSplit::Cases(c) => {
                let mut ids: Vec<String> = Vec::new();
                for id in c.train.iter().chain(&c.val).chain(&c.test) {
                    if !ids.contains(id) {
                        ids.push(id.clone());
                    }
                }
                ids
            }
        }
    }
}

/// How much of a split one class covers: the slices holding it and its voxels. A class in few
/// slices is what foreground oversampling (`crate::loader`) shows more often; one in many slices
/// but few voxels is small, not slice-rare.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassPresence {
    pub slices: usize,
    pub voxels: u64,
}

/// An opened dataset: its cases (images normalised) and how they split.
pub struct Dataset {
    pub root: PathBuf,
    /// Class names by label value, background included (index = label).
    pub class_names: Vec<String>,
    pub split: DatasetSplit,
    pub cases: Vec<Case>,
    pub intensity: Intensity,
    /// What kind of folder this was (`nnunet`, `synapse`, `acdc`, `kvasir`).
    pub layout: &'static str,
    /// What was detected while reading (list files used, slice axes), for the log.
    pub notes: Vec<String>,
    /// How slices are resized to the network input.
    pub image_resize: ImageResize,
    /// All folds of an nnU-Net raw folder split by fold (`splits_final.json` or nnU-Net's
    /// generated ones), recorded beside a run; `None` for an explicit split.
    pub folds: Option<Vec<crate::nnunet::Fold>>,
    /// Each channel's rule under `normalize = "channel-names"` (empty otherwise), with the CT
    /// statistics of the training data.
    pub channel_norms: Vec<ChannelNorm>,
}

impl Dataset {
    /// Slice geometry of case `case` for a network input of `size × size`, with the dataset's
    /// image resize.
    pub fn geometry(&self, case: usize, size: usize) -> Geometry {
        Geometry {
            image_resize: self.image_resize,
            ..self.cases[case].geometry(size)
        }
    }

    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Image channels of the dataset's cases (all cases have the same number).
    pub fn channels(&self) -> usize {
        self.cases.first().map_or(1, Case::channels)
    }

    /// The cases of a split with the slice indices of each that belong to it.
    pub fn parts(&self, which: Split) -> Vec<(usize, Vec<usize>)> {
        match &self.split {
            DatasetSplit::Slabs(s) => vec![(0, s.slices(which))],
            DatasetSplit::Cases(c) => c
                .ids(which)
                .iter()
                .filter_map(|id| self.cases.iter().position(|k| &k.id == id))
                .map(|i| (i, (0..self.cases[i].image.dims[2]).collect()))
                .collect(),
        }
    }

    /// The ids of the cases in a split, in split order.
    pub fn split_ids(&self, which: Split) -> Vec<&str> {
        self.parts(which)
            .iter()
            .map(|(i, _)| self.cases[*i].id.as_str())
            .collect()
    }

    /// Native slices of a split, case by case in z order.
    pub fn slices(&self, which: Split) -> Vec<Slice2d> {
        let mut out = Vec::new();
        for (ci, zs) in self.parts(which) {
            let case = &self.cases[ci];
            let [w, h, _] = case.image.dims;
            let n = w * h;
            out.extend(zs.into_iter().map(|z| Slice2d {
                case: ci,
                z,
                h,
                w,
                image: case.slice_image(z),
                label: case.label[z * n..(z + 1) * n].to_vec(),
            }));
        }
        out
    }

    /// How much of split `which` each class covers (index = label, background included), over
    /// its native slices, and how many slices there are.
    pub fn class_presence(&self, which: Split) -> (usize, Vec<ClassPresence>) {
        let mut presence = vec![ClassPresence::default(); self.num_classes()];
        let mut slices = 0;
        for (ci, zs) in self.parts(which) {
            let case = &self.cases[ci];
            let n = case.image.dims[0] * case.image.dims[1];
            for z in zs {
                slices += 1;
                let mut here = vec![false; presence.len()];
                for &l in &case.label[z * n..(z + 1) * n] {
                    presence[l as usize].voxels += 1;
                    here[l as usize] = true;
                }
                for (p, _) in presence.iter_mut().zip(here).filter(|(_, h)| *h) {
                    p.slices += 1;
                }
            }
        }
        (slices, presence)
    }

    /// Slices of a split resampled to the training size.
    pub fn samples(&self, which: Split, size: usize) -> Vec<Sample> {
        self.slices(which)
            .iter()
            .map(|s| {
                let case = &self.cases[s.case];
                let geo = self.geometry(s.case, size);
                Sample {
                    image: geo.image_to_input(&s.image, case.background),
                    label: geo.label_to_input(&s.label),
                }
            })
            .collect()
    }
}

/// Parses `ctrcl_split.json`: slabs of one case, or lists of cases.
pub fn parse_split(text: &str, path: &Path) -> Result<DatasetSplit> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| DataError::invalid(path, format!("not valid JSON: {e}")))?;
    let split = if value.get("case").is_some() {
        DatasetSplit::Slabs(
            serde_json::from_value(value)
                .map_err(|e| DataError::invalid(path, format!("not a valid slab split: {e}")))?,
        )
    } else {
        let cases: CaseSplit = serde_json::from_value(value)
            .map_err(|e| DataError::invalid(path, format!("not a valid case split: {e}")))?;
        cases.validate(path)?;
        DatasetSplit::Cases(cases)
    };
    Ok(split)
}

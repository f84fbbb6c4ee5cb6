//! Train/validation/test splits of a single volume by axial slab, with gaps between slabs to limit
//! leakage between neighbouring slices (DATA.md §2). Written as `ctrcl_split.json` beside
//! `dataset.json` by `data prepare`.

use crate::error::{DataError, Result};
use serde::{Deserialize, Serialize};

/// Case id of the single ICBM152 volume (`data prepare --source icbm152`).
pub const ICBM152_CASE: &str = "icbm152";
use std::path::Path;

/// File name of the split inside a prepared dataset.
pub const SPLIT_FILE: &str = "ctrcl_split.json";

/// Which part of the data a sample belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Whole cases per split (`ctrcl_split.json` of a multi-case dataset).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseSplit {
    pub train: Vec<String>,
    #[serde(default)]
    pub val: Vec<String>,
    pub test: Vec<String>,
}

impl CaseSplit {
    pub fn ids(&self, split: Split) -> &[String] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// Training cases exist and no case is in two splits.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if self.train.is_empty() {
            return Err(DataError::invalid(path, "the split has no training cases"));
        }
        let mut owner = std::collections::BTreeMap::new();
        for split in [Split::Train, Split::Val, Split::Test] {
            for id in self.ids(split) {
                if let Some(other) = owner.insert(id.clone(), split) {
                    return Err(DataError::invalid(
                        path,
                        format!("case {id} is in both {} and {}", other.name(), split.name()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Inclusive z ranges `[first, last]` of one case, per split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlabSplit {
    pub case: String,
    /// Always "z": slabs are ranges of axial slices (NIfTI third axis).
    pub axis: String,
    pub train: Vec<[usize; 2]>,
    pub val: Vec<[usize; 2]>,
    pub test: Vec<[usize; 2]>,
}

impl SlabSplit {
    /// DATA.md's icbm152 protocol: train z 0–69 and 111–154, val 75–84, test 90–105.
    pub fn icbm152_default() -> Self {
        SlabSplit {
            case: ICBM152_CASE.to_string(),
            axis: "z".to_string(),
            train: vec![[0, 69], [111, 154]],
            val: vec![[75, 84]],
            test: vec![[90, 105]],
        }
    }

    pub fn ranges(&self, split: Split) -> &[[usize; 2]] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// The z indices of a split, in order.
    pub fn slices(&self, split: Split) -> Vec<usize> {
        self.ranges(split)
            .iter()
            .flat_map(|[a, b]| *a..=*b)
            .collect()
    }

    /// Checks the axis, that training slices exist, that ranges are ordered and inside
    /// `0..depth`, and that no slice is in two splits.
    pub fn validate(&self, depth: usize, path: &Path) -> Result<()> {
        if self.axis != "z" {
            return Err(DataError::invalid(
                path,
                format!(
                    "\"axis\": \"{}\" is not supported: slabs are ranges of axial slices, \"axis\": \"z\" (the volume's third axis)",
                    self.axis
                ),
            ));
        }
        if self.train.is_empty() {
            return Err(DataError::invalid(
                path,
                "the split has no training slices (\"train\": [])",
            ));
        }
        let mut owner = vec![None; depth];
        for split in [Split::Train, Split::Val, Split::Test] {
            for &[a, b] in self.ranges(split) {
                if a > b || b >= depth {
                    return Err(DataError::invalid(
                        path,
                        format!("{} range [{a}, {b}] is not inside 0..{depth}", split.name()),
                    ));
                }
                for (z, slot) in owner.iter_mut().enumerate().take(b + 1).skip(a) {
                    if let Some(other) = slot.replace(split) {
                        return Err(DataError::invalid(
                            path,
                            format!(
                                "slice {z} is in both {} and {}",
                                Split::name(other),
                                split.name()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_split_has_the_documented_sizes_and_no_overlap() {
        let s = SlabSplit::icbm152_default();
        assert_eq!(s.slices(Split::Train).len(), 70 + 44);
        assert_eq!(s.slices(Split::Val).len(), 10);
        assert_eq!(s.slices(Split::Test).len(), 16);
        s.validate(189, Path::new("x")).unwrap();
    }

    #[test]
    fn overlap_and_out_of_range_are_rejected() {
        let mut s = SlabSplit::icbm152_default();
        s.val = vec![[60, 80]];
        assert!(s
            .validate(189, Path::new("x"))
            .unwrap_err()
            .to_string()
            .contains("both"));
        let s = SlabSplit::icbm152_default();
        assert!(s.validate(100, Path::new("x")).is_err());
    }

    /// Found by the hostile-input probe (issue #21): `"train": []` panicked in training and any
    /// `"axis"` was accepted and sliced along z.
    #[test]
    fn an_empty_training_split_and_another_axis_are_rejected() {
        let mut s = SlabSplit::icbm152_default();
        s.train.clear();
        let e = s.validate(189, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("no training slices"), "{e}");
        let mut s = SlabSplit::icbm152_default();
        s.axis = "x".into();
        let e = s.validate(189, Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("\"axis\": \"x\" is not supported"), "{e}");
    }
}

//! Which training slices keep their labels in a semi-supervised run (METHOD.md §9,
//! `data.labelled`): a fraction of the training slices, or the slices of a list of cases.
//!
//! The choice depends on the dataset and the setting only — never on the seed or the method — so
//! every method and seed of a comparison sees the same labelled slices, and the differences between
//! them are paired. A fraction picks slices evenly spaced through the training slices in split
//! order (case by case, z order): the labelled part spans the anatomy as an annotator labelling
//! every k-th slice would, rather than one end of a volume. A case list is the patient-wise
//! protocol of SSL4MIS (whole volumes labelled).
//!
//! The unlabelled slices are handed to training with their labels erased, so no code path can
//! learn from them by mistake.

use crate::dataset::{Dataset, Sample};
use crate::split::Split;
use crate::{DataError, Result};
use serde::{Deserialize, Serialize};

/// `data.labelled`: a fraction in (0, 1] of the training slices, or case ids of the training
/// split whose slices are labelled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Labelled {
    Fraction(f64),
    Cases(Vec<String>),
}

impl Labelled {
    /// A range check that needs no dataset (the config's validation).
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self {
            Labelled::Fraction(f) if !(f.is_finite() && *f > 0.0 && *f <= 1.0) => Err(format!(
                "data.labelled = {f}: a fraction of the training slices must be in (0, 1]"
            )),
            Labelled::Cases(ids) if ids.is_empty() => {
                Err("data.labelled = []: name at least one training case".to_string())
            }
            Labelled::Cases(ids) => {
                let mut seen = std::collections::BTreeSet::new();
                match ids.iter().find(|id| !seen.insert(id.as_str())) {
                    Some(id) => Err(format!("data.labelled names case \"{id}\" twice")),
                    None => Ok(()),
                }
            }
            Labelled::Fraction(_) => Ok(()),
        }
    }
}

/// Indices of `n_labelled` slices evenly spaced among `n` (the midpoints of `n_labelled` equal
/// runs), ascending.
fn evenly_spaced(n: usize, n_labelled: usize) -> Vec<usize> {
    (0..n_labelled)
        .map(|i| ((2 * i + 1) * n) / (2 * n_labelled))
        .collect()
}

/// For each training slice of `dataset` (in `Dataset::slices(Split::Train)` order), whether it
/// keeps its label. A fraction labels `max(1, round(f·N))` slices; a case list labels every slice
/// of those cases, and each id must be a case of the training split.
pub fn labelled_slices(dataset: &Dataset, labelled: &Labelled) -> Result<Vec<bool>> {
    labelled
        .validate()
        .map_err(|m| DataError::invalid(&dataset.root, m))?;
    let parts = dataset.parts(Split::Train);
    let n: usize = parts.iter().map(|(_, zs)| zs.len()).sum();
    if n == 0 {
        return Err(DataError::invalid(
            &dataset.root,
            "the training split has no slices to label",
        ));
    }
    match labelled {
        Labelled::Fraction(f) => {
            let count = ((f * n as f64).round() as usize).clamp(1, n);
            let mut keep = vec![false; n];
            for i in evenly_spaced(n, count) {
                keep[i] = true;
            }
            Ok(keep)
        }
        Labelled::Cases(ids) => {
            let train = dataset.split_ids(Split::Train);
            if let Some(id) = ids.iter().find(|id| !train.contains(&id.as_str())) {
                return Err(DataError::invalid(
                    &dataset.root,
                    format!(
                        "data.labelled names case \"{id}\", which is not in the training split \
                         (training cases: {})",
                        train.join(", ")
                    ),
                ));
            }
            Ok(parts
                .iter()
                .flat_map(|(case, zs)| {
                    let on = ids.contains(&dataset.cases[*case].id);
                    std::iter::repeat_n(on, zs.len())
                })
                .collect())
        }
    }
}

/// `case:z` of each labelled training slice (what a run records of its labelled part).
pub fn labelled_names(dataset: &Dataset, keep: &[bool]) -> Vec<String> {
    dataset
        .parts(Split::Train)
        .iter()
        .flat_map(|(case, zs)| zs.iter().map(move |z| (*case, *z)))
        .zip(keep)
        .filter(|(_, &k)| k)
        .map(|((case, z), _)| format!("{}:{z}", dataset.cases[case].id))
        .collect()
}

/// Splits training samples into the labelled ones and the unlabelled ones (labels erased: every
/// pixel 0), each in their original order.
pub fn partition(samples: Vec<Sample>, keep: &[bool]) -> (Vec<Sample>, Vec<Sample>) {
    assert_eq!(samples.len(), keep.len(), "one flag per training slice");
    let (mut labelled, mut unlabelled) = (Vec::new(), Vec::new());
    for (mut s, &k) in samples.into_iter().zip(keep) {
        if k {
            labelled.push(s);
        } else {
            s.label.iter_mut().for_each(|v| *v = 0);
            unlabelled.push(s);
        }
    }
    (labelled, unlabelled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_picks_run_midpoints() {
        // 10 slices, 2 labelled: runs 0..5 and 5..10, midpoints 2 and 7.
        assert_eq!(evenly_spaced(10, 2), vec![2, 7]);
        assert_eq!(evenly_spaced(10, 10), (0..10).collect::<Vec<_>>());
        assert_eq!(evenly_spaced(7, 1), vec![3]);
        // 20 slices at 5%: one, in the middle.
        assert_eq!(evenly_spaced(20, 1), vec![10]);
    }

    #[test]
    fn validation_names_the_key_and_value() {
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let e = Labelled::Fraction(bad).validate().unwrap_err();
            assert!(e.starts_with("data.labelled"), "{e}");
        }
        assert!(Labelled::Fraction(1.0).validate().is_ok());
        assert!(Labelled::Cases(vec![]).validate().is_err());
        let e = Labelled::Cases(vec!["a".into(), "b".into(), "a".into()])
            .validate()
            .unwrap_err();
        assert!(e.contains("\"a\" twice"), "{e}");
    }

    #[test]
    fn partition_erases_the_unlabelled_labels() {
        let sample = |v: u8| Sample {
            image: vec![f32::from(v); 4],
            label: vec![v; 4],
        };
        let (l, u) = partition(vec![sample(1), sample(2), sample(3)], &[false, true, false]);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].label, vec![2; 4]);
        assert_eq!(u.len(), 2);
        assert!(u.iter().all(|s| s.label.iter().all(|&v| v == 0)));
        // Images are kept as they were.
        assert_eq!((u[0].image[0], u[1].image[0]), (1.0, 3.0));
    }
}

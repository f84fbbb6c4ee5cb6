//! Classes and label values: class names from `dataset.json` (nnU-Net v2 name → value, or v1 /
//! Decathlon value → name), a `data.label_map` applied to stored values and inverted for
//! writing predictions back, and label volumes checked into classes `0..K`.

use crate::error::{DataError, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The stored label value to write for each class `0..k` — the inverse of a label map (see
/// [`OpenOptions::label_map`]), so predictions come back in the dataset's own values. A class
/// that several stored values map to is written as the smallest of them (and said in the
/// returned notes); a class reached only through `"*"` keeps its class number; without a map,
/// class `c` is value `c`.
pub fn stored_label_values(map: &BTreeMap<String, u8>, k: usize) -> (Vec<i64>, Vec<String>) {
    let mut values: Vec<Vec<i64>> = vec![Vec::new(); k];
    for (key, &class) in map {
        if let (Ok(value), Some(slot)) = (key.trim().parse::<i64>(), values.get_mut(class as usize))
        {
            slot.push(value);
        }
    }
    let mut notes = Vec::new();
    let out = values
        .into_iter()
        .enumerate()
        .map(|(c, mut v)| {
            v.sort_unstable();
            if v.len() > 1 {
                notes.push(format!(
                    "class {c} stands for label values {v:?} (data.label_map); written as {}",
                    v[0]
                ));
            }
            v.first().copied().unwrap_or(c as i64)
        })
        .collect();
    (out, notes)
}

/// Applies a label map (see [`OpenOptions::label_map`]) in place; a value without an entry (and
/// no `"*"`) or a key that is not an integer is an error naming `path`.
pub fn remap_labels(data: &mut [f32], map: &BTreeMap<String, u8>, path: &Path) -> Result<()> {
    if map.is_empty() {
        return Ok(());
    }
    let mut by_value = BTreeMap::new();
    let mut rest = None;
    for (key, &class) in map {
        if key == "*" {
            rest = Some(class);
            continue;
        }
        let value: i64 = key.trim().parse().map_err(|_| {
            DataError::invalid(
                path,
                format!("data.label_map key \"{key}\" is not an integer label value or \"*\""),
            )
        })?;
        by_value.insert(value, class);
    }
    for (i, v) in data.iter_mut().enumerate() {
        let class = if v.fract() == 0.0 {
            by_value.get(&(*v as i64)).copied().or(rest)
        } else {
            None
        };
        *v = match class {
            Some(c) => f32::from(c),
            None => {
                return Err(DataError::invalid(
                    path,
                    format!(
                        "voxel {i} has label {v}, which data.label_map does not map (add it, or \"*\" for the rest)"
                    ),
                ))
            }
        };
    }
    Ok(())
}

/// nnU-Net's `dataset.json`, v2 (`labels`: name → value, `channel_names`) or v1 / Medical
/// Segmentation Decathlon (`labels`: value → name, `modality`); see [`class_names`].
#[derive(Deserialize)]
pub(crate) struct DatasetJson {
    pub(crate) labels: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    pub(crate) file_ending: Option<String>,
    /// Channel index ("0", "1", …) → modality name.
    #[serde(default)]
    pub(crate) channel_names: BTreeMap<String, String>,
    /// v1/MSD's name for `channel_names`.
    #[serde(default)]
    pub(crate) modality: BTreeMap<String, String>,
}

pub(crate) fn class_names_from(
    labels: &BTreeMap<String, serde_json::Value>,
    path: &Path,
) -> Result<Vec<String>> {
    class_names(
        &DatasetJson {
            labels: labels.clone(),
            file_ending: None,
            channel_names: BTreeMap::new(),
            modality: BTreeMap::new(),
        },
        path,
    )
}

pub(crate) fn class_names(meta: &DatasetJson, path: &Path) -> Result<Vec<String>> {
    // v1 / MSD: {"0": "background", "1": "left atrium"}, value → name.
    let v1 = !meta.labels.is_empty()
        && meta
            .labels
            .iter()
            .all(|(k, v)| k.parse::<u64>().is_ok() && v.is_string());
    let labels: BTreeMap<String, serde_json::Value> = if v1 {
        meta.labels
            .iter()
            .map(|(k, v)| {
                let value: u64 = k.parse().expect("checked above");
                (v.as_str().unwrap_or_default().to_string(), value.into())
            })
            .collect()
    } else {
        meta.labels.clone()
    };
    if v1 && labels.len() != meta.labels.len() {
        return Err(DataError::invalid(
            path,
            "two label values share one name in \"labels\"",
        ));
    }
    let mut by_value = BTreeMap::new();
    for (name, v) in &labels {
        let value = v.as_u64().filter(|v| *v < 256).ok_or_else(|| {
            DataError::invalid(
                path,
                format!("label '{name}' must map to an integer 0..255, got {v}"),
            )
        })?;
        if let Some(other) = by_value.insert(value as usize, name.clone()) {
            return Err(DataError::invalid(
                path,
                format!("labels '{other}' and '{name}' share value {value}"),
            ));
        }
    }
    let k = by_value.len();
    if k < 2 || by_value.keys().copied().ne(0..k) {
        return Err(DataError::invalid(
            path,
            "labels must be the consecutive values 0..K-1, K >= 2",
        ));
    }
    Ok(by_value.into_values().collect())
}

/// The classes after `data.label_map`, from `dataset.json`'s names (`names[v]` = the name of
/// label value `v`). Two readings of a `dataset.json` beside a label map exist, and the map
/// tells them apart:
/// - it describes the *stored* values (a dataset as it comes, e.g. eight chest structures whose
///   three spine labels the map merges): every value it declares is a key of the map, or the map
///   has `"*"`. The classes are then `0..=max(map values)`, class `c` named after the values
///   mapped to it (`"a + b"`; class 0 is "background"; a class nothing maps to is "class c"),
///   and a note says so. Before, the classes and names stayed the stored ones: a merge left empty
///   classes that entered every mean Dice, and a swap kept the old names.
/// - it describes the *classes* (stored values such as 5/10/20/30 that nnU-Net's consecutive
///   `labels` cannot state): some declared value is no key and there is no `"*"`. Names as read.
///
/// An error naming `path` when the map leaves fewer than two classes.
pub(crate) fn mapped_class_names(
    names: Vec<String>,
    map: &BTreeMap<String, u8>,
    path: &Path,
) -> Result<(Vec<String>, Option<String>)> {
    if map.is_empty() {
        return Ok((names, None));
    }
    let rest = map.get("*").copied();
    let class_of = |v: usize| map.get(&v.to_string()).copied().or(rest);
    if (0..names.len()).any(|v| class_of(v).is_none()) {
        return Ok((names, None));
    }
    let k = map.values().copied().max().unwrap_or(0) as usize + 1;
    if k < 2 {
        return Err(DataError::invalid(
            path,
            "data.label_map maps every label to class 0: nothing is left to segment",
        ));
    }
    let mapped: Vec<String> = (0..k)
        .map(|c| {
            let from: Vec<&str> = (0..names.len())
                .filter(|&v| class_of(v) == Some(c as u8))
                .map(|v| names[v].as_str())
                .collect();
            match (c, from.len()) {
                (0, _) => "background".to_string(),
                (_, 0) => format!("class {c}"),
                (_, 1..=3) => from.join(" + "),
                (_, n) => format!("{} + {} + … ({n} labels)", from[0], from[1]),
            }
        })
        .collect();
    let note = format!(
        "classes after data.label_map ({} stored labels → {k} classes): {}",
        names.len(),
        mapped
            .iter()
            .enumerate()
            .skip(1)
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok((mapped, Some(note)))
}

/// Label values as classes `0..k`; anything else is an error naming the file and voxel.
pub fn labels_as_classes(data: &[f32], k: usize, path: &Path) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len());
    for (i, &v) in data.iter().enumerate() {
        if v.fract() != 0.0 || v < 0.0 || v >= k as f32 {
            return Err(DataError::invalid(
                path,
                format!(
                    "voxel {i} has label {v}, outside the declared classes 0..{}",
                    k - 1
                ),
            ));
        }
        out.push(v as u8);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, u8)]) -> BTreeMap<String, u8> {
        pairs.iter().map(|&(k, v)| (k.to_string(), v)).collect()
    }

    /// ctrcl's prepared chest CT (dataset.json names the stored labels 0..7): merging the three
    /// spine labels gives 6 classes named after what they hold. Before, 8 classes stayed, two
    /// of them empty, and class 2 kept the name "cervical".
    #[test]
    fn a_merging_label_map_gives_the_merged_classes_and_names() {
        let names: Vec<String> = [
            "background",
            "ribs",
            "cervical",
            "thoracic",
            "lumbar",
            "right lung",
            "left lung",
            "tissue",
        ]
        .map(String::from)
        .into();
        let spine = map(&[
            ("0", 0),
            ("1", 1),
            ("2", 2),
            ("3", 2),
            ("4", 2),
            ("5", 3),
            ("6", 4),
            ("7", 5),
        ]);
        let (classes, note) = mapped_class_names(names.clone(), &spine, Path::new("d")).unwrap();
        assert_eq!(
            classes,
            [
                "background",
                "ribs",
                "cervical + thoracic + lumbar",
                "right lung",
                "left lung",
                "tissue"
            ]
        );
        assert!(note.unwrap().contains("8 stored labels → 6 classes"));
        // A swap swaps the names; "*" covers the rest (class 0 stays "background").
        let swap = map(&[("0", 0), ("1", 2), ("2", 1), ("*", 0)]);
        let (classes, _) = mapped_class_names(names.clone(), &swap, Path::new("d")).unwrap();
        assert_eq!(classes, ["background", "cervical", "ribs"]);
        let many = map(&[("1", 1), ("2", 1), ("3", 1), ("4", 1), ("*", 0)]);
        let (classes, _) = mapped_class_names(names.clone(), &many, Path::new("d")).unwrap();
        assert_eq!(classes[1], "ribs + cervical + … (4 labels)");
        let gap = map(&[("1", 2), ("*", 0)]);
        let (classes, _) = mapped_class_names(names.clone(), &gap, Path::new("d")).unwrap();
        assert_eq!(classes, ["background", "class 1", "ribs"]);
        let none = map(&[("*", 0)]);
        let e = mapped_class_names(names, &none, Path::new("d/dataset.json")).unwrap_err();
        assert!(e.to_string().contains("d/dataset.json"), "{e}");
    }

    /// dataset.json naming the classes themselves (stored values 5/10/20/30 cannot be nnU-Net
    /// labels): its names stand.
    #[test]
    fn a_label_map_onto_the_declared_classes_keeps_their_names() {
        let names: Vec<String> = ["background", "CSF", "GM", "WM"].map(String::from).into();
        let onto = map(&[("5", 0), ("10", 1), ("20", 2), ("30", 3)]);
        let (classes, note) = mapped_class_names(names.clone(), &onto, Path::new("d")).unwrap();
        assert_eq!(classes, names);
        assert!(note.is_none());
        assert_eq!(
            mapped_class_names(names.clone(), &BTreeMap::new(), Path::new("d"))
                .unwrap()
                .0,
            names
        );
    }

    #[test]
    fn stored_label_values_invert_the_label_map() {
        let map: BTreeMap<String, u8> = [("21", 1), ("22", 2), ("23", 2), ("*", 0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let (values, notes) = stored_label_values(&map, 4);
        // Class 0 only through "*", class 2 from 22 and 23, class 3 from nothing.
        assert_eq!(values, [0, 21, 22, 3]);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("[22, 23]"), "{notes:?}");
        // Mapped back through the map, every written value gives its class again.
        for (class, &v) in values.iter().enumerate().take(3) {
            let mut data = [v as f32];
            remap_labels(&mut data, &map, Path::new("x")).unwrap();
            assert_eq!(data[0], class as f32);
        }
        assert_eq!(stored_label_values(&BTreeMap::new(), 3).0, [0, 1, 2]);
    }

    #[test]
    fn remap_labels_maps_listed_values_and_the_rest() {
        let p = Path::new("labels.nii");
        let map: BTreeMap<String, u8> = [("21", 1), ("22", 2), ("*", 0)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let mut d = vec![0.0, 21.0, 22.0, 23.0, 105.0];
        remap_labels(&mut d, &map, p).unwrap();
        assert_eq!(d, [0.0, 1.0, 2.0, 0.0, 0.0]);
        let strict: BTreeMap<String, u8> = [("21".to_string(), 1)].into();
        let msg = remap_labels(&mut [21.0, 7.0], &strict, p)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("labels.nii") && msg.contains("voxel 1 has label 7"),
            "{msg}"
        );
        let bad: BTreeMap<String, u8> = [("L1".to_string(), 1)].into();
        let msg = remap_labels(&mut [1.0], &bad, p).unwrap_err().to_string();
        assert!(msg.contains("\"L1\" is not an integer"), "{msg}");
    }
}

//! nnU-Net raw datasets as their users keep them: without a `ctrcl_split.json`, training and
//! validation follow nnU-Net's five folds of `imagesTr` — `splits_final.json` when the user has
//! one (nnU-Net writes it to `nnUNet_preprocessed/DatasetXXX_Name/`), else exactly the folds
//! nnU-Net itself would generate — and the test split is `imagesTs` with `labelsTs`.
//!
//! nnU-Net v2 generates its folds with sklearn's `KFold(5, shuffle=True, random_state=12345)`
//! over the sorted case identifiers, which shuffles with numpy's legacy `RandomState(12345)`:
//! Mersenne Twister MT19937, seeded by `init_genrand`, and a Fisher–Yates shuffle drawing bounded
//! integers by masked rejection. Both are reproduced here bit for bit, so a ctrcl run's fold `k`
//! holds out exactly the cases nnU-Net's fold `k` holds out (checked against sklearn for 5…300
//! cases, `scripts/reference/nnunet_folds.py`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::split::CaseSplit;

/// nnU-Net's file of folds.
pub const SPLITS_FINAL: &str = "splits_final.json";

/// The number of folds nnU-Net generates.
pub const FOLDS: usize = 5;

/// One fold: the cases trained on and the cases validated on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fold {
    pub train: Vec<String>,
    pub val: Vec<String>,
}

/// MT19937 as numpy's legacy `RandomState(seed)` runs it.
struct Mt19937 {
    state: [u32; 624],
    at: usize,
}

impl Mt19937 {
    fn new(seed: u32) -> Self {
        let mut state = [0u32; 624];
        state[0] = seed;
        for i in 1..624 {
            let prev = state[i - 1];
            state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        Mt19937 { state, at: 624 }
    }

    fn next_u32(&mut self) -> u32 {
        if self.at >= 624 {
            for i in 0..624 {
                let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % 624] & 0x7FFF_FFFF);
                let mut next = self.state[(i + 397) % 624] ^ (y >> 1);
                if y & 1 != 0 {
                    next ^= 0x9908_B0DF;
                }
                self.state[i] = next;
            }
            self.at = 0;
        }
        let mut y = self.state[self.at];
        self.at += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9D2C_5680;
        y ^= (y << 15) & 0xEFC6_0000;
        y ^ (y >> 18)
    }

    /// numpy's `random_interval(max)`: uniform in `0..=max` by masked rejection (32-bit draws
    /// for the sizes a dataset has).
    fn interval(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        let mask = u32::MAX >> max.leading_zeros();
        loop {
            let v = self.next_u32() & mask;
            if v <= max {
                return v;
            }
        }
    }
}

/// `np.random.RandomState(seed).shuffle(np.arange(n))`.
fn legacy_permutation(n: usize, seed: u32) -> Vec<usize> {
    let mut rng = Mt19937::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.interval(i as u32) as usize;
        order.swap(i, j);
    }
    order
}

/// nnU-Net's default folds of the (sorted) case identifiers `ids`: sklearn's
/// `KFold(5, shuffle=True, random_state=12345)`, train and val each in `ids` order.
pub fn generate_folds(ids: &[String]) -> Vec<Fold> {
    let n = ids.len();
    let order = legacy_permutation(n, 12345);
    let mut start = 0;
    (0..FOLDS)
        .map(|k| {
            let size = n / FOLDS + usize::from(k < n % FOLDS);
            let mut held = vec![false; n];
            for &i in &order[start..start + size] {
                held[i] = true;
            }
            start += size;
            let pick = |want: bool| -> Vec<String> {
                (0..n)
                    .filter(|&i| held[i] == want)
                    .map(|i| ids[i].clone())
                    .collect()
            };
            Fold {
                train: pick(false),
                val: pick(true),
            }
        })
        .collect()
}

/// The case identifiers of an nnU-Net images folder, sorted: files `ID_0000{ending}` (nnU-Net
/// v1/v2), or `ID{ending}` when none has a channel suffix (a Medical Segmentation Decathlon
/// folder as downloaded). macOS resource files (`._*`) are skipped.
pub fn case_ids(images: &Path, ending: &str) -> Result<Vec<String>> {
    let names: Vec<String> = std::fs::read_dir(images)
        .map_err(|e| DataError::io(images, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("._") && n.ends_with(ending))
        .collect();
    let suffixed: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(ending)?.strip_suffix("_0000"))
        .map(str::to_string)
        .collect();
    let mut ids = if suffixed.is_empty() {
        names
            .iter()
            .filter_map(|n| n.strip_suffix(ending))
            .map(str::to_string)
            .collect()
    } else {
        suffixed
    };
    ids.sort();
    Ok(ids)
}

/// Where a user's `splits_final.json` for the dataset at `root` can be: in the raw folder itself,
/// or where nnU-Net keeps it, `$nnUNet_preprocessed/<dataset folder name>/`.
fn splits_final_paths(root: &Path) -> Vec<PathBuf> {
    let mut paths = vec![root.join(SPLITS_FINAL)];
    if let (Some(pre), Some(name)) = (std::env::var_os("nnUNet_preprocessed"), root.file_name()) {
        paths.push(PathBuf::from(pre).join(name).join(SPLITS_FINAL));
    }
    paths
}

/// Reads a `splits_final.json`: a list of `{"train": [ids], "val": [ids]}`.
pub fn read_splits_final(path: &Path) -> Result<Vec<Fold>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let folds: Vec<Fold> = serde_json::from_str(&text).map_err(|e| {
        DataError::invalid(
            path,
            format!(
                "not an nnU-Net splits file ([{{\"train\": [...], \"val\": [...]}}, ...]): {e}"
            ),
        )
    })?;
    if folds.is_empty() {
        return Err(DataError::invalid(path, "holds no folds"));
    }
    Ok(folds)
}

/// The split of an nnU-Net raw folder without `ctrcl_split.json`: fold `fold` of the user's
/// `splits_final.json` or of nnU-Net's generated folds, and the labelled `imagesTs` cases as the
/// test split. Returns the split, all folds (to record beside the run) and a note saying which.
pub fn fold_split(
    root: &Path,
    ending: &str,
    fold: usize,
) -> Result<(CaseSplit, Vec<Fold>, String)> {
    let images = root.join("imagesTr");
    if !images.is_dir() {
        return Err(DataError::invalid(
            root,
            "has neither ctrcl_split.json nor an imagesTr/ folder: not an nnU-Net raw dataset",
        ));
    }
    let ids = case_ids(&images, ending)?;
    let (folds, source) = match splits_final_paths(root).into_iter().find(|p| p.is_file()) {
        Some(path) => {
            let folds = read_splits_final(&path)?;
            for id in folds.iter().flat_map(|f| f.train.iter().chain(&f.val)) {
                if ids.binary_search(id).is_err() {
                    return Err(DataError::invalid(
                        &path,
                        format!("names case '{id}', which imagesTr/ does not hold"),
                    ));
                }
            }
            (folds, format!("{}", path.display()))
        }
        None => {
            if ids.len() < FOLDS {
                return Err(DataError::invalid(
                    &images,
                    format!(
                        "holds {} cases: nnU-Net's {FOLDS} folds need at least {FOLDS} (write a \
                         ctrcl_split.json or a splits_final.json)",
                        ids.len()
                    ),
                ));
            }
            (
                generate_folds(&ids),
                format!(
                    "nnU-Net's generated folds (KFold, seed 12345) of {} cases",
                    ids.len()
                ),
            )
        }
    };
    let Some(chosen) = folds.get(fold) else {
        return Err(DataError::invalid(
            root,
            format!(
                "data.fold = {fold}, but {source} has folds 0..{}",
                folds.len() - 1
            ),
        ));
    };
    let test = match (root.join("imagesTs"), root.join("labelsTs")) {
        (images, labels) if images.is_dir() && labels.is_dir() => case_ids(&images, ending)?
            .into_iter()
            .filter(|id| labels.join(format!("{id}{ending}")).is_file())
            .collect(),
        _ => Vec::new(),
    };
    let note = format!(
        "fold {fold} of {source}: {} training, {} validation cases; test: {} labelled imagesTs cases",
        chosen.train.len(),
        chosen.val.len(),
        test.len()
    );
    let split = CaseSplit {
        train: chosen.train.clone(),
        val: chosen.val.clone(),
        test,
    };
    Ok((split, folds, note))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mt19937_matches_the_reference_generator() {
        // The first output of init_genrand(5489), MT19937's reference seed (Matsumoto &
        // Nishimura's mt19937ar.c test vector), and numpy's RandomState(12345).shuffle(arange(10)).
        assert_eq!(Mt19937::new(5489).next_u32(), 3_499_211_612);
        assert_eq!(
            legacy_permutation(10, 12345),
            [0, 7, 3, 9, 6, 4, 1, 8, 5, 2]
        );
    }

    /// Every count in `tests/data/nnunet_folds/expected.json` (sklearn 1.9.1, numpy 2.4.6):
    /// identical train and val lists, fold by fold.
    #[test]
    fn generated_folds_equal_nnunets() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nnunet_folds/expected.json");
        let expected: std::collections::BTreeMap<String, Vec<Fold>> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(expected.len(), 10);
        for (n, folds) in expected {
            let n: usize = n.parse().unwrap();
            let ids: Vec<String> = (0..n).map(|i| format!("case_{i:03}")).collect();
            assert_eq!(generate_folds(&ids), folds, "{n} cases");
        }
    }
}

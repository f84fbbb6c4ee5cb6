//! The public benchmark layouts read in place (DATA.md §1): Synapse as TransUNet/Swin-Unet ship
//! it (`train_npz/*.npz` slices, `test_vol_h5/*.npy.h5` volumes, list files) and ACDC as SSL4MIS
//! ships it (`data/slices/*.h5`, `data/*.h5`, `train_slices.list`, `val.list`, `test.list`).
//! Both become a [`Dataset`] whose cases are the training slices (one-slice volumes) and the
//! validation/test volumes, split by the list files.

use crate::classes::{class_names_from, labels_as_classes};
use crate::dataset::{Case, Dataset, DatasetSplit};
use crate::error::{DataError, Result};
use crate::hdf5::{H5Array, H5File};
use crate::nifti::{NiftiType, NiftiVolume};
use crate::normalize::Intensity;
use crate::npy::parse_npy;
use crate::split::CaseSplit;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Synapse's 9 classes (TransUNet's label order).
pub const SYNAPSE_CLASSES: [&str; 9] = [
    "background",
    "aorta",
    "gallbladder",
    "left kidney",
    "right kidney",
    "liver",
    "pancreas",
    "spleen",
    "stomach",
];

/// ACDC's 4 classes (SSL4MIS's label order).
pub const ACDC_CLASSES: [&str; 4] = ["background", "RV", "Myo", "LV"];

/// An image and its labels as arrays in NumPy order: `(H, W)` or `(Z, H, W)`.
struct Pair {
    image: (Vec<usize>, Vec<f32>),
    label: (Vec<usize>, Vec<f32>),
}

/// Ids listed one per line (blank lines and surrounding spaces ignored).
fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The first list file that exists among `candidates`, read.
fn first_list(candidates: &[PathBuf]) -> Result<Option<(PathBuf, Vec<String>)>> {
    for c in candidates {
        if c.is_file() {
            return Ok(Some((c.clone(), read_list(c)?)));
        }
    }
    Ok(None)
}

/// File stems in `dir` that end with `suffix` (sorted), with the suffix removed.
fn stems(dir: &Path, suffix: &str) -> Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(suffix))
                .map(String::from)
        })
        .collect();
    out.sort();
    Ok(out)
}

fn array(a: H5Array) -> (Vec<usize>, Vec<f32>) {
    (a.shape, a.data)
}

/// `image` and `label` of an HDF5 file (other datasets, e.g. ACDC's `scribble`, are ignored).
fn read_h5_pair(path: &Path) -> Result<Pair> {
    let f = H5File::open(path)?;
    Ok(Pair {
        image: array(f.read("image")?),
        label: array(f.read("label")?),
    })
}

/// `image` and `label` of a Synapse `.npz` slice (stored or deflated members, any dtype, C or
/// Fortran order).
fn read_npz_pair(path: &Path) -> Result<Pair> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| DataError::invalid(path, format!("not a valid .npz (zip) archive: {e}")))?;
    let mut member = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
        let mut m = zip.by_name(&format!("{name}.npy")).map_err(|_| {
            DataError::invalid(
                path,
                format!("has no \"{name}\" array (Synapse slices hold image and label)"),
            )
        })?;
        let mut bytes = Vec::new();
        m.read_to_end(&mut bytes)
            .map_err(|e| DataError::invalid(path, format!("member {name}.npy: {e}")))?;
        let a = parse_npy(&path.join(format!("{name}.npy")), &bytes)?;
        Ok((a.shape, a.data.iter().map(|&v| v as f32).collect()))
    };
    Ok(Pair {
        image: member("image")?,
        label: member("label")?,
    })
}

/// Builds a case from a pair: a 2D `(H, W)` slice or a `(Z, H, W)` volume (slice axis 0), or a
/// `(H, W, Z)` volume when `slice_shape` says the slices are its first two axes.
fn pair_to_case(
    id: &str,
    pair: Pair,
    path: &Path,
    k: usize,
    intensity: Intensity,
    slice_shape: Option<&[usize]>,
    notes: &mut Vec<String>,
) -> Result<Case> {
    let (shape, mut image) = pair.image;
    let (label_shape, mut label) = pair.label;
    if shape != label_shape {
        return Err(DataError::invalid(
            path,
            format!("label shape {label_shape:?} differs from image shape {shape:?}"),
        ));
    }
    let dims = match shape.as_slice() {
        [h, w] => [*w, *h, 1],
        [a, b, c] => {
            let last_two = [*b, *c];
            let first_two = [*a, *b];
            let axis_last = slice_shape.is_some_and(|s| s == first_two && s != last_two);
            if axis_last {
                // (H, W, Z) → (Z, H, W): slices along the last axis.
                notes.push(format!("{}: slice axis 2 of {shape:?}", path.display()));
                image = move_last_axis_first(&image, [*a, *b, *c]);
                label = move_last_axis_first(&label, [*a, *b, *c]);
                [*b, *a, *c]
            } else {
                notes.push(format!("{}: slice axis 0 of {shape:?}", path.display()));
                [*c, *b, *a]
            }
        }
        _ => {
            return Err(DataError::invalid(
                path,
                format!("image shape {shape:?} is neither (H, W) nor (Z, H, W)"),
            ))
        }
    };
    if let Some(i) = image.iter().position(|v| !v.is_finite()) {
        return Err(DataError::invalid(
            path,
            format!("image value {i} is not finite (NaN or infinite intensity)"),
        ));
    }
    let label = labels_as_classes(&label, k, path)?;
    let volume = NiftiVolume::from_parts(
        dims,
        [1.0; 3],
        crate::nifti::IDENTITY,
        image,
        NiftiType::F32,
    );
    Ok(Case::new(id.to_string(), volume, label, intensity))
}

/// `(A, B, C)` row-major → `(C, A, B)` row-major.
pub(super) fn move_last_axis_first(data: &[f32], [a, b, c]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for i in 0..a * b {
        for z in 0..c {
            out[z * a * b + i] = data[i * c + z];
        }
    }
    out
}

fn class_map(names: &[&str]) -> BTreeMap<String, serde_json::Value> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i.into()))
        .collect()
}

/// Synapse: `train_npz/<id>.npz` slices listed in `train.txt`, `test_vol_h5/<id>.npy.h5` volumes
/// listed in `test_vol.txt` (lists looked for in `lists/lists_Synapse/`, `lists_Synapse/` and the
/// folder itself; without them every file is used). No validation set: the protocol tests the
/// last checkpoint.
pub fn open_synapse(root: &Path, intensity: Intensity) -> Result<Dataset> {
    let k = SYNAPSE_CLASSES.len();
    let list_dirs = [
        root.join("lists/lists_Synapse"),
        root.join("lists_Synapse"),
        root.to_path_buf(),
    ];
    let find = |name: &str| first_list(&list_dirs.iter().map(|d| d.join(name)).collect::<Vec<_>>());
    let mut notes = Vec::new();
    let train_dir = root.join("train_npz");
    let train_ids = match find("train.txt")? {
        Some((p, ids)) => {
            notes.push(format!("training slices from {}", p.display()));
            ids
        }
        None => stems(&train_dir, ".npz")?,
    };
    let test_dir = root.join("test_vol_h5");
    let test_ids = match find("test_vol.txt")? {
        Some((p, ids)) => {
            notes.push(format!("test volumes from {}", p.display()));
            ids
        }
        None if test_dir.is_dir() => stems(&test_dir, ".npy.h5")?,
        None => Vec::new(),
    };
    let mut cases = Vec::with_capacity(train_ids.len() + test_ids.len());
    let mut slice_shape: Option<Vec<usize>> = None;
    for id in &train_ids {
        let path = train_dir.join(format!("{id}.npz"));
        let pair = read_npz_pair(&path)?;
        slice_shape.get_or_insert_with(|| pair.image.0.clone());
        cases.push(pair_to_case(
            id, pair, &path, k, intensity, None, &mut notes,
        )?);
    }
    for id in &test_ids {
        let path = test_dir.join(format!("{id}.npy.h5"));
        let pair = read_h5_pair(&path)?;
        cases.push(pair_to_case(
            id,
            pair,
            &path,
            k,
            intensity,
            slice_shape.as_deref(),
            &mut notes,
        )?);
    }
    let split = CaseSplit {
        train: train_ids,
        val: Vec::new(),
        test: test_ids,
    };
    split.validate(&root.join("train_npz"))?;
    Ok(Dataset {
        root: root.to_path_buf(),
        class_names: class_names_from(&class_map(&SYNAPSE_CLASSES), root)?,
        split: DatasetSplit::Cases(split),
        cases,
        intensity,
        layout: "synapse",
        notes,
        image_resize: Default::default(),
        folds: None,
        channel_norms: Vec::new(),
    })
}

/// ACDC as SSL4MIS prepares it: training slices `data/slices/<id>.h5` from `train_slices.list`,
/// validation and test volumes `data/<id>.h5` from `val.list` and `test.list`.
pub fn open_acdc(root: &Path, intensity: Intensity) -> Result<Dataset> {
    let k = ACDC_CLASSES.len();
    let list = |name: &str| read_list(&root.join(name));
    let val_ids = if root.join("val.list").is_file() {
        list("val.list")?
    } else {
        Vec::new()
    };
    let test_ids = if root.join("test.list").is_file() {
        list("test.list")?
    } else {
        Vec::new()
    };
    let slices_dir = root.join("data/slices");
    let train_ids = if root.join("train_slices.list").is_file() {
        list("train_slices.list")?
    } else {
        // Every slice whose volume is not held out.
        let held: Vec<&String> = val_ids.iter().chain(&test_ids).collect();
        stems(&slices_dir, ".h5")?
            .into_iter()
            .filter(|s| !held.iter().any(|v| s.starts_with(&format!("{v}_slice"))))
            .collect()
    };
    let mut notes = vec![format!(
        "{} training slices, {} validation and {} test volumes",
        train_ids.len(),
        val_ids.len(),
        test_ids.len()
    )];
    let slice_files = train_ids
        .iter()
        .map(|id| slices_dir.join(format!("{id}.h5")));
    let volume_files = val_ids
        .iter()
        .chain(&test_ids)
        .map(|id| root.join("data").join(format!("{id}.h5")));
    let ids = train_ids.iter().chain(&val_ids).chain(&test_ids);
    let mut cases = Vec::new();
    for (id, path) in ids.zip(slice_files.chain(volume_files)) {
        let pair = read_h5_pair(&path)?;
        cases.push(pair_to_case(
            id, pair, &path, k, intensity, None, &mut notes,
        )?);
    }
    let split = CaseSplit {
        train: train_ids,
        val: val_ids,
        test: test_ids,
    };
    split.validate(&root.join("train_slices.list"))?;
    Ok(Dataset {
        root: root.to_path_buf(),
        class_names: class_names_from(&class_map(&ACDC_CLASSES), root)?,
        split: DatasetSplit::Cases(split),
        cases,
        intensity,
        layout: "acdc",
        notes,
        image_resize: Default::default(),
        folds: None,
        channel_norms: Vec::new(),
    })
}

/// Kvasir-SEG: `images/<stem>.jpg` (RGB) with `masks/<stem>.jpg` (grey, JPEG-noisy); a mask pixel
/// is foreground when its grey level is at least `mask_threshold`. Split by `train.txt`, `val.txt`
/// and `test.txt` (one stem per line, extension optional) in the folder; without them, a fixed
/// split of the sorted stems shuffled with seed 0: 12 % test (Kvasir's common 880/120 ratio),
/// 8 % validation, the rest training.
pub fn open_kvasir(root: &Path, options: crate::dataset::OpenOptions) -> Result<Dataset> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let images = root.join("images");
    let masks = root.join("masks");
    let is_image = |n: &str| {
        let n = n.to_ascii_lowercase();
        [".jpg", ".jpeg", ".png"].iter().any(|e| n.ends_with(e))
    };
    let files = |dir: &Path| -> Result<BTreeMap<String, PathBuf>> {
        let mut out = BTreeMap::new();
        for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
            let path = e.map_err(|e| DataError::io(dir, e))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if is_image(&name) {
                let stem = name
                    .rsplit_once('.')
                    .map_or(name.clone(), |(s, _)| s.to_string());
                out.insert(stem, path);
            }
        }
        Ok(out)
    };
    let image_files = files(&images)?;
    let mask_files = files(&masks)?;
    let strip = |id: String| match id.rsplit_once('.') {
        Some((stem, ext)) if is_image(&format!(".{ext}")) => stem.to_string(),
        _ => id,
    };
    let mut notes = Vec::new();
    let split = if root.join("train.txt").is_file() {
        let list = |name: &str| -> Result<Vec<String>> {
            let p = root.join(name);
            Ok(if p.is_file() {
                read_list(&p)?.into_iter().map(strip).collect()
            } else {
                Vec::new()
            })
        };
        notes.push(format!("split from the list files in {}", root.display()));
        CaseSplit {
            train: list("train.txt")?,
            val: list("val.txt")?,
            test: list("test.txt")?,
        }
    } else {
        let mut stems: Vec<String> = image_files.keys().cloned().collect();
        stems.shuffle(&mut rand::rngs::StdRng::seed_from_u64(0));
        let n = stems.len();
        let n_test = (n as f64 * 0.12).round() as usize;
        let n_val = (n as f64 * 0.08).round() as usize;
        let test = stems[..n_test].to_vec();
        let val = stems[n_test..n_test + n_val].to_vec();
        let train = stems[n_test + n_val..].to_vec();
        notes.push(format!(
            "no train.txt in {}: fixed seed-0 split {} train / {} val / {} test",
            root.display(),
            train.len(),
            val.len(),
            test.len()
        ));
        CaseSplit { train, val, test }
    };
    split.validate(&root.join("train.txt"))?;
    let mut cases = Vec::new();
    for id in split.train.iter().chain(&split.val).chain(&split.test) {
        let image_path = image_files.get(id).ok_or_else(|| {
            DataError::invalid(&images, format!("has no image for the listed case {id}"))
        })?;
        let mask_path = mask_files.get(id).ok_or_else(|| {
            DataError::invalid(&masks, format!("has no mask for {}", image_path.display()))
        })?;
        let (h, w, planes) = crate::image2d::read_rgb_planes(image_path)?;
        let mask = crate::image2d::read_image_2d(mask_path)?;
        if (mask.h, mask.w) != (h, w) {
            return Err(DataError::invalid(
                mask_path,
                format!(
                    "mask is {}×{} but its image {} is {w}×{h}",
                    mask.w,
                    mask.h,
                    image_path.display()
                ),
            ));
        }
        let threshold = f32::from(options.mask_threshold);
        let label: Vec<u8> = mask
            .data
            .iter()
            .map(|&g| u8::from((g * 255.0).round() >= threshold))
            .collect();
        let volume = NiftiVolume::from_parts(
            [w, h, 1],
            [1.0; 3],
            crate::nifti::IDENTITY,
            planes,
            NiftiType::F32,
        );
        cases.push(Case::new(id.clone(), volume, label, options.intensity));
    }
    Ok(Dataset {
        root: root.to_path_buf(),
        class_names: vec!["background".into(), "polyp".into()],
        split: DatasetSplit::Cases(split),
        cases,
        intensity: options.intensity,
        layout: "kvasir",
        notes,
        image_resize: Default::default(),
        folds: None,
        channel_norms: Vec::new(),
    })
}

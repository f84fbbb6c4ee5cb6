//! The public benchmark layouts read in place (DATA.md §1): Synapse as TransUNet/Swin-Unet ship
//! it (`train_npz/*.npz` slices, `test_vol_h5/*.npy.h5` volumes, list files) and ACDC as SSL4MIS
//! ships it (`data/slices/*.h5`, `data/*.h5`, `train_slices.list`, `val.list`, `test.list`).
//! Both become a [`Dataset`] whose cases are the training slices (one-slice volumes) and the
//! validation/test volumes, split by the list files.

use crate::dataset::{class_names_from, labels_as_classes, Case, Dataset, DatasetSplit, Intensity};
use crate::error::{DataError, Result};
use crate::hdf5::{H5Array, H5File};
use crate::nifti::{NiftiType, NiftiVolume};
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
        crate::dataset::IDENTITY,
        image,
        NiftiType::F32,
    );
    Ok(Case::new(id.to_string(), volume, label, intensity))
}

/// `(A, B, C)` row-major → `(C, A, B)` row-major.
fn move_last_axis_first(data: &[f32], [a, b, c]: [usize; 3]) -> Vec<f32> {
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
            crate::dataset::IDENTITY,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Normalize, OpenOptions};
    use crate::split::Split;

    #[derive(serde::Deserialize)]
    struct Expected {
        dims: [usize; 3],
        image_sum: f64,
        label_counts: Vec<usize>,
    }

    fn fixtures() -> (PathBuf, BTreeMap<String, BTreeMap<String, Expected>>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/layouts");
        let text = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        (dir, serde_json::from_str(&text).unwrap())
    }

    /// Every case reads with numpy/h5py's geometry, intensities (sum, f32 rounding: 1e-4
    /// relative) and label counts, and the list files decide the split.
    fn check(layout: &str, splits: [&[&str]; 3]) {
        let (dir, all) = fixtures();
        let ds = Dataset::open(&dir.join(layout), Normalize::None).unwrap();
        assert_eq!(ds.layout, layout);
        let expected = &all[layout];
        assert_eq!(ds.cases.len(), expected.len());
        for case in &ds.cases {
            let e = &expected[&case.id];
            assert_eq!(case.image.dims, e.dims, "{}", case.id);
            let sum: f64 = case.image.data.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (sum - e.image_sum).abs() <= 1e-4 * e.image_sum.abs().max(1.0),
                "{}: {sum} vs {}",
                case.id,
                e.image_sum
            );
            let counts: Vec<usize> = (0..ds.num_classes())
                .map(|c| case.label.iter().filter(|&&l| l as usize == c).count())
                .collect();
            assert_eq!(counts, e.label_counts, "{}", case.id);
        }
        for (split, ids) in [Split::Train, Split::Val, Split::Test]
            .into_iter()
            .zip(splits)
        {
            assert_eq!(ds.split_ids(split), ids, "{split:?}");
        }
    }

    #[test]
    fn synapse_reads_npz_slices_and_h5_volumes_by_its_lists() {
        let train = [
            "case0005_slice000",
            "case0005_slice001",
            "case0005_slice002",
            "case0006_slice000",
            "case0006_slice001",
            "case0006_slice002",
        ];
        check("synapse", [&train, &[], &["case0001", "case0008"]]);
        let (dir, _) = fixtures();
        let ds = Dataset::open(&dir.join("synapse"), Normalize::None).unwrap();
        assert_eq!(ds.num_classes(), 9);
        assert!(
            ds.notes.iter().any(|n| n.contains("slice axis 0")),
            "{:?}",
            ds.notes
        );
    }

    #[test]
    fn acdc_reads_gzip_h5_slices_and_volumes_by_its_lists() {
        let train = [
            "patient001_frame01_slice_0",
            "patient001_frame01_slice_1",
            "patient001_frame01_slice_2",
            "patient002_frame12_slice_0",
            "patient002_frame12_slice_1",
            "patient002_frame12_slice_2",
        ];
        check(
            "acdc",
            [&train, &["patient003_frame01"], &["patient004_frame01"]],
        );
    }

    /// Kvasir-SEG: RGB images (3 channels), JPEG masks thresholded at 128, list-file split.
    /// Decoded JPEG values may differ from PIL/libjpeg's by a grey level or two, so the image sum
    /// is compared to 0.5 % and the mask counts to 3 % + 2 pixels.
    #[test]
    fn kvasir_reads_rgb_images_and_thresholded_jpeg_masks() {
        let (dir, all) = fixtures();
        let ds = Dataset::open(&dir.join("kvasir"), Normalize::None).unwrap();
        assert_eq!(ds.layout, "kvasir");
        assert_eq!(ds.channels(), 3);
        assert_eq!(ds.class_names, ["background", "polyp"]);
        for case in &ds.cases {
            let e = &all["kvasir"][&case.id];
            assert_eq!(case.image.dims, e.dims, "{}", case.id);
            let sum: f64 = case.image.data.iter().map(|&v| f64::from(v)).sum();
            assert!(
                (sum - e.image_sum).abs() <= 0.005 * e.image_sum,
                "{}: {sum}",
                case.id
            );
            let fg = case.label.iter().filter(|&&l| l == 1).count() as f64;
            let want = e.label_counts[1] as f64;
            assert!(
                (fg - want).abs() <= 0.03 * want + 2.0,
                "{}: {fg} vs {want}",
                case.id
            );
        }
        let ids = |split| ds.split_ids(split);
        assert_eq!(ids(Split::Train).len(), 3);
        assert_eq!(ids(Split::Val), ["cju0rx1idathl0835detmsp84"]);
        assert_eq!(
            ids(Split::Test),
            ["cju0s2a9ekvms080138tjjpxr"],
            "extension stripped"
        );
        // A stricter threshold keeps fewer pixels.
        let strict = Dataset::open(
            &dir.join("kvasir"),
            OpenOptions {
                mask_threshold: 250,
                ..OpenOptions::from(Normalize::None)
            },
        )
        .unwrap();
        let count = |d: &Dataset| {
            d.cases
                .iter()
                .map(|c| c.label.iter().filter(|&&l| l == 1).count())
                .sum::<usize>()
        };
        assert!(count(&strict) < count(&ds));
    }

    /// nnU-Net raw with two channels (`_0000` CT, `_0001` T2), imagesTs/labelsTs for the test
    /// case, normalised by channel name; values from numpy (`scripts/reference/nnunet_fixture.py`),
    /// to 1e-4 (f32 arithmetic on values of order 1).
    #[test]
    fn nnunet_channels_are_normalised_by_their_names() {
        let (dir, _) = fixtures();
        let ds = Dataset::open(&dir.join("nnunet"), Normalize::ChannelNames).unwrap();
        assert_eq!(ds.layout, "nnunet");
        assert_eq!(ds.channels(), 2);
        let text = std::fs::read_to_string(dir.join("expected_normalised.json")).unwrap();
        let expected: BTreeMap<String, [Vec<f64>; 2]> = serde_json::from_str(&text).unwrap();
        for case in &ds.cases {
            let n = case.label.len();
            for (c, want) in expected[&case.id].iter().enumerate() {
                for (i, w) in want.iter().enumerate() {
                    let got = f64::from(case.image.data[c * n + i]);
                    assert!(
                        (got - w).abs() < 1e-4,
                        "{} channel {c} voxel {i}: {got} vs {w}",
                        case.id
                    );
                }
            }
        }
        let ids = |split| ds.split_ids(split);
        assert_eq!(
            ids(Split::Test),
            ["case_002"],
            "read from imagesTs/labelsTs"
        );
    }

    /// `label_map` swaps organ (1) and lesion (2) of the nnU-Net fixture: every label voxel of
    /// the mapped dataset is the swap of the unmapped one; an unmapped value is a clear error.
    #[test]
    fn nnunet_labels_are_remapped_before_the_class_check() {
        let (dir, _) = fixtures();
        let plain = Dataset::open(&dir.join("nnunet"), Normalize::None).unwrap();
        let swap: BTreeMap<String, u8> = [("0", 0), ("1", 2), ("2", 1)]
            .map(|(k, v)| (k.to_string(), v))
            .into();
        let options = OpenOptions {
            label_map: swap,
            ..OpenOptions::from(Normalize::None)
        };
        let mapped = Dataset::open(&dir.join("nnunet"), options).unwrap();
        let mut seen = [0usize; 3];
        for (a, b) in plain.cases.iter().zip(&mapped.cases) {
            for (&x, &y) in a.label.iter().zip(&b.label) {
                assert_eq!(y, [0, 2, 1][x as usize]);
                seen[x as usize] += 1;
            }
        }
        assert!(
            seen.iter().all(|&n| n > 0),
            "the fixture holds every class: {seen:?}"
        );
        let only_one: BTreeMap<String, u8> = [("1".to_string(), 1)].into();
        let options = OpenOptions {
            label_map: only_one,
            ..OpenOptions::from(Normalize::None)
        };
        let msg = match Dataset::open(&dir.join("nnunet"), options) {
            Ok(_) => panic!("an unmapped label was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("labelsTr") && msg.contains("does not map"),
            "{msg}"
        );
    }

    #[test]
    fn slices_along_the_last_axis_are_moved_first() {
        // (H, W, Z) = (2, 2, 3): value = 10·z + (y·2 + x).
        let data: Vec<f32> = (0..4)
            .flat_map(|p| (0..3).map(move |z| (10 * z + p) as f32))
            .collect();
        let moved = move_last_axis_first(&data, [2, 2, 3]);
        let want: Vec<f32> = (0..3)
            .flat_map(|z| (0..4).map(move |p| (10 * z + p) as f32))
            .collect();
        assert_eq!(moved, want);
    }

    #[test]
    fn broken_layouts_are_clear_errors() {
        let (dir, _) = fixtures();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("synapse");
        for sub in ["train_npz", "test_vol_h5", "lists/lists_Synapse"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let src = dir.join("synapse");
        std::fs::copy(
            src.join("train_npz/case0005_slice000.npz"),
            root.join("train_npz/case0005_slice000.npz"),
        )
        .unwrap();
        std::fs::write(
            root.join("lists/lists_Synapse/train.txt"),
            "case0005_slice000\ncase0005_slice009\n",
        )
        .unwrap();
        let msg = Dataset::open(&root, Normalize::None)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("case0005_slice009.npz"), "{msg}");
        // An npz without its label array.
        let mut zip = zip::ZipWriter::new(
            std::fs::File::create(root.join("train_npz/case0005_slice009.npz")).unwrap(),
        );
        zip.start_file("image.npy", zip::write::SimpleFileOptions::default())
            .unwrap();
        std::io::Write::write_all(&mut zip, &crate::npy::npy_f32_bytes(&[2, 2], &[0.0; 4]))
            .unwrap();
        zip.finish().unwrap();
        let msg = Dataset::open(&root, Normalize::None)
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("case0005_slice009.npz") && msg.contains("\"label\""),
            "{msg}"
        );
    }
}

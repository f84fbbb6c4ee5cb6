//! The layouts against fixtures written by `scripts/reference/` (real formats, small arrays).

use super::kvasir_and_npz::move_last_axis_first;
use crate::dataset::{Dataset, OpenOptions};
use crate::normalize::Normalize;
use crate::split::Split;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// The training split's class presence: its 6 one-slice cases, each class's voxels summed from
/// numpy's per-case label counts (expected.json), every class in every slice there.
#[test]
fn class_presence_counts_the_split_slices_and_voxels() {
    let (dir, all) = fixtures();
    let ds = Dataset::open(&dir.join("acdc"), Normalize::None).unwrap();
    let (slices, presence) = ds.class_presence(Split::Train);
    assert_eq!(slices, 6);
    let mut voxels = [0u64; 4];
    for id in ds.split_ids(Split::Train) {
        for (v, c) in voxels.iter_mut().zip(&all["acdc"][id].label_counts) {
            *v += *c as u64;
        }
    }
    assert_eq!(voxels, [515, 35, 74, 96]);
    let got: Vec<(usize, u64)> = presence.iter().map(|p| (p.slices, p.voxels)).collect();
    assert_eq!(got, voxels.map(|v| (6, v)));
    // The test volume: 4 slices of one case.
    assert_eq!(ds.class_presence(Split::Test).0, 4);
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

/// A `label_map` that merges organ and lesion of the nnU-Net fixture (whose dataset.json names
/// the stored labels) opens as two classes named after what they hold — before, three classes
/// stayed, the last one empty, so every mean Dice counted a phantom class.
#[test]
fn a_merging_label_map_leaves_only_the_merged_classes() {
    let (dir, _) = fixtures();
    let merge: BTreeMap<String, u8> = [("0", 0), ("1", 1), ("2", 1)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    let options = OpenOptions {
        label_map: merge,
        ..OpenOptions::from(Normalize::None)
    };
    let ds = Dataset::open(&dir.join("nnunet"), options).unwrap();
    assert_eq!(ds.num_classes(), 2);
    assert_eq!(ds.class_names, ["background", "organ + lesion"]);
    assert!(
        ds.notes
            .iter()
            .any(|n| n.contains("3 stored labels → 2 classes")),
        "{:?}",
        ds.notes
    );
    assert!(ds.cases.iter().all(|c| c.label.iter().all(|&l| l < 2)));
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
    assert_eq!(mapped.class_names, ["background", "lesion", "organ"]);
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
    std::io::Write::write_all(&mut zip, &crate::npy::npy_f32_bytes(&[2, 2], &[0.0; 4])).unwrap();
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

/// `data.split` names a split file outside the nnU-Net folder: the folder is read with that
/// split (here: both labelled cases for training, where the folder's own file trains on one),
/// a named file that is missing is an error naming it rather than a silent fall back to the
/// folder's split, and the layouts that split by their own lists refuse it.
#[test]
fn a_split_file_named_by_the_config_replaces_the_folders() {
    let (dir, _) = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let other = tmp.path().join("other_split.json");
    std::fs::write(
        &other,
        r#"{"train": ["case_000", "case_001"], "val": [], "test": ["case_002"]}"#,
    )
    .unwrap();
    let with = |split: &Path| OpenOptions {
        split: Some(split.to_path_buf()),
        ..OpenOptions::from(Normalize::None)
    };
    let own = Dataset::open(&dir.join("nnunet"), Normalize::None).unwrap();
    assert_eq!(own.split_ids(Split::Train), ["case_000"]);
    let ds = Dataset::open(&dir.join("nnunet"), with(&other)).unwrap();
    assert_eq!(ds.split_ids(Split::Train), ["case_000", "case_001"]);
    assert!(ds.split_ids(Split::Val).is_empty());
    assert_eq!(ds.split_ids(Split::Test), ["case_002"]);
    assert!(
        ds.notes.iter().any(|n| n.contains("other_split.json")),
        "{:?}",
        ds.notes
    );
    let missing = tmp.path().join("missing.json");
    let msg = match Dataset::open(&dir.join("nnunet"), with(&missing)) {
        Ok(_) => panic!("a missing split file fell back to another split"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("missing.json"), "{msg}");
    let msg = match Dataset::open(&dir.join("kvasir"), with(&other)) {
        Ok(_) => panic!("a split file was accepted for a layout with list files"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("other_split.json") && msg.contains("nnU-Net raw"),
        "{msg}"
    );
}

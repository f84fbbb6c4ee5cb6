//! TPTBox's real spine crops (`ctrcl data fetch --source spine`, fetched like CI's other real
//! data) read as nibabel reads them (`scripts/reference/spine_reference.py`), and their vertebra
//! ids become classes through a label map: the loader and label-remap checks DATA.md asks for.

use ctrcl_data::classes::remap_labels;
use ctrcl_data::inspect::axis_codes;
use ctrcl_data::nifti::read_nifti;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn counts(data: &[f32]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for &v in data {
        *out.entry(format!("{}", v as i64)).or_insert(0) += 1;
    }
    out
}

#[test]
fn spine_crops_read_as_nibabel_and_vertebrae_remap_to_classes() {
    let root = ctrcl_data::fetch::fetch(&ctrcl_data::fetch::SPINE, None, &mut |m| eprintln!("{m}"))
        .expect("`ctrcl data fetch --source spine` (pip) must work where the tests run");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/spine/expected.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let expected = expected.as_object().unwrap();
    assert_eq!(expected.len(), 6);
    for (name, want) in expected {
        let v = read_nifti(&root.join(name)).unwrap();
        assert_eq!(serde_json::json!(v.dims), want["dims"], "{name}");
        assert_eq!(serde_json::json!(v.spacing), want["spacing"], "{name}");
        assert_eq!(
            axis_codes(&v.affine),
            want["axcodes"].as_str().unwrap(),
            "{name}"
        );
        if let Some(c) = want.get("counts") {
            let want: BTreeMap<String, u64> = serde_json::from_value(c.clone()).unwrap();
            assert_eq!(counts(&v.data), want, "{name}");
        } else {
            let min = v.data.iter().copied().fold(f32::MAX, f32::min);
            let max = v.data.iter().copied().fold(f32::MIN, f32::max);
            assert_eq!(
                (f64::from(min), f64::from(max)),
                (want["min"].as_f64().unwrap(), want["max"].as_f64().unwrap()),
                "{name}"
            );
        }
    }
    // Vertebrae as classes 1–3; everything else (MR discs 1xx, endplates 2xx) background.
    let map = |ids: [&str; 3]| -> BTreeMap<String, u8> {
        let mut m: BTreeMap<String, u8> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.to_string(), i as u8 + 1))
            .collect();
        m.insert("*".into(), 0);
        m
    };
    for (name, ids) in [
        ("sub-ct_seg-vert_label-22_msk.nii.gz", ["21", "22", "23"]),
        ("sub-mri_seg-vert_label-6_msk.nii.gz", ["5", "6", "7"]),
    ] {
        let mut v = read_nifti(&root.join(name)).unwrap();
        remap_labels(&mut v.data, &map(ids), &root.join(name)).unwrap();
        let raw: BTreeMap<String, u64> =
            serde_json::from_value(expected[name]["counts"].clone()).unwrap();
        let got = counts(&v.data);
        for (class, id) in ids.iter().enumerate() {
            assert_eq!(got[&(class + 1).to_string()], raw[*id], "{name} {id}");
        }
        let total: u64 = raw.values().sum();
        let vertebrae: u64 = ids.iter().map(|id| raw[*id]).sum();
        assert_eq!(
            got["0"],
            total - vertebrae,
            "{name}: the rest is background"
        );
    }
}

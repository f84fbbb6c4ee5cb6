//! Overlap and distance metrics against medpy 0.5.2 on real ICBM152 label crops, perturbed
//! (dilated, eroded, shifted, a class dropped, a class only predicted, anisotropic spacing).
//! Inputs and expected values: `tests/data/metric_reference.json`, made by
//! `scripts/reference/metrics.py`.
//!
//! Tolerances: Dice/Jaccard 1e-6 (exact ratios of counts); distances 1e-4 (both sides compute
//! exact Euclidean distances in float64, so they agree to ~1e-12; 1e-4 is the bar).

use ctrcl_metrics::distance::{distances, Hd95Mode};
use ctrcl_metrics::modes::{evaluate_case, Mode};
use ctrcl_metrics::{confusion_counts, dice_strict, jaccard_strict};
use serde_json::Value;

fn decode(s: &str) -> Vec<u8> {
    s.bytes().map(|b| b - b'0').collect()
}

fn check(got: f64, want: &Value, tol: f64, what: &str) {
    match want.as_f64() {
        Some(w) => assert!((got - w).abs() <= tol, "{what}: got {got}, medpy {w}"),
        None => assert!(
            got.is_nan(),
            "{what}: got {got}, medpy has no value (an empty mask)"
        ),
    }
}

#[test]
fn metrics_match_medpy_on_perturbed_real_labels() {
    let doc: Value = serde_json::from_str(include_str!("data/metric_reference.json")).unwrap();
    let shape: Vec<usize> = doc["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let k = doc["classes"].as_u64().unwrap() as usize;
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let spacing: Vec<f64> = case["spacing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let truth = decode(case["truth"].as_str().unwrap());
        let pred = decode(case["pred"].as_str().unwrap());
        assert_eq!(truth.len(), shape.iter().product::<usize>());
        let counts = confusion_counts(&pred, &truth, k);
        // The per-case path (bounding-box crops, classes in parallel) gives medpy's values too.
        let per_case = evaluate_case(
            &pred,
            &truth,
            &shape,
            &spacing,
            k,
            Mode::Strict,
            Hd95Mode::Pooled,
        );
        for c in 1..k {
            let e = &case["expected"][c.to_string()];
            let what = |m: &str| format!("{name} class {c} {m}");
            // medpy's dc is 0 (not NaN) when one mask is empty; no case has both empty.
            check(dice_strict(counts[c]), &e["dice"], 1e-6, &what("dice"));
            check(
                jaccard_strict(counts[c]),
                &e["jaccard"],
                1e-6,
                &what("jaccard"),
            );
            let p: Vec<bool> = pred.iter().map(|&v| v as usize == c).collect();
            let t: Vec<bool> = truth.iter().map(|&v| v as usize == c).collect();
            let pooled = distances(&p, &t, &shape, &spacing, Hd95Mode::Pooled);
            check(pooled.hd95, &e["hd95"], 1e-4, &what("hd95"));
            check(pooled.hd, &e["hd"], 1e-4, &what("hd"));
            check(pooled.asd, &e["asd"], 1e-4, &what("asd"));
            check(pooled.assd, &e["assd"], 1e-4, &what("assd"));
            check(
                per_case[c - 1].hd95,
                &e["hd95"],
                1e-4,
                &what("evaluate_case hd95"),
            );
            check(
                per_case[c - 1].asd,
                &e["asd"],
                1e-4,
                &what("evaluate_case asd"),
            );
            check(
                per_case[c - 1].dice,
                &e["dice"],
                1e-6,
                &what("evaluate_case dice"),
            );
            let max = distances(&p, &t, &shape, &spacing, Hd95Mode::Max);
            check(
                max.hd95,
                &e["hd95_max"],
                1e-4,
                &what("hd95 (max of directed)"),
            );
        }
    }
}

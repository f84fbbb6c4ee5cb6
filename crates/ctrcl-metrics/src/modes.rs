//! The two named evaluation conventions of METHOD.md §8, per case and per foreground class, and
//! their aggregation over cases.
//!
//! - `transunet`: TransUNet's `calculate_metric_percase` — prediction empty → Dice 0, HD95 0;
//!   prediction non-empty and truth empty → Dice 1, HD95 0; otherwise medpy's values. Jaccard
//!   and ASD follow the same rule (0/0 and 1/0). Means over cases, then over classes.
//! - `strict` (nnU-Net/MONAI): Dice and Jaccard NaN when both masks are empty; HD95/ASD NaN when
//!   either is; NaN-aware means.

use crate::distance::{class_boxes, crop_mask, distances, Distances, Hd95Mode};
use crate::{confusion_counts, dice_strict, jaccard_strict, nan_mean};
use rayon::prelude::*;

/// Which convention to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    TransUnet,
    Strict,
}

/// Metrics of one class on one case.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassMetrics {
    pub dice: f64,
    pub jaccard: f64,
    pub hd95: f64,
    pub asd: f64,
}

/// Metrics of every foreground class (1..K) of one case.
///
/// `pred` and `truth` are label maps over `shape` (row-major), `spacing` per axis. Classes are
/// scored in parallel; distances are computed in each class's bounding box (over both maps)
/// grown by one voxel, which gives exactly the full-array values: surfaces only depend on a
/// voxel's face neighbours, and every nearest surface voxel lies inside the box.
pub fn evaluate_case(
    pred: &[u8],
    truth: &[u8],
    shape: &[usize],
    spacing: &[f64],
    num_classes: usize,
    mode: Mode,
    hd95: Hd95Mode,
) -> Vec<ClassMetrics> {
    let counts = confusion_counts(pred, truth, num_classes);
    let boxes = class_boxes(pred, truth, shape, num_classes);
    (1..num_classes)
        .into_par_iter()
        .map(|c| {
            let n = counts[c];
            let (pred_any, truth_any) = (n.tp + n.fp > 0, n.tp + n.fn_ > 0);
            let dist = || {
                let bbox = boxes[c]
                    .as_ref()
                    .expect("a class in both maps has a box")
                    .grown(1, shape);
                let p = crop_mask(pred, shape, &bbox, c as u8);
                let t = crop_mask(truth, shape, &bbox, c as u8);
                distances(&p, &t, &bbox.shape(), spacing, hd95)
            };
            match mode {
                Mode::TransUnet => match (pred_any, truth_any) {
                    (false, _) => ClassMetrics {
                        dice: 0.0,
                        jaccard: 0.0,
                        hd95: 0.0,
                        asd: 0.0,
                    },
                    (true, false) => ClassMetrics {
                        dice: 1.0,
                        jaccard: 1.0,
                        hd95: 0.0,
                        asd: 0.0,
                    },
                    (true, true) => {
                        let d = dist();
                        ClassMetrics {
                            dice: dice_strict(n),
                            jaccard: jaccard_strict(n),
                            hd95: d.hd95,
                            asd: d.asd,
                        }
                    }
                },
                Mode::Strict => {
                    let d = if pred_any && truth_any {
                        dist()
                    } else {
                        Distances::NAN
                    };
                    ClassMetrics {
                        dice: dice_strict(n),
                        jaccard: jaccard_strict(n),
                        hd95: d.hd95,
                        asd: d.asd,
                    }
                }
            }
        })
        .collect()
}

/// Mean over cases of each class: `cases[case][class]` → one value per class. TransUNet mode
/// uses plain means (its values are never NaN); strict mode ignores NaN.
pub fn per_class_mean(cases: &[Vec<ClassMetrics>], mode: Mode) -> Vec<ClassMetrics> {
    let k = cases.first().map_or(0, Vec::len);
    let mean = |f: &dyn Fn(&ClassMetrics) -> f64, c: usize| {
        let values: Vec<f64> = cases.iter().map(|case| f(&case[c])).collect();
        match mode {
            Mode::TransUnet => values.iter().sum::<f64>() / values.len() as f64,
            Mode::Strict => nan_mean(&values),
        }
    };
    (0..k)
        .map(|c| ClassMetrics {
            dice: mean(&|m| m.dice, c),
            jaccard: mean(&|m| m.jaccard, c),
            hd95: mean(&|m| m.hd95, c),
            asd: mean(&|m| m.asd, c),
        })
        .collect()
}

/// Mean over classes of one table row (a case, or the per-class means), with the mode's rule.
pub fn class_mean(per_class: &[ClassMetrics], mode: Mode) -> ClassMetrics {
    let rows: Vec<Vec<ClassMetrics>> = per_class.iter().map(|m| vec![*m]).collect();
    per_class_mean(&rows, mode)
        .first()
        .copied()
        .unwrap_or(ClassMetrics {
            dice: f64::NAN,
            jaccard: f64::NAN,
            hd95: f64::NAN,
            asd: f64::NAN,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_mask_rules_of_both_modes() {
        // 1D "volume" of 6 voxels; class 1 only predicted, class 2 only in the truth, class 3 absent.
        let truth = [2, 2, 0, 0, 0, 0];
        let pred = [0, 0, 1, 1, 0, 0];
        let t = evaluate_case(
            &pred,
            &truth,
            &[6],
            &[1.0],
            4,
            Mode::TransUnet,
            Hd95Mode::Pooled,
        );
        assert_eq!(
            t[0],
            ClassMetrics {
                dice: 1.0,
                jaccard: 1.0,
                hd95: 0.0,
                asd: 0.0
            }
        );
        assert_eq!(
            t[1],
            ClassMetrics {
                dice: 0.0,
                jaccard: 0.0,
                hd95: 0.0,
                asd: 0.0
            }
        );
        assert_eq!(t[2].dice, 0.0, "absent everywhere: prediction empty → 0");
        let s = evaluate_case(
            &pred,
            &truth,
            &[6],
            &[1.0],
            4,
            Mode::Strict,
            Hd95Mode::Pooled,
        );
        assert_eq!((s[0].dice, s[1].dice), (0.0, 0.0));
        assert!(s[0].hd95.is_nan() && s[1].asd.is_nan());
        assert!(s[2].dice.is_nan() && s[2].jaccard.is_nan());
        let means = per_class_mean(&[s.clone(), s], Mode::Strict);
        assert!(means[2].dice.is_nan() && means[0].dice == 0.0);
    }

    #[test]
    fn both_present_uses_medpy_values() {
        // Two 1D segments [1..4) and [2..5) with spacing 2: surfaces are the segment ends.
        let truth = [0, 1, 1, 1, 0, 0];
        let pred = [0, 0, 1, 1, 1, 0];
        let m = evaluate_case(
            &pred,
            &truth,
            &[6],
            &[2.0],
            2,
            Mode::TransUnet,
            Hd95Mode::Pooled,
        );
        assert!((m[0].dice - 2.0 * 2.0 / 6.0).abs() < 1e-12);
        assert!((m[0].jaccard - 0.5).abs() < 1e-12);
        // Directed distances: pred ends {2, 4} → truth ends {1, 3}: 2, 2; and back: 2, 2.
        assert!((m[0].hd95 - 2.0).abs() < 1e-12 && (m[0].asd - 2.0).abs() < 1e-12);
    }
}

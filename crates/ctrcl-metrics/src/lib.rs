//! ctrcl-metrics: segmentation metrics on integer label maps of any dimension (flattened), no
//! tensor framework. This first part holds the overlap metrics; the distance metrics (HD95, ASD)
//! and the evaluation modes of METHOD.md §8 extend it.

pub mod distance;
pub mod modes;

/// Per-class voxel counts of one prediction against one reference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: u64,
    pub fp: u64,
    pub fn_: u64,
}

/// Counts TP/FP/FN for every class `0..num_classes` in one pass.
///
/// Panics if the maps differ in length (a programming error: callers check shapes first).
pub fn confusion_counts(pred: &[u8], truth: &[u8], num_classes: usize) -> Vec<Counts> {
    assert_eq!(
        pred.len(),
        truth.len(),
        "prediction and truth differ in size"
    );
    let mut counts = vec![Counts::default(); num_classes];
    for (&p, &t) in pred.iter().zip(truth) {
        let (p, t) = (p as usize, t as usize);
        if p == t {
            if p < num_classes {
                counts[p].tp += 1;
            }
        } else {
            if p < num_classes {
                counts[p].fp += 1;
            }
            if t < num_classes {
                counts[t].fn_ += 1;
            }
        }
    }
    counts
}

/// Dice in TransUNet's per-case convention (`calculate_metric_percase`): prediction empty → 0;
/// prediction non-empty and truth empty → 1; otherwise 2TP/(2TP+FP+FN) (medpy `dc`).
pub fn dice_transunet(c: Counts) -> f64 {
    let pred = c.tp + c.fp;
    let truth = c.tp + c.fn_;
    if pred == 0 {
        0.0
    } else if truth == 0 {
        1.0
    } else {
        2.0 * c.tp as f64 / (2 * c.tp + c.fp + c.fn_) as f64
    }
}

/// Dice in the strict (nnU-Net) convention: NaN when both masks are empty.
pub fn dice_strict(c: Counts) -> f64 {
    let denom = 2 * c.tp + c.fp + c.fn_;
    if denom == 0 {
        f64::NAN
    } else {
        2.0 * c.tp as f64 / denom as f64
    }
}

/// Jaccard (IoU) in the strict convention: NaN when both masks are empty.
pub fn jaccard_strict(c: Counts) -> f64 {
    let denom = c.tp + c.fp + c.fn_;
    if denom == 0 {
        f64::NAN
    } else {
        c.tp as f64 / denom as f64
    }
}

/// Foreground Dice per class (classes 1..K) of one case, TransUNet convention.
pub fn foreground_dice(pred: &[u8], truth: &[u8], num_classes: usize) -> Vec<f64> {
    confusion_counts(pred, truth, num_classes)
        .into_iter()
        .skip(1)
        .map(dice_transunet)
        .collect()
}

/// Mean of the finite values (NaN-aware mean); NaN if there are none.
pub fn nan_mean(values: &[f64]) -> f64 {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_dice() {
        // truth: class 1 at 0,1,2; class 2 at 3. pred: class 1 at 1,2,3; class 2 nowhere.
        let truth = [1, 1, 1, 2, 0, 0];
        let pred = [0, 1, 1, 1, 0, 0];
        let c = confusion_counts(&pred, &truth, 3);
        assert_eq!(
            c[1],
            Counts {
                tp: 2,
                fp: 1,
                fn_: 1
            }
        );
        assert!((dice_transunet(c[1]) - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(dice_transunet(c[2]), 0.0, "empty prediction scores 0");
        assert!((jaccard_strict(c[1]) - 0.5).abs() < 1e-12);
        assert_eq!(foreground_dice(&pred, &truth, 3), vec![4.0 / 6.0, 0.0]);
    }

    #[test]
    fn empty_truth_conventions() {
        let only_pred = Counts {
            tp: 0,
            fp: 3,
            fn_: 0,
        };
        assert_eq!(dice_transunet(only_pred), 1.0);
        assert_eq!(dice_strict(only_pred), 0.0);
        assert!(dice_strict(Counts::default()).is_nan());
        assert_eq!(nan_mean(&[1.0, f64::NAN, 0.0]), 0.5);
    }
}

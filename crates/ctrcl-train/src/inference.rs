//! Slice-wise inference and Dice scores (METHOD.md §8): each slice is resized to the training
//! size, predicted, arg-maxed, resized back with nearest neighbour (or, with
//! [`Upsample::Bilinear`], its class probabilities are resized and arg-maxed at native size), and
//! the slices are stacked into a volume on which the metrics are computed.

use burn::prelude::*;
use ctrcl_data::dataset::{Dataset, Sample};
use ctrcl_data::geometry::{argmax_classes, Geometry, Upsample};
use ctrcl_data::split::Split;
use ctrcl_metrics::{confusion_counts, dice_transunet};
use ctrcl_models::Student;
use serde::Serialize;

/// Slices per forward pass at inference.
const INFERENCE_BATCH: usize = 8;

/// Foreground Dice of one student on one case.
#[derive(Debug, Clone, Serialize)]
pub struct DiceScores {
    /// Dice of classes 1..K, TransUNet per-case convention.
    pub per_class: Vec<f64>,
    /// Mean over the foreground classes.
    pub mean: f64,
}

impl DiceScores {
    pub fn from_maps(pred: &[u8], truth: &[u8], num_classes: usize) -> Self {
        DiceScores::from_per_class(
            confusion_counts(pred, truth, num_classes)
                .into_iter()
                .skip(1)
                .map(dice_transunet)
                .collect(),
        )
    }

    /// Scores from per-class Dice (classes 1..K); the mean is over those classes.
    pub fn from_per_class(per_class: Vec<f64>) -> Self {
        let mean = per_class.iter().sum::<f64>() / per_class.len().max(1) as f64;
        DiceScores { per_class, mean }
    }
}

/// Predicts label maps for square `size × size` images (arg-max of the class probabilities).
///
/// # Shapes
/// each image: `size·size` values → each prediction: `size·size` labels.
pub fn predict<B: Backend>(
    net: &Student<B>,
    images: &[&[f32]],
    size: usize,
    device: &B::Device,
) -> Vec<Vec<u8>> {
    predict_probabilities(net, images, size, device)
        .into_iter()
        .map(|p| argmax_classes(&p, p.len() / (size * size)))
        .collect()
}

/// Dice at the training size over a set of samples (validation during training).
pub fn dice_on_samples<B: Backend>(
    net: &Student<B>,
    samples: &[Sample],
    size: usize,
    num_classes: usize,
    device: &B::Device,
) -> DiceScores {
    let images: Vec<&[f32]> = samples.iter().map(|s| s.image.as_slice()).collect();
    let pred: Vec<u8> = predict(net, &images, size, device).concat();
    let truth: Vec<u8> = samples
        .iter()
        .flat_map(|s| s.label.iter().copied())
        .collect();
    DiceScores::from_maps(&pred, &truth, num_classes)
}

/// Softmax class probabilities for square `size × size` images.
///
/// # Shapes
/// each image: `size·size` values → each result: `[K, size, size]` probabilities, row-major.
pub fn predict_probabilities<B: Backend>(
    net: &Student<B>,
    images: &[&[f32]],
    size: usize,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(INFERENCE_BATCH) {
        let data: Vec<f32> = chunk.iter().flat_map(|img| img.iter().copied()).collect();
        let channels = data.len() / (chunk.len() * size * size).max(1);
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(data, [chunk.len(), channels, size, size]),
            device,
        );
        let probs = burn::tensor::activation::softmax(net.forward(x).logits, 1); // [b, K, S, S]
        let flat: Vec<f32> = probs
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("float data");
        out.extend(flat.chunks(flat.len() / chunk.len()).map(<[f32]>::to_vec));
    }
    out
}

/// Native-resolution predictions of a stack of slices.
pub struct NativePrediction {
    /// Labels, slice-major: `[n, h, w]`.
    pub labels: Vec<u8>,
    /// Softmax probabilities resized bilinearly to the native grid, `[n, K, h, w]`; empty unless
    /// they were asked for.
    pub probabilities: Vec<f32>,
}

/// Predicts native-resolution slices (`geo.h × geo.w` each) through the network's square input
/// and back (`upsample` says how), a few slices at a time so memory stays bounded on large
/// volumes.
///
/// # Shapes
/// each slice: `h·w` intensities → labels `[n, h, w]` (+ probabilities `[n, K, h, w]`).
pub fn predict_native<'a, B: Backend>(
    net: &Student<B>,
    slices: impl Iterator<Item = &'a [f32]>,
    geo: Geometry,
    background: f32,
    upsample: Upsample,
    with_probabilities: bool,
    device: &B::Device,
) -> NativePrediction {
    let mut out = NativePrediction {
        labels: Vec::new(),
        probabilities: Vec::new(),
    };
    let mut pending: Vec<Vec<f32>> = Vec::with_capacity(INFERENCE_BATCH);
    let flush = |pending: &mut Vec<Vec<f32>>, out: &mut NativePrediction| {
        let refs: Vec<&[f32]> = pending.iter().map(|v| v.as_slice()).collect();
        for p in predict_probabilities(net, &refs, geo.size, device) {
            let k = p.len() / (geo.size * geo.size);
            let native = (with_probabilities || upsample == Upsample::Bilinear)
                .then(|| geo.probabilities_to_native(&p, k));
            match (upsample, &native) {
                (Upsample::Bilinear, Some(native)) => {
                    out.labels.extend(argmax_classes(native, k));
                }
                _ => out
                    .labels
                    .extend(geo.prediction_to_native(&argmax_classes(&p, k))),
            }
            if with_probabilities {
                out.probabilities.extend(native.expect("computed above"));
            }
        }
        pending.clear();
    };
    for slice in slices {
        pending.push(geo.image_to_input(slice, background));
        if pending.len() == INFERENCE_BATCH {
            flush(&mut pending, &mut out);
        }
    }
    if !pending.is_empty() {
        flush(&mut pending, &mut out);
    }
    out
}

/// One case of a split predicted at native resolution.
pub struct CasePrediction {
    /// Index into [`Dataset::cases`].
    pub case: usize,
    /// Predicted and reference labels of the split's slices, slice-major: `[n, h, w]`.
    pub pred: Vec<u8>,
    pub truth: Vec<u8>,
    /// `[n, h, w]`.
    pub shape: [usize; 3],
    /// Voxel size along `shape`'s axes (z, y, x) in mm.
    pub spacing: [f64; 3],
    /// Binary tasks: mean |p(foreground) − reference| over the native pixels (the polyp
    /// literature's MAE); `None` with more than two classes.
    pub mae: Option<f64>,
}

/// Predicts the slices of `split` at native resolution, case by case.
pub fn predict_split<B: Backend>(
    net: &Student<B>,
    dataset: &Dataset,
    split: Split,
    size: usize,
    upsample: Upsample,
    device: &B::Device,
) -> Vec<CasePrediction> {
    dataset
        .parts(split)
        .into_iter()
        .map(|(ci, zs)| {
            let case = &dataset.cases[ci];
            let [w, h, _] = case.image.dims;
            let plane = w * h;
            let images: Vec<Vec<f32>> = zs.iter().map(|&z| case.slice_image(z)).collect();
            let binary = dataset.num_classes() == 2;
            let native = predict_native(
                net,
                images.iter().map(Vec::as_slice),
                dataset.geometry(ci, size),
                case.background,
                upsample,
                binary,
                device,
            );
            let truth: Vec<u8> = zs
                .iter()
                .flat_map(|&z| case.label[z * plane..(z + 1) * plane].iter().copied())
                .collect();
            // Probabilities are [n, 2, h, w]: the foreground map is the second plane of each slice.
            let mae = binary.then(|| {
                let error: f64 = native
                    .probabilities
                    .chunks(2 * plane)
                    .zip(truth.chunks(plane))
                    .flat_map(|(p, t)| {
                        p[plane..]
                            .iter()
                            .zip(t)
                            .map(|(&p, &t)| (f64::from(p) - f64::from(t)).abs())
                    })
                    .sum();
                error / truth.len().max(1) as f64
            });
            let pred = native.labels;
            let [sx, sy, sz] = case.image.spacing.map(f64::from);
            CasePrediction {
                case: ci,
                pred,
                truth,
                shape: [zs.len(), h, w],
                spacing: [sz, sy, sx],
                mae,
            }
        })
        .collect()
}

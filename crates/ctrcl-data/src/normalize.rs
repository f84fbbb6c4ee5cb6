//! Per-image intensity handling: the clip window and the named rules (`data.normalize`,
//! [`Intensity`]), and nnU-Net's rules by
//! channel name, whose CT statistics come from the training data's foreground and travel with a
//! run (`ChannelNorm`, recorded in run.json for `predict`).

use crate::nifti::NiftiVolume;
use serde::Deserialize;

/// Intensity normalisation applied per volume before slicing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// (x − mean) / std over the whole volume (nnU-Net's non-CT default).
    Zscore,
    /// (x − min) / (max − min) over the whole volume.
    Minmax,
    /// Values as stored (after slope/intercept).
    None,
    /// nnU-Net's rule by `dataset.json` `channel_names`: `CT` clips to the 0.5/99.5 percentiles
    /// of the training cases' foreground and z-scores with its mean and std; `noNorm` keeps the
    /// values; `rescale_to_0_1` min-max scales each image; `rgb_to_0_1` divides by 255; any other
    /// name z-scores each image. Datasets without channel names z-score.
    ChannelNames,
}

/// Intensity handling of a volume: an optional clip window (CT windowing, e.g. `[-125, 275]` HU
/// as TransUNet's Synapse), then normalisation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Intensity {
    pub clip: Option<[f32; 2]>,
    pub normalize: Normalize,
}

impl From<Normalize> for Intensity {
    fn from(normalize: Normalize) -> Self {
        Intensity {
            clip: None,
            normalize,
        }
    }
}

impl Intensity {
    /// Clips (if a window is set), then normalises `data` in place.
    pub fn apply(&self, data: &mut [f32]) {
        if let Some([lo, hi]) = self.clip {
            data.iter_mut().for_each(|v| *v = v.clamp(lo, hi));
        }
        normalize_in_place(data, self.normalize);
    }
}

/// How one channel is normalised under [`Normalize::ChannelNames`], with the CT statistics of the
/// training data: recorded with a run so that `predict` normalises new images exactly as the
/// training images were (a CT channel by the training foreground's percentiles, mean and std —
/// not by the new image's own statistics).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ChannelNorm {
    /// Clip to `[lo, hi]`, then `(v − mean) / std` (nnU-Net's CTNormalization).
    Ct {
        lo: f32,
        hi: f32,
        mean: f32,
        std: f32,
    },
    /// `noNorm`.
    None,
    /// `rescale_to_0_1`.
    Minmax,
    /// `rgb_to_0_1`.
    Rgb,
    /// Anything else: z-score per image.
    Zscore,
}

impl ChannelNorm {
    /// Normalises one channel of one image in place.
    pub fn apply(&self, channel: &mut [f32]) {
        match *self {
            ChannelNorm::Ct { lo, hi, mean, std } => channel
                .iter_mut()
                .for_each(|v| *v = (v.clamp(lo, hi) - mean) / std.max(1e-8)),
            ChannelNorm::None => {}
            ChannelNorm::Minmax => normalize_in_place(channel, Normalize::Minmax),
            ChannelNorm::Rgb => channel.iter_mut().for_each(|v| *v /= 255.0),
            ChannelNorm::Zscore => normalize_in_place(channel, Normalize::Zscore),
        }
    }
}

/// nnU-Net's per-channel normalisation (see [`Normalize::ChannelNames`]); CT statistics come from
/// the foreground voxels of the `train` cases (all slices, or the listed ones), every voxel or
/// every k-th for large volumes (at most ~100 000 per case). Returns each channel's rule.
pub(crate) fn normalize_by_channel_names(
    cases: &mut [(String, NiftiVolume, Vec<u8>)],
    names: &[String],
    train: &[(String, Option<Vec<usize>>)],
) -> Vec<ChannelNorm> {
    let mut norms = Vec::with_capacity(names.len());
    for (c, name) in names.iter().enumerate() {
        let ct = name.eq_ignore_ascii_case("CT");
        let stats = ct.then(|| {
            let mut fg: Vec<f32> = Vec::new();
            for (id, image, label) in cases.iter() {
                let Some((_, slices)) = train.iter().find(|(t, _)| t == id) else {
                    continue;
                };
                let n = label.len();
                let plane = image.slice_len();
                let mut slice_in_train = vec![slices.is_none(); image.dims[2]];
                for &z in slices.iter().flatten() {
                    slice_in_train[z] = true;
                }
                let in_train = |i: usize| slice_in_train[i / plane];
                let count = label.iter().filter(|&&l| l > 0).count();
                let stride = (count / 100_000).max(1);
                fg.extend(
                    label
                        .iter()
                        .zip(&image.data[c * n..(c + 1) * n])
                        .enumerate()
                        .filter(|(i, (&l, _))| l > 0 && in_train(*i))
                        .step_by(stride)
                        .map(|(_, (_, &v))| v),
                );
            }
            ct_statistics(&mut fg)
        });
        let norm = match (name.as_str(), stats) {
            (_, Some((lo, hi, mean, std))) => ChannelNorm::Ct { lo, hi, mean, std },
            ("noNorm", _) => ChannelNorm::None,
            ("rescale_to_0_1", _) => ChannelNorm::Minmax,
            ("rgb_to_0_1", _) => ChannelNorm::Rgb,
            _ => ChannelNorm::Zscore,
        };
        for (_, image, label) in cases.iter_mut() {
            let n = label.len();
            norm.apply(&mut image.data[c * n..(c + 1) * n]);
        }
        norms.push(norm);
    }
    norms
}

/// (0.5th percentile, 99.5th percentile, mean, std) of the clipped foreground values, as
/// nnU-Net's dataset fingerprint; identity values when there is no foreground.
fn ct_statistics(values: &mut [f32]) -> (f32, f32, f32, f32) {
    if values.is_empty() {
        return (f32::NEG_INFINITY, f32::INFINITY, 0.0, 1.0);
    }
    values.sort_by(f32::total_cmp);
    // numpy.percentile's linear interpolation.
    let pct = |q: f64| {
        let pos = q / 100.0 * (values.len() - 1) as f64;
        let (i, f) = (pos.floor() as usize, pos.fract());
        let next = values[(i + 1).min(values.len() - 1)];
        (f64::from(values[i]) * (1.0 - f) + f64::from(next) * f) as f32
    };
    let (lo, hi) = (pct(0.5), pct(99.5));
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    (lo, hi, mean as f32, var.sqrt() as f32)
}

pub fn normalize_in_place(data: &mut [f32], how: Normalize) {
    let n = data.len().max(1) as f64;
    match how {
        Normalize::None => {}
        Normalize::Zscore | Normalize::ChannelNames => {
            let mean = data.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            let std = var.sqrt().max(1e-8);
            data.iter_mut()
                .for_each(|v| *v = ((*v as f64 - mean) / std) as f32);
        }
        Normalize::Minmax => {
            let (lo, hi) = data
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let range = (hi - lo).max(1e-8);
            data.iter_mut().for_each(|v| *v = (*v - lo) / range);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_window_comes_before_normalisation() {
        // HU -1000 (air) and 1500 (bone) fall to the window edges; minmax then maps the window
        // to [0, 1]: 0 HU → 125/400.
        let mut d = vec![-1000.0, -125.0, 0.0, 275.0, 1500.0];
        Intensity {
            clip: Some([-125.0, 275.0]),
            normalize: Normalize::Minmax,
        }
        .apply(&mut d);
        assert_eq!(d, vec![0.0, 0.0, 0.3125, 1.0, 1.0]);
    }

    #[test]
    fn zscore_has_zero_mean_unit_std() {
        let mut d = vec![1.0, 2.0, 3.0, 4.0];
        normalize_in_place(&mut d, Normalize::Zscore);
        let mean: f32 = d.iter().sum::<f32>() / 4.0;
        let var: f32 = d.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 4.0;
        assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}

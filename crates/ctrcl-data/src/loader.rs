//! Training batches made in worker threads, off the training thread.
//!
//! Determinism: batch `t` depends only on (seed, t): the sample order is a per-epoch permutation
//! seeded by (seed, epoch) and each sample's augmentation is seeded by (seed, t, position), so the
//! stream is the same whatever the number of workers, and a run can restart at any step.

use crate::augment::Augmentations;
use crate::dataset::Sample;
use crossbeam_channel::{bounded, Receiver};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

/// Augmentation applied to training samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Augment {
    None,
    /// With probability 0.5: rotate by k·90° (k uniform in 0..4) then flip along a random axis
    /// (SSL4MIS `random_rot_flip`).
    Rot90Flip,
    /// TransUNet's `RandomGenerator`: with probability 0.5 `random_rot_flip`; otherwise, with
    /// probability 0.5, a rotation by an integer angle in [-20°, 20°) about the centre, nearest
    /// neighbour, zero outside (`scipy.ndimage.rotate(order=0, reshape=False)` on image and label).
    RotFlipOrRotate,
}

/// What the loader does to each training sample: the geometric `data.augment` step, then the
/// `[augmentation]` set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub geometric: Augment,
    pub extra: Augmentations,
}

impl From<Augment> for Plan {
    fn from(geometric: Augment) -> Self {
        Plan {
            geometric,
            extra: Augmentations::default(),
        }
    }
}

/// One batch: `images` is B×C×S×S row-major, `labels` is B×S×S.
pub struct Batch {
    pub step: usize,
    pub images: Vec<f32>,
    /// Image channels C.
    pub channels: usize,
    pub labels: Vec<i64>,
    pub batch: usize,
    pub size: usize,
}

/// Background producer of batches `first_step..total_steps`.
pub struct BatchLoader {
    receivers: Vec<Receiver<Batch>>,
    first: usize,
    next: usize,
    end: usize,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    // SplitMix64-style mixing so nearby (seed, a, b) give unrelated streams.
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The sample index at position `pos` of the endless epoch-shuffled stream.
fn sample_index(seed: u64, n: usize, pos: usize, cache: &mut Option<(usize, Vec<usize>)>) -> usize {
    let epoch = pos / n;
    if cache.as_ref().map(|(e, _)| *e) != Some(epoch) {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut StdRng::seed_from_u64(mix(seed, epoch as u64, 0xE)));
        *cache = Some((epoch, order));
    }
    cache.as_ref().expect("just set").1[pos % n]
}

/// Applies `augment` to a square sample.
pub fn augment_sample(
    sample: &Sample,
    size: usize,
    augment: Augment,
    rng: &mut StdRng,
) -> (Vec<f32>, Vec<u8>) {
    if augment == Augment::None {
        return (sample.image.clone(), sample.label.clone());
    }
    if rng.random::<f32>() >= 0.5 {
        if augment == Augment::RotFlipOrRotate && rng.random::<f32>() >= 0.5 {
            let angle = rng.random_range(-20..20);
            return rotate_nearest(sample, size, f64::from(angle));
        }
        return (sample.image.clone(), sample.label.clone());
    }
    let k = rng.random_range(0..4);
    let flip_rows = rng.random_range(0..2) == 0;
    // Output pixel (y, x) reads input (sy, sx): rotation by k·90° counter-clockwise (np.rot90),
    // then a flip along axis 0 (rows) or 1 (columns).
    let s = size - 1;
    let src = |y: usize, x: usize| -> usize {
        let (y, x) = if flip_rows { (s - y, x) } else { (y, s - x) };
        let (sy, sx) = match k {
            0 => (y, x),
            1 => (x, s - y),
            2 => (s - y, s - x),
            _ => (s - x, y),
        };
        sy * size + sx
    };
    let plane = size * size;
    let mut image = vec![0.0; sample.image.len()];
    let mut label = Vec::with_capacity(plane);
    for y in 0..size {
        for x in 0..size {
            let i = src(y, x);
            for (c, channel) in sample.image.chunks(plane).enumerate() {
                image[c * plane + y * size + x] = channel[i];
            }
            label.push(sample.label[i]);
        }
    }
    (image, label)
}

/// Rotates a square sample by `degrees` about its centre as `scipy.ndimage.rotate(x, degrees,
/// order=0, reshape=False)` does: output (y, x) reads input (row, col) = R·(out − c) + c with
/// R = [[cos, sin], [−sin, cos]], rounded to the nearest pixel; 0 where that point falls outside
/// [0, size − 1] (scipy's `mode="constant"`).
pub fn rotate_nearest(sample: &Sample, size: usize, degrees: f64) -> (Vec<f32>, Vec<u8>) {
    let (sin, cos) = degrees.to_radians().sin_cos();
    let c = (size as f64 - 1.0) / 2.0;
    // scipy evaluates cos/sin in degrees exactly; this slack absorbs f64's cos(90°) ≈ 6e-17.
    let (lo, hi) = (-1e-9, size as f64 - 1.0 + 1e-9);
    let plane = size * size;
    let mut image = vec![0.0f32; sample.image.len()];
    let mut label = vec![0u8; plane];
    for y in 0..size {
        for x in 0..size {
            let (dy, dx) = (y as f64 - c, x as f64 - c);
            let vy = cos * dy + sin * dx + c;
            let vx = -sin * dy + cos * dx + c;
            if (lo..=hi).contains(&vy) && (lo..=hi).contains(&vx) {
                let sy = ((vy + 0.5).floor() as usize).min(size - 1);
                let sx = ((vx + 0.5).floor() as usize).min(size - 1);
                let i = sy * size + sx;
                for (ch, channel) in sample.image.chunks(plane).enumerate() {
                    image[ch * plane + y * size + x] = channel[i];
                }
                label[y * size + x] = sample.label[i];
            }
        }
    }
    (image, label)
}

/// Builds batch `step` deterministically.
pub fn make_batch(
    samples: &[Sample],
    size: usize,
    batch: usize,
    step: usize,
    seed: u64,
    plan: impl Into<Plan>,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> Batch {
    let plan = plan.into();
    let mut images = Vec::with_capacity(batch * size * size);
    let mut labels = Vec::with_capacity(batch * size * size);
    for b in 0..batch {
        let idx = sample_index(seed, samples.len(), step * batch + b, cache);
        let mut rng = StdRng::seed_from_u64(mix(seed, step as u64 + 1, b as u64 + 1));
        let (mut img, mut lab) = augment_sample(&samples[idx], size, plan.geometric, &mut rng);
        // The extra set draws from its own stream, so turning it on leaves data.augment's draws
        // (and older runs' batches) unchanged.
        let mut extra_rng = StdRng::seed_from_u64(mix(seed, step as u64 + 1, (b as u64 + 1) << 32));
        plan.extra.apply(&mut img, &mut lab, size, &mut extra_rng);
        images.extend(img);
        labels.extend(lab.into_iter().map(|v| v as i64));
    }
    Batch {
        step,
        channels: images.len() / (batch * size * size).max(1),
        images,
        labels,
        batch,
        size,
    }
}

impl BatchLoader {
    /// Starts `workers` threads producing batches for steps `first_step..end_step`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        samples: Arc<Vec<Sample>>,
        size: usize,
        batch: usize,
        seed: u64,
        plan: impl Into<Plan>,
        first_step: usize,
        end_step: usize,
        workers: usize,
    ) -> Self {
        assert!(!samples.is_empty(), "no training samples");
        let plan = plan.into();
        let workers = workers.max(1);
        let mut receivers = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = bounded(2);
            let samples = Arc::clone(&samples);
            std::thread::spawn(move || {
                let mut cache = None;
                // Worker w makes the steps congruent to w modulo the worker count.
                let mut step = first_step + w;
                while step < end_step {
                    let b = make_batch(&samples, size, batch, step, seed, plan, &mut cache);
                    if tx.send(b).is_err() {
                        return; // the trainer stopped early
                    }
                    step += workers;
                }
            });
            receivers.push(rx);
        }
        BatchLoader {
            receivers,
            first: first_step,
            next: first_step,
            end: end_step,
        }
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let w = self.receivers.len();
        let batch = self.receivers[(self.next - self.first) % w].recv().ok();
        self.next += 1;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy's `ndimage.rotate(order=0, reshape=False)` of a 7×7 ramp 1..49
    /// (`scripts/reference/rotate_reference.py`): exact match, labels and image alike.
    #[test]
    fn rotation_matches_scipy_nearest() {
        let cases: [(f64, [u8; 49]); 3] = [
            (
                15.0,
                [
                    0, 0, 0, 5, 6, 14, 0, 2, 10, 11, 12, 12, 20, 0, 8, 16, 17, 18, 19, 27, 0, 15,
                    16, 24, 25, 26, 34, 35, 0, 23, 31, 32, 33, 34, 42, 0, 30, 38, 38, 39, 40, 48,
                    0, 36, 44, 45, 0, 0, 0,
                ],
            ),
            (
                -20.0,
                [
                    0, 8, 9, 3, 0, 0, 0, 0, 15, 9, 10, 11, 5, 6, 0, 23, 17, 18, 19, 13, 13, 29, 30,
                    24, 25, 26, 20, 21, 37, 37, 31, 32, 33, 27, 0, 44, 45, 39, 40, 41, 35, 0, 0, 0,
                    0, 47, 41, 42, 0,
                ],
            ),
            (
                90.0,
                [
                    7, 14, 21, 28, 35, 42, 49, 6, 13, 20, 27, 34, 41, 48, 5, 12, 19, 26, 33, 40,
                    47, 4, 11, 18, 25, 32, 39, 46, 3, 10, 17, 24, 31, 38, 45, 2, 9, 16, 23, 30, 37,
                    44, 1, 8, 15, 22, 29, 36, 43,
                ],
            ),
        ];
        let sample = Sample {
            image: (1..=49).map(|v| v as f32).collect(),
            label: (1..=49).collect(),
        };
        for (angle, want) in cases {
            let (image, label) = rotate_nearest(&sample, 7, angle);
            assert_eq!(label, want.to_vec(), "{angle}°");
            let want_image: Vec<f32> = want.iter().map(|&v| f32::from(v)).collect();
            assert_eq!(image, want_image, "{angle}°");
        }
    }

    fn samples(n: usize, size: usize) -> Vec<Sample> {
        (0..n)
            .map(|i| Sample {
                image: (0..size * size).map(|p| (i * 1000 + p) as f32).collect(),
                label: (0..size * size).map(|p| (p % 3) as u8).collect(),
            })
            .collect()
    }

    #[test]
    fn stream_is_independent_of_worker_count_and_start() {
        let data = Arc::new(samples(5, 4));
        let one: Vec<_> = BatchLoader::start(data.clone(), 4, 3, 7, Augment::Rot90Flip, 0, 6, 1)
            .map(|b| b.images)
            .collect();
        let three: Vec<_> = BatchLoader::start(data.clone(), 4, 3, 7, Augment::Rot90Flip, 0, 6, 3)
            .map(|b| b.images)
            .collect();
        let resumed: Vec<_> = BatchLoader::start(data, 4, 3, 7, Augment::Rot90Flip, 2, 6, 2)
            .map(|b| b.images)
            .collect();
        assert_eq!(one.len(), 6);
        assert_eq!(one, three);
        assert_eq!(&one[2..], &resumed[..]);
    }

    #[test]
    fn each_epoch_visits_every_sample_once() {
        let data = samples(6, 2);
        let mut cache = None;
        let mut seen: Vec<usize> = (0..6)
            .map(|p| sample_index(3, 6, 6 + p, &mut cache))
            .collect();
        seen.sort();
        assert_eq!(seen, (0..6).collect::<Vec<_>>());
        assert_eq!(data.len(), 6);
    }

    #[test]
    fn augmentation_moves_image_and_label_together() {
        let size = 5;
        let s = Sample {
            image: (0..25).map(|p| p as f32).collect(),
            label: (0..25).map(|p| p as u8).collect(),
        };
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (img, lab) = augment_sample(&s, size, Augment::Rot90Flip, &mut rng);
            assert!(img.iter().zip(&lab).all(|(i, l)| *i as u8 == *l));
            let mut sorted = lab.clone();
            sorted.sort();
            assert_eq!(sorted, s.label, "a permutation of the pixels");
        }
    }
}

//! Training batches made in worker threads, off the training thread.
//!
//! Determinism: batch `t` depends only on (seed, t): the sample order is a per-epoch permutation
//! seeded by (seed, epoch), a foreground-forced position's class and slice are drawn from a stream
//! seeded by (seed, t, position), and each sample's augmentation is seeded by (seed, t, position),
//! so the stream is the same whatever the number of workers, and a run can restart at any step.
//!
//! Foreground oversampling (`data.foreground_oversample`, nnU-Net's `oversample_foreground_percent`):
//! the last `B − round(B·(1 − p))` positions of every batch (nnU-Net's `get_do_oversample`) hold a
//! training slice that contains a foreground class chosen uniformly among the classes present in
//! the training slices, so a structure found in few slices is seen as often as a common one. The
//! other positions follow the epoch permutation exactly as without oversampling (`p = 0` gives the
//! same batches as before the option existed).

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

/// What the loader does: which samples fill a batch (`foreground`: the share of each batch forced
/// to contain a foreground class, 0 ≤ p ≤ 1), then to each sample the geometric `data.augment`
/// step and the `[augmentation]` set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub geometric: Augment,
    pub extra: Augmentations,
    pub foreground: f64,
}

impl From<Augment> for Plan {
    fn from(geometric: Augment) -> Self {
        Plan {
            geometric,
            extra: Augmentations::default(),
            foreground: 0.0,
        }
    }
}

/// The training slices holding each foreground class: what a forced position draws from.
#[derive(Debug, Clone, Default)]
pub struct ForegroundIndex {
    /// `(class, indices of the samples containing it)` for every class > 0 present, ascending.
    pub classes: Vec<(u8, Vec<usize>)>,
}

impl ForegroundIndex {
    pub fn new(samples: &[Sample]) -> Self {
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); 256];
        for (i, s) in samples.iter().enumerate() {
            let mut present = [false; 256];
            s.label.iter().for_each(|&l| present[l as usize] = true);
            for (c, _) in present.iter().enumerate().skip(1).filter(|(_, p)| **p) {
                by_class[c].push(i);
            }
        }
        ForegroundIndex {
            classes: by_class
                .into_iter()
                .enumerate()
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| (c as u8, v))
                .collect(),
        }
    }
}

/// How many positions of a batch of `batch` are forced to hold foreground at share `p`: nnU-Net's
/// `not sample_idx < round(batch_size * (1 - oversample_foreground_percent))`.
pub fn forced_positions(batch: usize, p: f64) -> usize {
    // Python's round() rounds halves to even; so does this.
    let keep = (batch as f64 * (1.0 - p)).round_ties_even() as usize;
    batch - keep.min(batch)
}

/// One batch: `images` is B×C×S×S row-major, `labels` is B×S×S.
pub struct Batch {
    pub step: usize,
    pub images: Vec<f32>,
    /// Image channels C.
    pub channels: usize,
    pub labels: Vec<i64>,
    /// Samples in the batch (N of the `[N, C, size, size]` images).
    pub batch_size: usize,
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

/// The sample at position `b` of batch `step`: a forced position draws a class present in the
/// training slices, then one of its slices; any other follows the epoch permutation.
#[allow(clippy::too_many_arguments)]
fn batch_sample(
    samples: usize,
    batch: usize,
    step: usize,
    b: usize,
    seed: u64,
    plan: &Plan,
    foreground: &ForegroundIndex,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> usize {
    let forced = b >= batch - forced_positions(batch, plan.foreground);
    if forced && !foreground.classes.is_empty() {
        // Its own stream, so forcing leaves the augmentation draws of every position unchanged.
        let mut rng = StdRng::seed_from_u64(mix(seed, step as u64 + 1, (b as u64 + 1) << 48));
        let (_, slices) = &foreground.classes[rng.random_range(0..foreground.classes.len())];
        return slices[rng.random_range(0..slices.len())];
    }
    sample_index(seed, samples, step * batch + b, cache)
}

/// Builds batch `step` deterministically (`foreground` indexes `samples`; it is only read when
/// `plan.foreground > 0`).
#[allow(clippy::too_many_arguments)]
pub fn make_batch(
    samples: &[Sample],
    size: usize,
    batch: usize,
    step: usize,
    seed: u64,
    plan: impl Into<Plan>,
    foreground: &ForegroundIndex,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> Batch {
    let plan = plan.into();
    let mut images = Vec::with_capacity(batch * size * size);
    let mut labels = Vec::with_capacity(batch * size * size);
    for b in 0..batch {
        let idx = batch_sample(
            samples.len(),
            batch,
            step,
            b,
            seed,
            &plan,
            foreground,
            cache,
        );
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
        batch_size: batch,
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
        let foreground = Arc::new(if plan.foreground > 0.0 {
            ForegroundIndex::new(&samples)
        } else {
            ForegroundIndex::default()
        });
        let mut receivers = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = bounded(2);
            let samples = Arc::clone(&samples);
            let foreground = Arc::clone(&foreground);
            std::thread::spawn(move || {
                let mut cache = None;
                // Worker w makes the steps congruent to w modulo the worker count.
                let mut step = first_step + w;
                while step < end_step {
                    let b = make_batch(
                        &samples,
                        size,
                        batch,
                        step,
                        seed,
                        plan,
                        &foreground,
                        &mut cache,
                    );
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

    /// 20 slices: class 1 in every one, class 2 in slices 3 and 11 only, class 3 in slice 17 only.
    fn rare_classes() -> Vec<Sample> {
        (0..20)
            .map(|i| {
                let mut label = vec![0u8; 16];
                label[0] = 1;
                if i == 3 || i == 11 {
                    label[5] = 2;
                }
                if i == 17 {
                    label[9] = 3;
                }
                Sample {
                    image: vec![i as f32; 16],
                    label,
                }
            })
            .collect()
    }

    #[test]
    fn forced_positions_follow_nnunets_rounding() {
        // nnU-Net: positions b with not b < round(B·(1 − p)), Python's round (halves to even).
        assert_eq!(forced_positions(8, 0.33), 3); // round(5.36) = 5
        assert_eq!(forced_positions(2, 0.33), 1); // round(1.34) = 1
        assert_eq!(forced_positions(4, 0.5), 2);
        assert_eq!(forced_positions(5, 0.5), 3); // round(2.5) = 2
        assert_eq!(forced_positions(8, 0.0), 0);
        assert_eq!(forced_positions(8, 1.0), 8);
    }

    #[test]
    fn foreground_oversampling_shows_rare_classes_as_often_as_common_ones() {
        let data = rare_classes();
        let index = ForegroundIndex::new(&data);
        assert_eq!(
            index.classes,
            vec![(1, (0..20).collect()), (2, vec![3, 11]), (3, vec![17])]
        );
        let plan = Plan {
            foreground: 0.33,
            ..Plan::from(Augment::None)
        };
        let (batch, steps) = (8, 600);
        let mut cache = None;
        let mut forced_with = [0usize; 4];
        let mut unforced_rare = 0;
        for step in 0..steps {
            let b = make_batch(&data, 4, batch, step, 5, plan, &index, &mut cache);
            for (pos, image) in b.images.chunks(16).enumerate() {
                let slice = image[0] as usize;
                let has = |c: u8| data[slice].label.contains(&c);
                if pos >= 5 {
                    for (c, count) in forced_with.iter_mut().enumerate().skip(1) {
                        *count += has(c as u8) as usize;
                    }
                } else {
                    unforced_rare += (has(2) || has(3)) as usize;
                }
            }
        }
        // Each of the 3 forced positions draws class 3 (one slice in 20) with probability 1/3:
        // 600 steps × 3 × 1/3 = 600 expected (binomial sd ≈ 20); without forcing, 1/20 of them.
        assert!((520..=680).contains(&forced_with[3]), "{forced_with:?}");
        assert!((520..=680).contains(&forced_with[2]), "{forced_with:?}");
        assert_eq!(forced_with[1], steps * 3, "class 1 is in every slice");
        // The other positions keep the epoch order: 3 of 20 slices hold a rare class.
        let share = unforced_rare as f64 / (steps * 5) as f64;
        assert!((share - 0.15).abs() < 0.01, "{share}");
    }

    #[test]
    fn oversampled_stream_is_deterministic_resumable_and_unchanged_at_zero() {
        let data = Arc::new(rare_classes());
        let plan = Plan {
            foreground: 0.5,
            ..Plan::from(Augment::Rot90Flip)
        };
        let run = |first: usize, workers: usize, plan: Plan| -> Vec<Vec<f32>> {
            BatchLoader::start(data.clone(), 4, 4, 9, plan, first, 12, workers)
                .map(|b| b.images)
                .collect()
        };
        let one = run(0, 1, plan);
        assert_eq!(one, run(0, 3, plan));
        assert_eq!(&one[5..], &run(5, 2, plan)[..]);
        let off = run(0, 1, Plan::from(Augment::Rot90Flip));
        assert_ne!(one, off, "forcing changes the forced positions");
        // At 0 the batches are the epoch order's (computed here without the index).
        let mut cache = None;
        for (step, images) in off.iter().enumerate() {
            for (b, image) in images.chunks(16).enumerate() {
                let want = sample_index(9, 20, step * 4 + b, &mut cache);
                // rot90-flip permutes pixels; every pixel of sample i holds the value i.
                assert!(
                    image.iter().all(|&v| v == want as f32),
                    "step {step} pos {b}"
                );
            }
        }
        // Unforced positions (0 and 1 of 4 at 0.5) are the same with and without forcing.
        for (a, b) in one.iter().zip(&off) {
            assert_eq!(a[..32], b[..32]);
        }
    }
}

//! Augmentations beyond rot90/flip, each applied with its own probability and range
//! (`[augmentation]` in the config; all off by default): spatial (rotation, scaling, elastic
//! deformation: bilinear for images, nearest for labels) and intensity (brightness, contrast,
//! gamma, Gaussian noise, Gaussian blur: images only). Ranges follow batchgenerators / nnU-Net.
//! They run after `data.augment` on the square training-size sample, seeded per sample, so the
//! batch stream stays a function of (seed, step).

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// An augmentation applied with probability `p`, its parameter drawn uniformly from `range`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranged {
    pub p: f64,
    pub range: [f64; 2],
}

impl Ranged {
    const fn off(range: [f64; 2]) -> Self {
        Ranged { p: 0.0, range }
    }

    /// The drawn parameter, or `None` when the augmentation is skipped for this sample.
    fn draw(&self, rng: &mut StdRng) -> Option<f64> {
        // Always consume the same draws, so enabling one augmentation does not reshuffle the
        // others' random streams.
        let hit = rng.random::<f64>() < self.p;
        let t = rng.random::<f64>();
        hit.then(|| self.range[0] + t * (self.range[1] - self.range[0]))
    }
}

/// Elastic deformation: displacement fields of uniform noise in [-1, 1] smoothed by a Gaussian
/// of `sigma` pixels and scaled by `alpha` pixels (Simard et al., as batchgenerators).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Elastic {
    pub p: f64,
    pub alpha: f64,
    pub sigma: f64,
}

/// The `[augmentation]` config section.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Augmentations {
    /// Rotation angle in degrees.
    pub rotate: Ranged,
    /// Zoom factor (> 1 enlarges the content).
    pub scale: Ranged,
    pub elastic: Elastic,
    /// Multiplicative brightness factor.
    pub brightness: Ranged,
    /// Contrast factor about the mean, range of values preserved.
    pub contrast: Ranged,
    /// Gamma on the [min, max]-rescaled image.
    pub gamma: Ranged,
    /// Standard deviation of additive Gaussian noise.
    pub noise: Ranged,
    /// Gaussian blur sigma in pixels.
    pub blur: Ranged,
}

impl Default for Augmentations {
    fn default() -> Self {
        Augmentations {
            rotate: Ranged::off([-15.0, 15.0]),
            scale: Ranged::off([0.85, 1.25]),
            elastic: Elastic {
                p: 0.0,
                alpha: 30.0,
                sigma: 4.0,
            },
            brightness: Ranged::off([0.75, 1.25]),
            contrast: Ranged::off([0.75, 1.25]),
            gamma: Ranged::off([0.7, 1.5]),
            noise: Ranged::off([0.0, 0.1]),
            blur: Ranged::off([0.5, 1.0]),
        }
    }
}

impl Augmentations {
    /// Checks probabilities and ranges; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let ranged = [
            ("rotate", self.rotate),
            ("scale", self.scale),
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("gamma", self.gamma),
            ("noise", self.noise),
            ("blur", self.blur),
        ];
        for (name, r) in ranged {
            if !(0.0..=1.0).contains(&r.p) {
                return Err(format!(
                    "augmentation.{name}.p must be in [0, 1], got {}",
                    r.p
                ));
            }
            if r.range[0]
                .partial_cmp(&r.range[1])
                .is_none_or(|o| o.is_gt())
            {
                return Err(format!(
                    "augmentation.{name}.range must be [low, high], got {:?}",
                    r.range
                ));
            }
        }
        for (name, r) in [("scale", self.scale), ("gamma", self.gamma)] {
            if r.range[0] <= 0.0 {
                return Err(format!("augmentation.{name}.range must be positive"));
            }
        }
        for (name, r) in [("noise", self.noise), ("blur", self.blur)] {
            if r.range[0] < 0.0 {
                return Err(format!("augmentation.{name}.range must be non-negative"));
            }
        }
        let e = self.elastic;
        if !(0.0..=1.0).contains(&e.p) || e.alpha < 0.0 || e.sigma <= 0.0 {
            return Err("augmentation.elastic needs p in [0, 1], alpha >= 0, sigma > 0".into());
        }
        Ok(())
    }

    /// Applies the enabled augmentations to a `[C, size, size]` image and its labels.
    pub fn apply(&self, image: &mut Vec<f32>, label: &mut Vec<u8>, size: usize, rng: &mut StdRng) {
        let angle = self.rotate.draw(rng);
        let zoom = self.scale.draw(rng);
        if angle.is_some() || zoom.is_some() {
            let (sin, cos) = angle.unwrap_or(0.0).to_radians().sin_cos();
            let s = zoom.unwrap_or(1.0);
            let c = (size as f64 - 1.0) / 2.0;
            // Output (y, x) reads input c + R(θ)ᵀ (p − c) / s.
            warp(image, label, size, |y, x| {
                let (dy, dx) = ((y - c) / s, (x - c) / s);
                (c + cos * dy + sin * dx, c - sin * dy + cos * dx)
            });
        }
        let elastic = (rng.random::<f64>() < self.elastic.p).then(|| {
            let field = |rng: &mut StdRng| {
                let noise: Vec<f32> = (0..size * size)
                    .map(|_| rng.random_range(-1.0f32..1.0))
                    .collect();
                gaussian_blur(&noise, size, self.elastic.sigma)
            };
            (field(rng), field(rng))
        });
        if let Some((fy, fx)) = elastic {
            let a = self.elastic.alpha;
            warp(image, label, size, |y, x| {
                let i = y as usize * size + x as usize;
                (y + a * f64::from(fy[i]), x + a * f64::from(fx[i]))
            });
        }
        let plane = size * size;
        if let Some(f) = self.brightness.draw(rng) {
            image.iter_mut().for_each(|v| *v *= f as f32);
        }
        if let Some(f) = self.contrast.draw(rng) {
            for ch in image.chunks_mut(plane) {
                let (lo, hi) = min_max(ch);
                let mean = ch.iter().sum::<f32>() / ch.len() as f32;
                ch.iter_mut()
                    .for_each(|v| *v = ((*v - mean) * f as f32 + mean).clamp(lo, hi));
            }
        }
        if let Some(g) = self.gamma.draw(rng) {
            for ch in image.chunks_mut(plane) {
                let (lo, hi) = min_max(ch);
                let range = (hi - lo).max(1e-7);
                ch.iter_mut()
                    .for_each(|v| *v = ((*v - lo) / range).powf(g as f32) * range + lo);
            }
        }
        if let Some(std) = self.noise.draw(rng) {
            image
                .iter_mut()
                .for_each(|v| *v += std as f32 * standard_normal(rng));
        }
        if let Some(sigma) = self.blur.draw(rng) {
            if sigma > 0.0 {
                let blurred: Vec<f32> = image
                    .chunks(plane)
                    .flat_map(|ch| gaussian_blur(ch, size, sigma))
                    .collect();
                *image = blurred;
            }
        }
    }
}

fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut StdRng) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// Resamples image (bilinear, every channel) and labels (nearest) through `source(y, x)`, the
/// input position each output pixel reads; outside the input: the image's minimum, label 0.
fn warp(
    image: &mut Vec<f32>,
    label: &mut Vec<u8>,
    size: usize,
    source: impl Fn(f64, f64) -> (f64, f64),
) {
    let plane = size * size;
    let fill: Vec<f32> = image.chunks(plane).map(|ch| min_max(ch).0).collect();
    let mut out_image = vec![0.0f32; image.len()];
    let mut out_label = vec![0u8; plane];
    let last = size as f64 - 1.0;
    for y in 0..size {
        for x in 0..size {
            let o = y * size + x;
            let (sy, sx) = source(y as f64, x as f64);
            // A hair of slack: cos(90°) is 6e-17 in f64, and edge pixels must not fall off.
            let edge = -1e-6..=last + 1e-6;
            if !(edge.contains(&sy) && edge.contains(&sx)) {
                for (c, f) in fill.iter().enumerate() {
                    out_image[c * plane + o] = *f;
                }
                continue;
            }
            let (sy, sx) = (sy.clamp(0.0, last), sx.clamp(0.0, last));
            out_label[o] = label[(sy.round() as usize) * size + sx.round() as usize];
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(size - 1), (x0 + 1).min(size - 1));
            let (wy, wx) = ((sy - y0 as f64) as f32, (sx - x0 as f64) as f32);
            for (c, ch) in image.chunks(plane).enumerate() {
                let at = |yy: usize, xx: usize| ch[yy * size + xx];
                let top = at(y0, x0) * (1.0 - wx) + at(y0, x1) * wx;
                let bottom = at(y1, x0) * (1.0 - wx) + at(y1, x1) * wx;
                out_image[c * plane + o] = top * (1.0 - wy) + bottom * wy;
            }
        }
    }
    *image = out_image;
    *label = out_label;
}

/// Separable Gaussian blur of a `size × size` plane (kernel radius 4σ, normalised; edges
/// reflected as scipy's default `mode="reflect"`).
pub fn gaussian_blur(plane: &[f32], size: usize, sigma: f64) -> Vec<f32> {
    let radius = (4.0 * sigma).round().max(1.0) as isize;
    let kernel: Vec<f64> = (-radius..=radius)
        .map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f64 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| (k / total) as f32).collect();
    let n = size as isize;
    // scipy "reflect": (d c b a | a b c d | d c b a).
    let reflect = |mut i: isize| loop {
        if i < 0 {
            i = -i - 1;
        } else if i >= n {
            i = 2 * n - i - 1;
        } else {
            return i as usize;
        }
    };
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0f32; src.len()];
        for y in 0..size {
            for x in 0..size {
                let mut acc = 0.0f32;
                for (k, w) in kernel.iter().enumerate() {
                    let d = k as isize - radius;
                    let (yy, xx) = if horizontal {
                        (y, reflect(x as isize + d))
                    } else {
                        (reflect(y as isize + d), x)
                    };
                    acc += w * src[yy * size + xx];
                }
                out[y * size + x] = acc;
            }
        }
        out
    };
    pass(&pass(plane, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ramp(size: usize) -> (Vec<f32>, Vec<u8>) {
        let image = (0..size * size).map(|i| i as f32).collect();
        let label = (0..size * size).map(|i| (i % 3) as u8).collect();
        (image, label)
    }

    fn only(f: impl FnOnce(&mut Augmentations)) -> Augmentations {
        let mut a = Augmentations::default();
        f(&mut a);
        a
    }

    #[test]
    fn everything_off_changes_nothing_and_zero_warp_is_identity() {
        let (mut image, mut label) = ramp(9);
        let (i0, l0) = (image.clone(), label.clone());
        let mut rng = StdRng::seed_from_u64(1);
        Augmentations::default().apply(&mut image, &mut label, 9, &mut rng);
        assert_eq!((&image, &label), (&i0, &l0));
        // Rotation by 0° at scale 1 (p = 1) resamples exactly onto the grid.
        let a = only(|a| {
            a.rotate = Ranged {
                p: 1.0,
                range: [0.0, 0.0],
            };
            a.scale = Ranged {
                p: 1.0,
                range: [1.0, 1.0],
            };
        });
        a.apply(&mut image, &mut label, 9, &mut rng);
        assert_eq!((&image, &label), (&i0, &l0));
    }

    #[test]
    fn a_quarter_turn_is_rot90_and_labels_stay_labels() {
        let size = 7;
        let (mut image, mut label) = ramp(size);
        let (i0, l0) = (image.clone(), label.clone());
        let a = only(|a| {
            a.rotate = Ranged {
                p: 1.0,
                range: [90.0, 90.0],
            }
        });
        a.apply(&mut image, &mut label, size, &mut StdRng::seed_from_u64(2));
        // Output (y, x) reads (c + (x − c), c − (y − c)) = (x, s − y): numpy's rot90 clockwise
        // counterpart; every value moved, none invented.
        for y in 0..size {
            for x in 0..size {
                let src = x * size + (size - 1 - y);
                assert!((image[y * size + x] - i0[src]).abs() < 1e-3, "({y}, {x})");
                assert_eq!(label[y * size + x], l0[src]);
            }
        }
    }

    #[test]
    fn intensity_augmentations_do_what_they_say() {
        let size = 8;
        let base: Vec<f32> = (0..64).map(|i| (i as f32) / 63.0).collect();
        let label = vec![1u8; 64];
        let run = |a: Augmentations| {
            let (mut i, mut l) = (base.clone(), label.clone());
            a.apply(&mut i, &mut l, size, &mut StdRng::seed_from_u64(3));
            assert_eq!(l, label, "intensity augmentations leave labels alone");
            i
        };
        let b = run(only(|a| {
            a.brightness = Ranged {
                p: 1.0,
                range: [1.5, 1.5],
            }
        }));
        assert!(b.iter().zip(&base).all(|(x, y)| (x - 1.5 * y).abs() < 1e-6));
        // Contrast 0 collapses onto the mean; range preserved.
        let c = run(only(|a| {
            a.contrast = Ranged {
                p: 1.0,
                range: [0.0, 0.0],
            }
        }));
        assert!(c.iter().all(|v| (v - 0.5).abs() < 1e-5));
        // Gamma 2 on [0, 1] data squares it.
        let g = run(only(|a| {
            a.gamma = Ranged {
                p: 1.0,
                range: [2.0, 2.0],
            }
        }));
        assert!(g.iter().zip(&base).all(|(x, y)| (x - y * y).abs() < 1e-5));
        // Noise of std 0.1: residual std near 0.1.
        let n = run(only(|a| {
            a.noise = Ranged {
                p: 1.0,
                range: [0.1, 0.1],
            }
        }));
        let resid: Vec<f32> = n.iter().zip(&base).map(|(x, y)| x - y).collect();
        let std = (resid.iter().map(|r| r * r).sum::<f32>() / 64.0).sqrt();
        assert!((0.05..0.15).contains(&std), "{std}");
    }

    #[test]
    fn blur_keeps_mass_and_matches_the_gaussian_kernel() {
        // A centred delta spreads into the normalised kernel: sums to 1, peak e^0 / Σ.
        let size = 15;
        let mut delta = vec![0.0f32; size * size];
        delta[7 * size + 7] = 1.0;
        let out = gaussian_blur(&delta, size, 1.0);
        let total: f32 = out.iter().sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let k: f64 = (-4..=4).map(|i: i32| (-(i * i) as f64 / 2.0).exp()).sum();
        assert!((f64::from(out[7 * size + 7]) - 1.0 / (k * k)).abs() < 1e-6);
    }

    #[test]
    fn elastic_moves_pixels_but_keeps_the_label_set() {
        let size = 16;
        let (mut image, mut label) = ramp(size);
        let a = only(|a| {
            a.elastic = Elastic {
                p: 1.0,
                alpha: 3.0,
                sigma: 2.0,
            }
        });
        let i0 = image.clone();
        a.apply(&mut image, &mut label, size, &mut StdRng::seed_from_u64(4));
        assert_ne!(image, i0);
        assert!(label.iter().all(|&l| l < 3));
        assert!(a.validate().is_ok());
        let bad = only(|a| {
            a.gamma = Ranged {
                p: 2.0,
                range: [1.0, 1.0],
            }
        });
        assert!(bad.validate().unwrap_err().contains("augmentation.gamma.p"));
    }
}

//! How a native slice maps to the network's square input and a prediction back: centred padding
//! to a square, then resizing (bilinear or cubic B-spline for images, nearest for labels), and
//! the way back (nearest on labels, or bilinear on class probabilities, then arg-max).

use crate::resize::{crop_from_square, pad_to_square, resize_bilinear, resize_nearest};
use serde::Deserialize;

/// How a prediction at the training size returns to the native grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upsample {
    /// Arg-max at the training size, then the label map resized with nearest neighbour: what
    /// TransUNet's and SSL4MIS's `test_single_volume` do, so published tables are comparable.
    #[default]
    Nearest,
    /// Class probabilities resized bilinearly to the native grid, arg-max there: smoother
    /// boundaries, much better on thin structures (CSF) when the training size is coarse.
    Bilinear,
}

/// How images are resized to the network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageResize {
    /// Bilinear, PyTorch's `interpolate(align_corners=False)` convention.
    #[default]
    Bilinear,
    /// Cubic B-spline, `scipy.ndimage.zoom(order=3)`: TransUNet's and Swin-Unet's image resize.
    Spline3,
}

/// How native slices map to the network's square input and back: centred zero-padding to a
/// square, then resizing (`image_resize` for images, nearest for labels).
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub h: usize,
    pub w: usize,
    pub size: usize,
    pub image_resize: ImageResize,
}

impl Geometry {
    fn side(&self) -> usize {
        self.h.max(self.w)
    }

    /// Native image → `size × size`, padding with `fill`, channel by channel.
    ///
    /// # Shapes
    /// `image`: `[C, h, w]` → `[C, size, size]` (C = 1 for grey images).
    pub fn image_to_input(&self, image: &[f32], fill: f32) -> Vec<f32> {
        image
            .chunks(self.h * self.w)
            .flat_map(|plane| {
                let sq = pad_to_square(plane, self.h, self.w, self.side(), fill);
                let side = self.side();
                match self.image_resize {
                    ImageResize::Bilinear => resize_bilinear(&sq, side, side, self.size, self.size),
                    ImageResize::Spline3 => {
                        crate::resize::resize_spline3(&sq, side, side, self.size, self.size)
                    }
                }
            })
            .collect()
    }

    /// Native labels → `size × size` (nearest).
    pub fn label_to_input(&self, label: &[u8]) -> Vec<u8> {
        let sq = pad_to_square(label, self.h, self.w, self.side(), 0);
        resize_nearest(&sq, self.side(), self.side(), self.size, self.size)
    }

    /// A `size × size` predicted label map → native `h × w` (nearest, then crop).
    pub fn prediction_to_native(&self, pred: &[u8]) -> Vec<u8> {
        let sq = resize_nearest(pred, self.size, self.size, self.side(), self.side());
        crop_from_square(&sq, self.side(), self.h, self.w)
    }

    /// `k` class maps at `size × size` → `k` maps at native `h × w` (bilinear, then crop).
    ///
    /// # Shapes
    /// `probs`: `[k, size, size]` → `[k, h, w]`, row-major.
    pub fn probabilities_to_native(&self, probs: &[f32], k: usize) -> Vec<f32> {
        let plane = self.size * self.size;
        assert_eq!(
            probs.len(),
            k * plane,
            "probability maps and shape disagree"
        );
        let mut out = Vec::with_capacity(k * self.h * self.w);
        for class in probs.chunks(plane) {
            let sq = resize_bilinear(class, self.size, self.size, self.side(), self.side());
            out.extend(crop_from_square(&sq, self.side(), self.h, self.w));
        }
        out
    }
}

/// Label per pixel from `k` class maps (the first class wins ties, as `torch.argmax`).
///
/// # Shapes
/// `maps`: `[k, n]` row-major → `n` labels.
pub fn argmax_classes(maps: &[f32], k: usize) -> Vec<u8> {
    let n = maps.len() / k.max(1);
    let mut best = maps[..n].to_vec();
    let mut labels = vec![0u8; n];
    for c in 1..k {
        for ((b, l), &v) in best
            .iter_mut()
            .zip(&mut labels)
            .zip(&maps[c * n..(c + 1) * n])
        {
            if v > *b {
                *b = v;
                *l = c as u8;
            }
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_round_trip_restores_native_labels() {
        let geo = Geometry {
            h: 6,
            w: 4,
            size: 12,
            image_resize: ImageResize::Bilinear,
        };
        let label: Vec<u8> = (0..24).map(|i| (i % 4) as u8).collect();
        let input = geo.label_to_input(&label);
        assert_eq!(input.len(), 144);
        assert_eq!(geo.prediction_to_native(&input), label);
    }
}

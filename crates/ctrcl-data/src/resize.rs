//! 2D resampling in PyTorch's conventions, so that a model trained here sees what a PyTorch
//! pipeline would show it: bilinear with `align_corners = false` for images, and `nearest`
//! (`src = floor(dst · in / out)`) for label maps.

/// Bilinear resize of a row-major `h × w` image to `oh × ow` (align_corners = false, edges clamped).
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "image length and shape disagree");
    if h == oh && w == ow {
        return src.to_vec();
    }
    let axis = |out: usize, inp: usize| -> Vec<(usize, usize, f32)> {
        let scale = inp as f32 / out as f32;
        (0..out)
            .map(|o| {
                let x = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let x0 = (x.floor() as usize).min(inp - 1);
                let x1 = (x0 + 1).min(inp - 1);
                (x0, x1, x - x0 as f32)
            })
            .collect()
    };
    let ys = axis(oh, h);
    let xs = axis(ow, w);
    let mut out = Vec::with_capacity(oh * ow);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = src[y0 * w + x0] * (1.0 - fx) + src[y0 * w + x1] * fx;
            let bottom = src[y1 * w + x0] * (1.0 - fx) + src[y1 * w + x1] * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// Nearest-neighbour resize of a row-major `h × w` map to `oh × ow` (PyTorch `mode="nearest"`).
pub fn resize_nearest<T: Copy>(src: &[T], h: usize, w: usize, oh: usize, ow: usize) -> Vec<T> {
    assert_eq!(src.len(), h * w, "map length and shape disagree");
    let index = |o: usize, out: usize, inp: usize| ((o * inp) / out).min(inp - 1);
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let sy = index(y, oh, h);
        for x in 0..ow {
            out.push(src[sy * w + index(x, ow, w)]);
        }
    }
    out
}

/// Pads a row-major `h × w` map to a centred `side × side` square filled with `fill`.
pub fn pad_to_square<T: Copy>(src: &[T], h: usize, w: usize, side: usize, fill: T) -> Vec<T> {
    assert!(side >= h && side >= w, "square smaller than the map");
    let (top, left) = ((side - h) / 2, (side - w) / 2);
    let mut out = vec![fill; side * side];
    for y in 0..h {
        out[(top + y) * side + left..(top + y) * side + left + w]
            .copy_from_slice(&src[y * w..(y + 1) * w]);
    }
    out
}

/// Inverse of [`pad_to_square`]: the centred `h × w` window of a `side × side` map.
pub fn crop_from_square<T: Copy>(src: &[T], side: usize, h: usize, w: usize) -> Vec<T> {
    let (top, left) = ((side - h) / 2, (side - w) / 2);
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        out.extend_from_slice(&src[(top + y) * side + left..(top + y) * side + left + w]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matches_pytorch_align_corners_false() {
        // torch.nn.functional.interpolate(torch.tensor([[[[0.,1.],[2.,3.]]]]), size=(4,4),
        //     mode="bilinear", align_corners=False) → rows
        // [0.00, 0.25, 0.75, 1.00], [0.50, 0.75, 1.25, 1.50], [1.50, 1.75, 2.25, 2.50], [2.00, 2.25, 2.75, 3.00]
        let out = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
        let expected = [
            0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
        ];
        for (a, b) in out.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn nearest_matches_pytorch() {
        // interpolate(arange(5).view(1,1,1,5).float(), size=(1,3), mode="nearest") → [0, 1, 3]
        assert_eq!(resize_nearest(&[0, 1, 2, 3, 4], 1, 5, 1, 3), vec![0, 1, 3]);
        // Upsampling 2 → 4 repeats each value twice.
        assert_eq!(resize_nearest(&[7, 9], 1, 2, 1, 4), vec![7, 7, 9, 9]);
    }

    #[test]
    fn pad_then_crop_is_identity() {
        let src: Vec<u8> = (0..6).collect();
        let sq = pad_to_square(&src, 2, 3, 5, 99);
        assert_eq!(sq.iter().filter(|&&v| v == 99).count(), 25 - 6);
        assert_eq!(crop_from_square(&sq, 5, 2, 3), src);
    }
}

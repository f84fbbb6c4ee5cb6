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

/// Cubic B-spline resize as `scipy.ndimage.zoom(src, (oh/h, ow/w), order=3)` — TransUNet's
/// image resize: spline coefficients by the recursive prefilter (pole √3 − 2) with mirror
/// boundaries, output pixel `o` sampled at `o·(n − 1)/(out − 1)` (corners aligned), coefficient
/// indices past an edge mirrored. Computed in f64.
///
/// # Shapes
/// `src`: `[h, w]` → `[oh, ow]`, row-major.
pub fn resize_spline3(src: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    let mut coef: Vec<f64> = src.iter().map(|&v| f64::from(v)).collect();
    // Prefilter along rows (x), then columns (y).
    for row in coef.chunks_mut(w) {
        spline_prefilter(row);
    }
    let mut column = vec![0.0; h];
    for x in 0..w {
        for y in 0..h {
            column[y] = coef[y * w + x];
        }
        spline_prefilter(&mut column);
        for y in 0..h {
            coef[y * w + x] = column[y];
        }
    }
    // Interpolate along x into [h, ow], then along y into [oh, ow].
    let along_x: Vec<f64> = coef
        .chunks(w)
        .flat_map(|row| spline_sample(row, ow))
        .collect();
    let mut out = vec![0.0f32; oh * ow];
    let mut column = vec![0.0; h];
    for x in 0..ow {
        for y in 0..h {
            column[y] = along_x[y * ow + x];
        }
        for (y, v) in spline_sample(&column, oh).into_iter().enumerate() {
            out[y * ow + x] = v as f32;
        }
    }
    out
}

/// In-place cubic B-spline prefilter of one line with mirror-symmetric boundaries.
fn spline_prefilter(c: &mut [f64]) {
    let n = c.len();
    if n < 2 {
        return;
    }
    let z = 3f64.sqrt() - 2.0;
    c.iter_mut().for_each(|v| *v *= 6.0);
    // Causal initial value of the mirror-extended signal (period 2n − 2).
    let zn = z.powi(n as i32 - 1);
    let mut sum = c[0] + zn * c[n - 1];
    let (mut zk, mut z2n) = (z, zn * zn / z);
    for v in &c[1..n - 1] {
        sum += (zk + z2n) * v;
        zk *= z;
        z2n /= z;
    }
    c[0] = sum / (1.0 - zn * zn);
    for k in 1..n {
        c[k] += z * c[k - 1];
    }
    c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2]);
    for k in (0..n - 1).rev() {
        c[k] = z * (c[k + 1] - c[k]);
    }
}

/// Samples the cubic spline with coefficients `c` at `out` corner-aligned positions.
fn spline_sample(c: &[f64], out: usize) -> Vec<f64> {
    let n = c.len();
    let mirror = |i: isize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * n as isize - 2;
        let i = i.rem_euclid(period);
        (if i >= n as isize { period - i } else { i }) as usize
    };
    let basis = |t: f64| {
        let t = t.abs();
        if t < 1.0 {
            2.0 / 3.0 - t * t + t * t * t / 2.0
        } else if t < 2.0 {
            (2.0 - t).powi(3) / 6.0
        } else {
            0.0
        }
    };
    (0..out)
        .map(|o| {
            let x = if out > 1 {
                o as f64 * (n as f64 - 1.0) / (out as f64 - 1.0)
            } else {
                0.0
            };
            let f = x.floor() as isize;
            (f - 1..f + 3)
                .map(|k| c[mirror(k)] * basis(x - k as f64))
                .sum()
        })
        .collect()
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

#[cfg(test)]
mod spline_tests {
    use super::*;

    /// scipy's `ndimage.zoom(order=3)` (`scripts/reference/zoom_reference.py`), down- and
    /// up-sampling, non-square: 1e-5 (the input is f32; scipy works in f64 as we do).
    #[test]
    fn spline_resize_matches_scipy_zoom_order_3() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/zoom/expected.json");
        let cases: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(cases.len(), 5);
        for c in cases {
            let n = |k: &str| c[k].as_u64().unwrap() as usize;
            let v = |k: &str| -> Vec<f64> {
                c[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            };
            let input: Vec<f32> = v("input").iter().map(|&x| x as f32).collect();
            let got = resize_spline3(&input, n("h"), n("w"), n("oh"), n("ow"));
            for (g, w) in got.iter().zip(v("output")) {
                assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
            }
        }
    }
}

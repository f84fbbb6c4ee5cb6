//! Overlay images for `ctrcl report`: a slice in grey with the reference contours (green) and a
//! student's predicted contours (magenta; yellow where they coincide), panels side by side.

/// Reference contour colour.
pub const TRUTH_RGB: [u8; 3] = [0, 200, 0];
/// Prediction contour colour.
pub const PRED_RGB: [u8; 3] = [255, 0, 255];
/// Where both contours pass.
pub const BOTH_RGB: [u8; 3] = [255, 230, 0];
/// White gap between panels, in output pixels.
const GAP: usize = 6;

/// Pixels of a label map on a class boundary: labelled (≠ 0) with a 4-neighbour of another label
/// (the image border does not count as a boundary).
///
/// # Shapes
/// `labels`: `[h, w]` → `[h, w]` flags.
pub fn contour(labels: &[u8], h: usize, w: usize) -> Vec<bool> {
    let mut out = vec![false; h * w];
    for y in 0..h {
        for x in 0..w {
            let l = labels[y * w + x];
            if l == 0 {
                continue;
            }
            let differs = (y > 0 && labels[(y - 1) * w + x] != l)
                || (y + 1 < h && labels[(y + 1) * w + x] != l)
                || (x > 0 && labels[y * w + x - 1] != l)
                || (x + 1 < w && labels[y * w + x + 1] != l);
            out[y * w + x] = differs;
        }
    }
    out
}

/// Grey levels 0..255 from intensities, clipped at the 1st and 99th percentiles.
fn to_grey(image: &[f32]) -> Vec<u8> {
    let mut sorted: Vec<f32> = image.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return vec![0; image.len()];
    }
    sorted.sort_by(f32::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let (lo, hi) = (at(0.01), at(0.99));
    let span = (hi - lo).max(f32::EPSILON);
    image
        .iter()
        .map(|v| (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect()
}

/// Nearest-neighbour upscaling by an integer factor, optionally flipped upside down.
///
/// # Shapes
/// `[h, w]` → `[h·scale, w·scale]`.
fn upscale<T: Copy>(src: &[T], h: usize, w: usize, scale: usize, flip: bool) -> Vec<T> {
    let (oh, ow) = (h * scale, w * scale);
    let mut out = Vec::with_capacity(oh * ow);
    for oy in 0..oh {
        let y = if flip { h - 1 - oy / scale } else { oy / scale };
        for ox in 0..ow {
            out.push(src[y * w + ox / scale]);
        }
    }
    out
}

/// Panels side by side: the image with the reference contours, then one per prediction with
/// both contours. Each panel is upscaled by `scale` (contours are traced at that resolution, so
/// they stay one pixel thin); `flip` shows row 0 at the bottom (NIfTI axial slices, anterior up).
///
/// # Shapes
/// `image`, `truth`, each of `preds`: `[h, w]` → RGB `[H, W, 3]`; returns (rgb, H, W).
pub fn overlay_panels(
    image: &[f32],
    truth: &[u8],
    preds: &[&[u8]],
    h: usize,
    w: usize,
    scale: usize,
    flip: bool,
) -> (Vec<u8>, usize, usize) {
    let (ph, pw) = (h * scale, w * scale);
    let grey = upscale(&to_grey(image), h, w, scale, flip);
    let truth_edge = contour(&upscale(truth, h, w, scale, flip), ph, pw);
    let panels = 1 + preds.len();
    let out_w = panels * pw + (panels - 1) * GAP;
    let mut rgb = vec![255u8; ph * out_w * 3];
    for panel in 0..panels {
        let pred_edge =
            (panel > 0).then(|| contour(&upscale(preds[panel - 1], h, w, scale, flip), ph, pw));
        let x0 = panel * (pw + GAP);
        for y in 0..ph {
            for x in 0..pw {
                let i = y * pw + x;
                let t = truth_edge[i];
                let p = pred_edge.as_ref().is_some_and(|e| e[i]);
                let colour = match (t, p) {
                    (true, true) => BOTH_RGB,
                    (true, false) => TRUTH_RGB,
                    (false, true) => PRED_RGB,
                    (false, false) => [grey[i]; 3],
                };
                let at = (y * out_w + x0 + x) * 3;
                rgb[at..at + 3].copy_from_slice(&colour);
            }
        }
    }
    (rgb, ph, out_w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4×5 map with a 2×2 square of class 1 and one pixel of class 2 touching it.
    fn square() -> Vec<u8> {
        #[rustfmt::skip]
        let m = vec![
            0, 0, 0, 0, 0,
            0, 1, 1, 2, 0,
            0, 1, 1, 0, 0,
            0, 0, 0, 0, 0,
        ];
        m
    }

    #[test]
    fn contours_are_labelled_pixels_next_to_another_label() {
        let c = contour(&square(), 4, 5);
        let on: Vec<usize> = (0..20).filter(|&i| c[i]).collect();
        // Every pixel of the 2×2 square touches background; the class-2 pixel too.
        assert_eq!(on, vec![6, 7, 8, 11, 12]);
        // A class filling the whole map has no contour: the border is not a boundary.
        assert!(contour(&[3; 6], 2, 3).iter().all(|&v| !v));
    }

    #[test]
    fn panels_colour_truth_prediction_and_agreement() {
        let image: Vec<f32> = (0..20).map(|i| i as f32).collect();
        let truth = square();
        let mut pred = vec![0u8; 20];
        pred[6] = 1; // only the top-left pixel of the square
        let (rgb, h, w) = overlay_panels(&image, &truth, &[&pred], 4, 5, 1, false);
        assert_eq!((h, w), (4, 5 + GAP + 5));
        let px = |panel: usize, y: usize, x: usize| {
            let at = (y * w + panel * (5 + GAP) + x) * 3;
            [rgb[at], rgb[at + 1], rgb[at + 2]]
        };
        assert_eq!(px(0, 1, 1), TRUTH_RGB);
        assert_eq!(px(0, 1, 4), [px(0, 1, 4)[0]; 3], "background stays grey");
        assert_eq!(px(1, 1, 1), BOTH_RGB, "a pixel on both contours");
        assert_eq!(px(1, 2, 2), TRUTH_RGB, "missed by the prediction");
        assert_eq!(
            px(1, 0, 0),
            [0, 0, 0],
            "the darkest pixel (1st percentile) is black"
        );
        assert_eq!(px(1, 3, 4), [255; 3], "the brightest is white");
        // Flipped, the square's top row is drawn one row above the bottom.
        let (flipped, _, _) = overlay_panels(&image, &truth, &[], 4, 5, 1, true);
        assert_eq!(&flipped[(2 * 5 + 1) * 3..(2 * 5 + 1) * 3 + 3], &TRUTH_RGB);
        assert_eq!(
            &flipped[(2 * 5 + 3) * 3..(2 * 5 + 3) * 3 + 3],
            &TRUTH_RGB,
            "class-2 pixel"
        );
    }

    #[test]
    fn upscaled_contours_stay_thin() {
        let (rgb, h, w) = overlay_panels(&[0.0; 20], &square(), &[], 4, 5, 3, false);
        assert_eq!((h, w), (12, 15));
        // The square spans rows 3..9 at scale 3; its interior (rows 4..8, cols 4..8) is not contour.
        let at = |y: usize, x: usize| &rgb[(y * w + x) * 3..(y * w + x) * 3 + 3];
        assert_eq!(at(3, 3), &TRUTH_RGB);
        assert_ne!(at(5, 5), &TRUTH_RGB);
    }
}

//! Depthwise 2D convolution kernels (`groups = C_in = C_out`, stride 1): SegFormer's Mix-FFN
//! 3×3 convolution.
//!
//! Each (image, channel) plane is independent: for every kernel tap the output rows get a
//! shifted input row segment times one weight (a vectorisable axpy), and the input gradient is
//! the same loop with the roles swapped; the weight gradient is one dot product per tap and
//! plane. Burn 0.21 runs the forward as a grouped `conv3d` and the input gradient as a grouped
//! transposed `conv3d` (~4% of a SegFormer training step). Planes run in parallel (rayon).

use rayon::prelude::*;

use super::gemm_kernels::ConvGeometry;

/// Whether a convolution with this geometry and group count is depthwise with stride 1 (the
/// case these kernels cover; the weight is `[C, 1, kh, kw]`).
pub fn applies(g: &ConvGeometry, groups: usize) -> bool {
    is_depthwise(groups, g.channels_in, g.channels_out, g.stride)
}

/// [`applies`] from the convolution's options and channel counts.
pub fn is_depthwise(
    groups: usize,
    channels_in: usize,
    channels_out: usize,
    stride: [usize; 2],
) -> bool {
    groups > 1 && groups == channels_in && groups == channels_out && stride == [1, 1]
}

/// One kernel tap `(p, q)`: its weight's index in a channel's `kh·kw` taps, the valid output
/// rows `[i_lo, i_hi)` and columns `[j_lo, j_hi)`, and the input offset `(row, column)` of
/// output `(0, 0)`.
struct Tap {
    index: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    offset: (isize, isize),
}

/// The taps of `g`'s kernel that touch the image (row-major).
fn taps(g: &ConvGeometry) -> Vec<Tap> {
    let [oh, ow] = g.output_size();
    let [kh, kw] = g.kernel;
    let offset = |axis: usize, k: usize| (k * g.dilation[axis]) as isize - g.padding[axis] as isize;
    (0..kh)
        .flat_map(|p| (0..kw).map(move |q| (p, q)))
        .map(|(p, q)| Tap {
            index: p * kw + q,
            rows: g.valid_outputs(0, p, oh, g.height_in),
            cols: g.valid_outputs(1, q, ow, g.width_in),
            offset: (offset(0, p), offset(1, q)),
        })
        .filter(|t| t.rows.0 < t.rows.1 && t.cols.0 < t.cols.1)
        .collect()
}

/// For each valid output row `i` of `tap`: the output row's segment `[i·ow + j_lo, i·ow + j_hi)`
/// and the input segment it reads, as start indices (the length is `j_hi − j_lo`).
fn segments(tap: &Tap, ow: usize, w_in: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
    let (j_lo, _) = tap.cols;
    (tap.rows.0..tap.rows.1).map(move |i| {
        let r = (i as isize + tap.offset.0) as usize;
        let c = (j_lo as isize + tap.offset.1) as usize;
        (i * ow + j_lo, r * w_in + c)
    })
}

/// Calls `f(weight, output_start, input_start, len)` for every tap of one channel (`weights`:
/// its `kh·kw` taps) and every output row segment it touches.
fn for_each_segment(
    taps: &[Tap],
    weights: &[f32],
    ow: usize,
    w_in: usize,
    mut f: impl FnMut(f32, usize, usize, usize),
) {
    for tap in taps {
        let (weight, len) = (weights[tap.index], tap.cols.1 - tap.cols.0);
        for (o, s) in segments(tap, ow, w_in) {
            f(weight, o, s, len);
        }
    }
}

/// `dst += a · src` (vectorised by the compiler).
fn axpy(dst: &mut [f32], a: f32, src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d += a * v;
    }
}

/// Forward: `x` `[B, C, H, W]`, `w` `[C, 1, kh, kw]`, `bias` `[C]` → `[B, C, H_out, W_out]`
/// (flattened).
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let [oh, ow] = g.output_size();
    let (c, in_len, taps_per_channel) = (g.channels_in, g.height_in * g.width_in, kernel_len(g));
    assert_eq!(x.len(), g.batch * c * in_len, "depthwise conv: input size");
    assert_eq!(w.len(), c * taps_per_channel, "depthwise conv: weight size");
    let taps = taps(g);
    let mut y = vec![0.0f32; g.batch * c * oh * ow];
    y.par_chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(plane, out)| {
            let ch = plane % c;
            let src = &x[plane * in_len..(plane + 1) * in_len];
            let weights = &w[ch * taps_per_channel..(ch + 1) * taps_per_channel];
            if let Some(bias) = bias {
                out.fill(bias[ch]);
            }
            for_each_segment(&taps, weights, ow, g.width_in, |weight, o, s, len| {
                axpy(&mut out[o..o + len], weight, &src[s..s + len]);
            });
        });
    y
}

/// Input gradient `[B, C, H, W]` (flattened) from the weight `w` `[C, 1, kh, kw]` and the output
/// gradient `dy` `[B, C, H_out, W_out]`.
pub fn input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let [oh, ow] = g.output_size();
    let (c, in_len, taps_per_channel) = (g.channels_in, g.height_in * g.width_in, kernel_len(g));
    assert_eq!(
        dy.len(),
        g.batch * c * oh * ow,
        "depthwise conv: output gradient size"
    );
    let taps = taps(g);
    let mut dx = vec![0.0f32; g.batch * c * in_len];
    dx.par_chunks_mut(in_len)
        .enumerate()
        .for_each(|(plane, dx)| {
            let ch = plane % c;
            let dy = &dy[plane * oh * ow..(plane + 1) * oh * ow];
            let weights = &w[ch * taps_per_channel..(ch + 1) * taps_per_channel];
            for_each_segment(&taps, weights, ow, g.width_in, |weight, o, s, len| {
                axpy(&mut dx[s..s + len], weight, &dy[o..o + len]);
            });
        });
    dx
}

/// Weight gradient `[C, 1, kh, kw]` (flattened) from the input `x` `[B, C, H, W]` and the output
/// gradient `dy` `[B, C, H_out, W_out]`: per channel and tap, the sum over images and valid
/// outputs of `dy · x` (rows summed in f32, images and rows accumulated in f64).
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let [oh, ow] = g.output_size();
    let (c, in_len, taps_per_channel) = (g.channels_in, g.height_in * g.width_in, kernel_len(g));
    let taps = taps(g);
    let mut dw = vec![0.0f32; c * taps_per_channel];
    dw.par_chunks_mut(taps_per_channel)
        .enumerate()
        .for_each(|(ch, dw)| {
            for tap in &taps {
                let len = tap.cols.1 - tap.cols.0;
                let mut sum = 0.0f64;
                for b in 0..g.batch {
                    let plane = b * c + ch;
                    let src = &x[plane * in_len..(plane + 1) * in_len];
                    let dy = &dy[plane * oh * ow..(plane + 1) * oh * ow];
                    for (o, s) in segments(tap, ow, g.width_in) {
                        let row: f32 = dy[o..o + len]
                            .iter()
                            .zip(&src[s..s + len])
                            .map(|(a, b)| a * b)
                            .sum();
                        sum += row as f64;
                    }
                }
                dw[tap.index] = sum as f32;
            }
        });
    dw
}

fn kernel_len(g: &ConvGeometry) -> usize {
    g.kernel[0] * g.kernel[1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution in f64 (every output, every tap, bounds checked per element): the
    /// independent reference. Returns `(y, dx, dw)` for the output gradient `dy`.
    fn naive(g: &ConvGeometry, x: &[f32], w: &[f32], dy: &[f32]) -> [Vec<f64>; 3] {
        let [oh, ow] = g.output_size();
        let ([kh, kw], c, (h, wd)) = (g.kernel, g.channels_in, (g.height_in, g.width_in));
        let mut y = vec![0.0; g.batch * c * oh * ow];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        for b in 0..g.batch {
            for ch in 0..c {
                for i in 0..oh {
                    for j in 0..ow {
                        let o = ((b * c + ch) * oh + i) * ow + j;
                        for p in 0..kh {
                            for q in 0..kw {
                                let r = (i + p * g.dilation[0]) as isize - g.padding[0] as isize;
                                let s = (j + q * g.dilation[1]) as isize - g.padding[1] as isize;
                                if r < 0 || s < 0 || r >= h as isize || s >= wd as isize {
                                    continue;
                                }
                                let xi = ((b * c + ch) * h + r as usize) * wd + s as usize;
                                let wi = (ch * kh + p) * kw + q;
                                y[o] += w[wi] as f64 * x[xi] as f64;
                                dx[xi] += w[wi] as f64 * dy[o] as f64;
                                dw[wi] += x[xi] as f64 * dy[o] as f64;
                            }
                        }
                    }
                }
            }
        }
        [y, dx, dw]
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37 + seed).sin()).collect()
    }

    fn assert_close(ours: &[f32], reference: &[f64], what: &str) {
        assert_eq!(ours.len(), reference.len(), "{what}: length");
        for (k, (&a, &b)) in ours.iter().zip(reference).enumerate() {
            // f32 products summed over ≤ 9 taps (or ≤ a few hundred for dw): 1e-5 relative
            // to the magnitude, far below any indexing mistake (which moves values by O(1)).
            assert!(
                (a as f64 - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{what}[{k}]: {a} vs {b}"
            );
        }
    }

    #[test]
    fn kernels_match_the_direct_convolution() {
        for (kernel, padding, dilation, size) in [
            ([3, 3], [1, 1], [1, 1], (7, 5)),
            ([3, 3], [0, 0], [1, 1], (6, 6)),
            ([5, 3], [2, 1], [1, 1], (4, 9)),
            ([3, 3], [2, 2], [2, 2], (8, 7)),
            ([3, 3], [1, 1], [1, 1], (1, 1)),
        ] {
            let g = ConvGeometry {
                batch: 2,
                channels_in: 3,
                channels_out: 3,
                height_in: size.0,
                width_in: size.1,
                kernel,
                stride: [1, 1],
                padding,
                dilation,
            };
            assert!(applies(&g, 3));
            let [oh, ow] = g.output_size();
            let x = values(2 * 3 * size.0 * size.1, 0.1);
            let w = values(3 * kernel[0] * kernel[1], 1.3);
            let dy = values(2 * 3 * oh * ow, 2.9);
            let [y, dx, dw] = naive(&g, &x, &w, &dy);
            let what = format!("{kernel:?} pad {padding:?} dil {dilation:?} {size:?}");
            assert_close(&forward(&g, &x, &w, None), &y, &format!("y {what}"));
            assert_close(&input_grad(&g, &w, &dy), &dx, &format!("dx {what}"));
            assert_close(&weight_grad(&g, &x, &dy), &dw, &format!("dw {what}"));
        }
    }

    #[test]
    fn only_stride_one_depthwise_applies() {
        let g = ConvGeometry {
            batch: 1,
            channels_in: 4,
            channels_out: 4,
            height_in: 5,
            width_in: 5,
            kernel: [3, 3],
            stride: [1, 1],
            padding: [1, 1],
            dilation: [1, 1],
        };
        assert!(applies(&g, 4));
        assert!(!applies(&g, 1), "groups 1 is the GEMM path");
        assert!(!applies(&g, 2), "groups < channels is not depthwise");
        assert!(!applies(
            &ConvGeometry {
                stride: [2, 2],
                ..g
            },
            4
        ));
    }
}

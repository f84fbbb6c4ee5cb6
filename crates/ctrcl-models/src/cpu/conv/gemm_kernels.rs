//! 2D convolution and its gradients as GEMMs over an im2col matrix, on plain `f32` slices
//! (NCHW).
//!
//! Burn 0.21's default `conv2d_weight_backward` convolves the *transposed* input with the
//! *transposed* output gradient (both copied element by element), and `conv2d_x_backward` runs a
//! transposed convolution; on the CPU `flex` backend these were ~26% of a U-Net training step.
//! flex's forward transposes the input to NHWC and scatters the GEMM result back to NCHW.
//! Here, per image `b` of the batch:
//!
//! - `cols_b = im2col(x_b)`, `[K, P]` with `K = C_in·kh·kw` and `P = H_out·W_out`;
//! - forward `Y_b = W · cols_b` (`[C_out, K] · [K, P]`, written straight into NCHW);
//! - `dW += dY_b · cols_bᵀ` (`[C_out, P] · [P, K]`, the transpose is a stride, not a copy);
//! - `dX_b = col2im(Wᵀ · dY_b)` (`[K, C_out] · [C_out, P]`, scattered back with `+=`);
//! - `db = Σ_b Σ_p dY_b`.
//!
//! Images run in parallel on rayon's pool; each GEMM runs on one thread. Results do not depend
//! on the number of threads.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Geometry of one `groups = 1` 2D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub channels_in: usize,
    pub channels_out: usize,
    pub height_in: usize,
    pub width_in: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub padding: [usize; 2],
    pub dilation: [usize; 2],
}

impl ConvGeometry {
    /// Output height and width (PyTorch's formula).
    pub fn output_size(&self) -> [usize; 2] {
        let out = |i: usize| {
            let span = self.dilation[i] * (self.kernel[i] - 1) + 1;
            let input = [self.height_in, self.width_in][i] + 2 * self.padding[i];
            (input - span) / self.stride[i] + 1
        };
        [out(0), out(1)]
    }

    /// A 1×1 convolution with stride 1 and no padding: its im2col matrix is the image itself
    /// (`[C_in, H·W]`), so no copy is made in either direction.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Rows of the im2col matrix: `C_in·kh·kw`.
    fn col_rows(&self) -> usize {
        self.channels_in * self.kernel[0] * self.kernel[1]
    }

    fn out_pixels(&self) -> usize {
        let [h, w] = self.output_size();
        h * w
    }

    fn in_pixels(&self) -> usize {
        self.height_in * self.width_in
    }

    /// For kernel offset `k` along axis `axis`: the output positions `[lo, hi)` whose input
    /// index `o·stride + k·dilation − padding` lies inside the image.
    pub(super) fn valid_outputs(
        &self,
        axis: usize,
        k: usize,
        out_len: usize,
        in_len: usize,
    ) -> (usize, usize) {
        let offset = (k * self.dilation[axis]) as isize - self.padding[axis] as isize;
        let stride = self.stride[axis] as isize;
        // smallest o with o·s + offset ≥ 0
        let lo = if offset >= 0 {
            0
        } else {
            ((-offset) + stride - 1) / stride
        };
        // largest o with o·s + offset ≤ in_len − 1, plus one
        let last = in_len as isize - 1 - offset;
        let hi = if last < 0 { 0 } else { last / stride + 1 };
        let lo = (lo as usize).min(out_len);
        let hi = (hi as usize).clamp(lo, out_len);
        (lo, hi)
    }
}

/// im2col of one image: `image` `[C_in, H, W]` → `cols` `[K, P]` (zeros where the window leaves
/// the image). Every element of `cols` is written, so it needs no clearing beforehand.
fn im2col(g: &ConvGeometry, image: &[f32], cols: &mut [f32]) {
    let [out_h, out_w] = g.output_size();
    let p = out_h * out_w;
    let [kh, kw] = g.kernel;
    for c in 0..g.channels_in {
        let plane = &image[c * g.in_pixels()..(c + 1) * g.in_pixels()];
        for ky in 0..kh {
            let (oy_lo, oy_hi) = g.valid_outputs(0, ky, out_h, g.height_in);
            for kx in 0..kw {
                let (ox_lo, ox_hi) = g.valid_outputs(1, kx, out_w, g.width_in);
                let row = (c * kh + ky) * kw + kx;
                let dst = &mut cols[row * p..(row + 1) * p];
                dst[..oy_lo * out_w].fill(0.0);
                dst[oy_hi * out_w..].fill(0.0);
                let x_off = kx * g.dilation[1];
                for oy in oy_lo..oy_hi {
                    let iy = oy * g.stride[0] + ky * g.dilation[0] - g.padding[0];
                    let src_row = &plane[iy * g.width_in..(iy + 1) * g.width_in];
                    let dst_row = &mut dst[oy * out_w..(oy + 1) * out_w];
                    dst_row[..ox_lo].fill(0.0);
                    dst_row[ox_hi..].fill(0.0);
                    if g.stride[1] == 1 {
                        let ix_lo = ox_lo + x_off - g.padding[1];
                        dst_row[ox_lo..ox_hi]
                            .copy_from_slice(&src_row[ix_lo..ix_lo + (ox_hi - ox_lo)]);
                    } else {
                        for ox in ox_lo..ox_hi {
                            dst_row[ox] = src_row[ox * g.stride[1] + x_off - g.padding[1]];
                        }
                    }
                }
            }
        }
    }
}

/// The im2col matrix `[K, P]` of one image: the image itself for a pointwise convolution,
/// else written into `buf` (grown on first use).
fn cols_of<'a>(g: &ConvGeometry, image: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
    if g.is_pointwise() {
        return image;
    }
    buf.resize(g.col_rows() * g.out_pixels(), 0.0);
    im2col(g, image, buf);
    buf
}

/// col2im of one image, accumulating: `cols` `[K, P]` is added into `image` `[C_in, H, W]`.
fn col2im_add(g: &ConvGeometry, cols: &[f32], image: &mut [f32]) {
    let [out_h, out_w] = g.output_size();
    let p = out_h * out_w;
    let [kh, kw] = g.kernel;
    let in_pixels = g.in_pixels();
    for c in 0..g.channels_in {
        let plane = &mut image[c * in_pixels..(c + 1) * in_pixels];
        for ky in 0..kh {
            let (oy_lo, oy_hi) = g.valid_outputs(0, ky, out_h, g.height_in);
            for kx in 0..kw {
                let (ox_lo, ox_hi) = g.valid_outputs(1, kx, out_w, g.width_in);
                let row = (c * kh + ky) * kw + kx;
                let src = &cols[row * p..(row + 1) * p];
                let x_off = kx * g.dilation[1];
                for oy in oy_lo..oy_hi {
                    let iy = oy * g.stride[0] + ky * g.dilation[0] - g.padding[0];
                    let dst_row = &mut plane[iy * g.width_in..(iy + 1) * g.width_in];
                    let src_row = &src[oy * out_w..(oy + 1) * out_w];
                    if g.stride[1] == 1 {
                        let ix_lo = ox_lo + x_off - g.padding[1];
                        let n = ox_hi - ox_lo;
                        for (d, s) in dst_row[ix_lo..ix_lo + n]
                            .iter_mut()
                            .zip(&src_row[ox_lo..ox_hi])
                        {
                            *d += *s;
                        }
                    } else {
                        for ox in ox_lo..ox_hi {
                            dst_row[ox * g.stride[1] + x_off - g.padding[1]] += src_row[ox];
                        }
                    }
                }
            }
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, each operand given by its row and column strides.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (isize, isize),
    rhs: &[f32],
    rhs_strides: (isize, isize),
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the caller's slices cover every index the strides reach: `dst` is `[m, n]` row
    // major; `lhs` and `rhs` are whole matrices of `m·k` and `k·n` elements in the given
    // (row, column) strides, which index within those lengths.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_strides.1,
            lhs_strides.0,
            rhs.as_ptr(),
            rhs_strides.1,
            rhs_strides.0,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Forward convolution: `x` `[B, C_in, H, W]`, `w` `[C_out, C_in, kh, kw]`, `bias` `[C_out]` →
/// `[B, C_out, H_out, W_out]` (flattened). Each image is one GEMM `W[co, K] · cols_b[K, P]` that
/// writes its output planes in place (no layout change of the input, weight or output).
pub fn forward(g: &ConvGeometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let (k, p) = (g.col_rows(), g.out_pixels());
    let co = g.channels_out;
    let (x_len, y_len) = (g.channels_in * g.in_pixels(), co * p);
    assert_eq!(x.len(), g.batch * x_len, "conv forward: input size");
    assert_eq!(w.len(), co * k, "conv forward: weight size");
    let mut y = vec![0.0f32; g.batch * y_len];
    y.par_chunks_mut(y_len)
        .enumerate()
        .for_each_init(Vec::new, |buf, (b, y_b)| {
            let cols = cols_of(g, &x[b * x_len..(b + 1) * x_len], buf);
            if let Some(bias) = bias {
                for (plane, &v) in y_b.chunks_exact_mut(p).zip(bias) {
                    plane.fill(v);
                }
            }
            // y_b[co, p] (+)= W[co, k] · cols_b[k, p]
            matmul(
                co,
                p,
                k,
                y_b,
                bias.is_some(),
                w,
                (k as isize, 1),
                cols,
                (p as isize, 1),
            );
        });
    y
}

/// Weight gradient `[C_out, C_in, kh, kw]` (flattened) from the input `x` `[B, C_in, H, W]` and
/// the output gradient `dy` `[B, C_out, H_out, W_out]`.
pub fn weight_grad(g: &ConvGeometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (g.col_rows(), g.out_pixels());
    let co = g.channels_out;
    let (x_len, dy_len) = (g.channels_in * g.in_pixels(), co * p);
    assert_eq!(x.len(), g.batch * x_len, "conv weight grad: input size");
    assert_eq!(
        dy.len(),
        g.batch * dy_len,
        "conv weight grad: output-gradient size"
    );
    // One partial gradient per image, summed in image order afterwards: the result does not
    // depend on how rayon splits the batch (runs with the same seed stay bit-identical).
    let partials: Vec<Vec<f32>> = (0..g.batch)
        .into_par_iter()
        .map_init(Vec::new, |buf, b| {
            let cols = cols_of(g, &x[b * x_len..(b + 1) * x_len], buf);
            // dW_b[co, k] = dY_b[co, p] · cols_bᵀ[p, k]
            let dy_b = &dy[b * dy_len..(b + 1) * dy_len];
            let mut dw = vec![0.0f32; co * k];
            matmul(
                co,
                k,
                p,
                &mut dw,
                false,
                dy_b,
                (p as isize, 1),
                cols,
                (1, p as isize),
            );
            dw
        })
        .collect();
    let mut partials = partials.into_iter();
    let mut dw = partials.next().unwrap_or_else(|| vec![0.0f32; co * k]);
    for partial in partials {
        dw.iter_mut().zip(&partial).for_each(|(a, b)| *a += *b);
    }
    dw
}

/// Input gradient `[B, C_in, H, W]` (flattened) from the weight `w` `[C_out, C_in, kh, kw]` and
/// the output gradient `dy` `[B, C_out, H_out, W_out]`.
pub fn input_grad(g: &ConvGeometry, w: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, p) = (g.col_rows(), g.out_pixels());
    let co = g.channels_out;
    let (x_len, dy_len) = (g.channels_in * g.in_pixels(), co * p);
    assert_eq!(w.len(), co * k, "conv input grad: weight size");
    assert_eq!(
        dy.len(),
        g.batch * dy_len,
        "conv input grad: output-gradient size"
    );
    let mut dx = vec![0.0f32; g.batch * x_len];
    dx.par_chunks_mut(x_len)
        .enumerate()
        .for_each_init(Vec::new, |buf, (b, dx_b)| {
            // cols[k, p] = Wᵀ[k, co] · dY_b[co, p]; for a pointwise convolution cols is dx_b.
            let dy_b = &dy[b * dy_len..(b + 1) * dy_len];
            let pointwise = g.is_pointwise();
            if !pointwise {
                buf.resize(k * p, 0.0);
            }
            let cols: &mut [f32] = if pointwise { dx_b } else { buf };
            matmul(
                k,
                p,
                co,
                cols,
                false,
                w,
                (1, k as isize),
                dy_b,
                (p as isize, 1),
            );
            if !pointwise {
                col2im_add(g, buf, dx_b);
            }
        });
    dx
}

/// Bias gradient `[C_out]`: the output gradient summed over the batch and the pixels.
pub fn bias_grad(g: &ConvGeometry, dy: &[f32]) -> Vec<f32> {
    let p = g.out_pixels();
    let mut db = vec![0.0f32; g.channels_out];
    for image in dy.chunks_exact(g.channels_out * p) {
        for (d, plane) in db.iter_mut().zip(image.chunks_exact(p)) {
            *d += plane.iter().map(|&v| v as f64).sum::<f64>() as f32;
        }
    }
    db
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct (seven nested loops) output and gradients in f64: the independent reference.
    /// Returns `(y, dx, dw)` for `y = conv(x, w) + bias` and the output gradient `dy`.
    #[allow(clippy::needless_range_loop)] // the loops spell out the index arithmetic on purpose
    fn naive(
        g: &ConvGeometry,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        dy: &[f32],
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let [oh, ow] = g.output_size();
        let [kh, kw] = g.kernel;
        let (ci, co, h, wd) = (g.channels_in, g.channels_out, g.height_in, g.width_in);
        let mut y = vec![0.0f64; dy.len()];
        let mut dx = vec![0.0f64; x.len()];
        let mut dw = vec![0.0f64; w.len()];
        for b in 0..g.batch {
            for o in 0..co {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let yi = ((b * co + o) * oh + oy) * ow + ox;
                        let gy = dy[yi] as f64;
                        y[yi] = bias[o] as f64;
                        for c in 0..ci {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize
                                        - g.padding[0] as isize;
                                    let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize
                                        - g.padding[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xi = ((b * ci + c) * h + iy as usize) * wd + ix as usize;
                                    let wi = ((o * ci + c) * kh + ky) * kw + kx;
                                    y[yi] += x[xi] as f64 * w[wi] as f64;
                                    dw[wi] += gy * x[xi] as f64;
                                    dx[xi] += gy * w[wi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // small deterministic pseudo-random values in [-1, 1)
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn check(g: ConvGeometry) {
        let [oh, ow] = g.output_size();
        let x = values(g.batch * g.channels_in * g.height_in * g.width_in, 1);
        let w = values(
            g.channels_out * g.channels_in * g.kernel[0] * g.kernel[1],
            2,
        );
        let dy = values(g.batch * g.channels_out * oh * ow, 3);
        let bias = values(g.channels_out, 7);
        let (y_ref, dx_ref, dw_ref) = naive(&g, &x, &w, &bias, &dy);
        // f32 sums of up to a few hundred products of magnitude ≤ 1: 1e-4 relative to the
        // largest reference value is well above rounding and far below any indexing error.
        let close = |got: &[f32], want: &[f64], what: &str| {
            assert_eq!(got.len(), want.len(), "{what} length, {g:?}");
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() <= 1e-4 * scale,
                    "{what}[{i}] = {a}, reference {b}, {g:?}"
                );
            }
        };
        close(&forward(&g, &x, &w, Some(&bias)), &y_ref, "y");
        close(&input_grad(&g, &w, &dy), &dx_ref, "dx");
        close(&weight_grad(&g, &x, &dy), &dw_ref, "dw");
        let db_ref: Vec<f64> = (0..g.channels_out)
            .map(|o| {
                (0..g.batch)
                    .flat_map(|b| {
                        let start = (b * g.channels_out + o) * oh * ow;
                        dy[start..start + oh * ow].iter().map(|&v| v as f64)
                    })
                    .sum()
            })
            .collect();
        close(&bias_grad(&g, &dy), &db_ref, "db");
    }

    fn geometry(
        ci: usize,
        co: usize,
        hw: [usize; 2],
        k: usize,
        s: usize,
        p: usize,
        d: usize,
    ) -> ConvGeometry {
        ConvGeometry {
            batch: 3,
            channels_in: ci,
            channels_out: co,
            height_in: hw[0],
            width_in: hw[1],
            kernel: [k, k],
            stride: [s, s],
            padding: [p, p],
            dilation: [d, d],
        }
    }

    #[test]
    fn gradients_match_direct_loops_for_common_geometries() {
        check(geometry(3, 5, [9, 7], 3, 1, 1, 1)); // U-Net 3×3 "same"
        check(geometry(4, 2, [8, 8], 1, 1, 0, 1)); // 1×1 head
        check(geometry(2, 3, [9, 10], 3, 2, 1, 1)); // ResNet stride-2 3×3
        check(geometry(3, 4, [16, 12], 7, 2, 3, 1)); // ResNet stem
        check(geometry(2, 3, [8, 8], 4, 4, 0, 1)); // Swin patch embedding
        check(geometry(2, 2, [11, 9], 3, 1, 2, 2)); // dilated
        check(geometry(1, 2, [5, 6], 3, 1, 0, 1)); // valid padding
        check(ConvGeometry {
            padding: [2, 0],
            stride: [1, 3],
            kernel: [5, 2],
            ..geometry(2, 3, [7, 11], 1, 1, 0, 1)
        }); // anisotropic
    }

    #[test]
    fn gradients_are_bit_identical_on_any_number_of_threads() {
        let g = ConvGeometry {
            batch: 7,
            ..geometry(3, 4, [10, 10], 3, 1, 1, 1)
        };
        let [oh, ow] = g.output_size();
        let x = values(g.batch * 3 * 100, 4);
        let w = values(4 * 3 * 9, 5);
        let dy = values(g.batch * 4 * oh * ow, 6);
        let on = |threads: usize| {
            crate::on_threads(threads, || {
                (weight_grad(&g, &x, &dy), input_grad(&g, &w, &dy))
            })
        };
        let one = on(1);
        for threads in [2, 3] {
            assert!(on(threads) == one, "{threads} threads differ from one");
        }
    }
}

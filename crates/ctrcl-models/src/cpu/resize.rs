//! Bilinear resizing (`align_corners = false`, PyTorch's and Burn's convention) with its own
//! backward on the CPU backend: SegFormer's decoder up-samples three stage maps to a quarter of
//! the input and the logits to full size.
//!
//! Bilinear interpolation is separable: each output row blends two input rows, then each output
//! column blends two columns of that blend. The per-axis source indices and weights are computed
//! once (in f64, exactly as Burn does) instead of per pixel, and the backward runs the same
//! two steps in reverse, plane by plane in parallel. Burn 0.21's flex backward visits every
//! output pixel on one thread with per-pixel `floor`s (~8% of a SegFormer training step). On
//! `Flex` and `Autodiff<Flex>` (f32); other backends use Burn's `interpolate`.
//! `CTRCL_BURN_RESIZE=1` in the environment turns this path off (for A/B benchmarks).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{DType, TensorPrimitive};
use burn_std::Shape as StdShape;
use rayon::prelude::*;

use crate::cpu::{
    backprop_unary, cast, dims4, flex_tensor, record_unary, CpuTrain, CpuTrainTensor,
};

fn enabled() -> bool {
    crate::switches::Switch::Resize.fast()
}

/// `x` `[N, C, H, W]` → `[N, C, size[0], size[1]]`, bilinear with `align_corners = false`.
pub fn resize_bilinear<B: Backend>(x: Tensor<B, 4>, size: [usize; 2]) -> Tensor<B, 4> {
    let backend = TypeId::of::<B>();
    let cpu = backend == TypeId::of::<Flex>() || backend == TypeId::of::<CpuTrain>();
    let [_, _, h, w] = x.dims();
    if !cpu || x.dtype() != DType::F32 || !enabled() || h == 0 || w == 0 {
        let options = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
        return interpolate(x, size, options);
    }
    let prim = x.into_primitive().tensor();
    let out: B::FloatTensorPrimitive = if backend == TypeId::of::<Flex>() {
        cast(resize_flex(&cast(prim), size))
    } else {
        cast(resize_autodiff(cast(prim), size))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// One axis of the resize: output `o` reads inputs `low[o]` and `high[o]` with weights
/// `1 − frac[o]` and `frac[o]`.
struct AxisMap {
    low: Vec<usize>,
    high: Vec<usize>,
    frac: Vec<f32>,
}

impl AxisMap {
    /// Burn's (and PyTorch's) half-pixel mapping: source `(o + ½)·in/out − ½`, clamped at 0.
    fn new(in_len: usize, out_len: usize) -> Self {
        let ratio = in_len as f64 / out_len as f64;
        let mut map = AxisMap {
            low: Vec::with_capacity(out_len),
            high: Vec::with_capacity(out_len),
            frac: Vec::with_capacity(out_len),
        };
        for o in 0..out_len {
            let src = (o as f64 + 0.5) * ratio - 0.5;
            let low = src.floor().max(0.0) as usize;
            map.low.push(low);
            map.high.push((low + 1).min(in_len - 1));
            map.frac.push((src - low as f64).max(0.0) as f32);
        }
        map
    }
}

/// The input's shape `[N, C, H, W]` and the output size: what the backward needs.
type ResizeState = ([usize; 4], [usize; 2]);

/// Forward on flex tensors: per plane, each output row blends its two input rows into a row of
/// the input's width, then each output column blends two entries of that row.
fn resize_flex(x: &FlexTensor, size: [usize; 2]) -> FlexTensor {
    let x = x.to_contiguous();
    let [n, c, h, w] = dims4(&x);
    let [oh, ow] = size;
    let (rows, cols) = (AxisMap::new(h, oh), AxisMap::new(w, ow));
    let src: &[f32] = x.storage();
    let mut out = vec![0.0f32; n * c * oh * ow];
    if oh * ow > 0 {
        out.par_chunks_mut(oh * ow).enumerate().for_each_init(
            || vec![0.0f32; w],
            |blend, (plane, out)| {
                let src = &src[plane * h * w..(plane + 1) * h * w];
                for (i, out_row) in out.chunks_exact_mut(ow).enumerate() {
                    let (top, bottom) = (&src[rows.low[i] * w..], &src[rows.high[i] * w..]);
                    let fy = rows.frac[i];
                    for ((b, &t), &d) in blend.iter_mut().zip(top).zip(bottom) {
                        *b = t * (1.0 - fy) + d * fy;
                    }
                    for (j, o) in out_row.iter_mut().enumerate() {
                        let fx = cols.frac[j];
                        *o = blend[cols.low[j]] * (1.0 - fx) + blend[cols.high[j]] * fx;
                    }
                }
            },
        );
    }
    flex_tensor(out, StdShape::new([n, c, oh, ow]))
}

/// Backward: per plane, each output row's gradient is spread over a row of the input's width
/// (the column step reversed), which is then added to the row's two input rows.
fn unresize_flex(dy: &FlexTensor, (shape, size): ResizeState) -> FlexTensor {
    let dy = dy.to_contiguous();
    let [n, c, h, w] = shape;
    let [oh, ow] = size;
    let (rows, cols) = (AxisMap::new(h, oh), AxisMap::new(w, ow));
    let g: &[f32] = dy.storage();
    let mut dx = vec![0.0f32; n * c * h * w];
    dx.par_chunks_mut(h * w).enumerate().for_each_init(
        || vec![0.0f32; w],
        |spread, (plane, dx)| {
            let g = &g[plane * oh * ow..(plane + 1) * oh * ow];
            for (i, g_row) in g.chunks_exact(ow).enumerate() {
                spread.fill(0.0);
                for (j, &v) in g_row.iter().enumerate() {
                    let fx = cols.frac[j];
                    spread[cols.low[j]] += v * (1.0 - fx);
                    spread[cols.high[j]] += v * fx;
                }
                let fy = rows.frac[i];
                let top = rows.low[i] * w;
                for (d, &s) in dx[top..top + w].iter_mut().zip(spread.iter()) {
                    *d += s * (1.0 - fy);
                }
                let bottom = rows.high[i] * w;
                for (d, &s) in dx[bottom..bottom + w].iter_mut().zip(spread.iter()) {
                    *d += s * fy;
                }
            }
        },
    );
    flex_tensor(dx, StdShape::new(shape))
}

#[derive(Debug)]
struct ResizeBackward;

impl Backward<Flex, 1> for ResizeBackward {
    type State = ResizeState;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backprop_unary(ops, grads, unresize_flex);
    }
}

fn resize_autodiff(x: CpuTrainTensor, size: [usize; 2]) -> CpuTrainTensor {
    record_unary(ResizeBackward, &x, || {
        (resize_flex(&x.primitive, size), (dims4(&x.primitive), size))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::assert_values_and_gradients_match;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn values_and_gradients_match_burns_interpolate() {
        let device = Default::default();
        let burn = |x: Tensor<CpuTrain, 4>, size| {
            let options =
                InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
            interpolate(x, size, options)
        };
        // SegFormer's ×2/×4/×8 up-sampling, non-integer factors, down-sampling, a 1-pixel input.
        for (shape, size) in [
            ([2, 3, 7, 7], [28, 28]),
            ([1, 2, 14, 14], [56, 56]),
            ([2, 2, 5, 9], [13, 4]),
            ([1, 3, 12, 10], [5, 7]),
            ([1, 2, 1, 1], [3, 4]),
        ] {
            let x0 = Tensor::<CpuTrain, 4>::random(shape, Distribution::Default, &device);
            // The separable blend rounds differently from Burn's four-term sum: 1e-5.
            assert_values_and_gradients_match(
                &x0,
                |x| resize_bilinear(x, size),
                |x| burn(x, size),
                Tolerance::rel_abs(1e-5, 1e-6),
            );
        }
    }

    #[test]
    fn inference_backend_matches_too() {
        let device = Default::default();
        let x = Tensor::<Flex, 4>::random([2, 3, 6, 5], Distribution::Default, &device);
        let options = InterpolateOptions::new(InterpolateMode::Bilinear).with_align_corners(false);
        let want = interpolate(x.clone(), [17, 11], options);
        let got = resize_bilinear(x, [17, 11]);
        got.into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }

    /// A hand-worked case: 2 → 4 along one axis. Half-pixel sources are −0.25, 0.25, 0.75, 1.25,
    /// so the outputs are a, 0.75a + 0.25b, 0.25a + 0.75b, b, and the input gradient of the sum
    /// is (2, 2).
    #[test]
    fn two_to_four_by_hand() {
        let device = Default::default();
        let x = Tensor::<CpuTrain, 4>::from_floats([[[[1.0, 5.0]]]], &device).require_grad();
        let y = resize_bilinear(x.clone(), [1, 4]);
        assert_eq!(
            y.clone().into_data().to_vec::<f32>().unwrap(),
            vec![1.0, 2.0, 4.0, 5.0]
        );
        let grads = y.sum().backward();
        assert_eq!(
            x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap(),
            vec![2.0, 2.0]
        );
    }
}

//! 2×2 max pooling with stride 2 (the U-Net's down-sampling) as one pass over the data on the
//! CPU backend.
//!
//! Burn 0.21's flex max-pool keeps indices as a full tensor and scatters the gradient back
//! through strided broadcasts (~7% of a U-Net training step). Here the forward keeps one byte
//! per output pixel (which of the four inputs won) and the backward writes each gradient to that
//! input, plane by plane in parallel. On `Flex` and `Autodiff<Flex>` (f32, valid padding, odd
//! trailing rows/columns dropped as Burn does); other backends use Burn's `max_pool2d`.
//! `CTRCL_BURN_POOL=1` in the environment turns this path off (for A/B benchmarks).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::module::max_pool2d;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::{Bytes, Shape as StdShape};
use rayon::prelude::*;

use crate::cpu::{backprop_unary, cast, dims4, record_unary, CpuTrain, CpuTrainTensor};

fn enabled() -> bool {
    crate::switches::Switch::Pool.fast()
}

/// `[N, C, H, W]` → `[N, C, H/2, W/2]`: the maximum of each 2×2 block.
pub fn max_pool_2x2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let backend = TypeId::of::<B>();
    let cpu = backend == TypeId::of::<Flex>() || backend == TypeId::of::<CpuTrain>();
    let [_, _, h, w] = x.dims();
    if !cpu || x.dtype() != DType::F32 || !enabled() || h < 2 || w < 2 {
        return max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false);
    }
    let prim = x.into_primitive().tensor();
    let out: B::FloatTensorPrimitive = if backend == TypeId::of::<Flex>() {
        cast(pool_flex(&cast(prim)).0)
    } else {
        cast(pool_autodiff(cast(prim)))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// The input's shape and, per output pixel, which of its 2×2 inputs won (0–3, row-major).
#[derive(Debug, Clone)]
struct Winners {
    shape: [usize; 4],
    index: Vec<u8>,
}

/// Forward: the pooled tensor and the winners.
fn pool_flex(x: &FlexTensor) -> (FlexTensor, Winners) {
    let x = x.to_contiguous();
    let shape = dims4(&x);
    let [n, c, h, w] = shape;
    let (oh, ow) = (h / 2, w / 2);
    let src: &[f32] = x.storage();
    let mut out = vec![0.0f32; n * c * oh * ow];
    let mut index = vec![0u8; out.len()];
    out.par_chunks_mut(oh * ow)
        .zip(index.par_chunks_mut(oh * ow))
        .enumerate()
        .for_each(|(plane, (out, index))| {
            let src = &src[plane * h * w..(plane + 1) * h * w];
            for i in 0..oh {
                let (top, bottom) = (&src[2 * i * w..], &src[(2 * i + 1) * w..]);
                for j in 0..ow {
                    // NaN-propagating, first maximum in row-major order on ties.
                    let cand = [top[2 * j], top[2 * j + 1], bottom[2 * j], bottom[2 * j + 1]];
                    let mut best = 0;
                    for k in 1..4 {
                        if cand[k] > cand[best] || (cand[k].is_nan() && !cand[best].is_nan()) {
                            best = k;
                        }
                    }
                    out[i * ow + j] = cand[best];
                    index[i * ow + j] = best as u8;
                }
            }
        });
    let pooled = FlexTensor::new(
        Bytes::from_elems(out),
        Layout::contiguous(StdShape::from(vec![n, c, oh, ow])),
        DType::F32,
    );
    (pooled, Winners { shape, index })
}

/// Backward: each output gradient goes to its winner; the other inputs get zero.
fn unpool_flex(grad: &FlexTensor, winners: &Winners) -> FlexTensor {
    let grad = grad.to_contiguous();
    let [n, c, h, w] = winners.shape;
    let (oh, ow) = (h / 2, w / 2);
    let g: &[f32] = grad.storage();
    let mut dx = vec![0.0f32; n * c * h * w];
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, dx)| {
            let base = plane * oh * ow;
            for i in 0..oh {
                for j in 0..ow {
                    let k = winners.index[base + i * ow + j] as usize;
                    dx[(2 * i + k / 2) * w + 2 * j + k % 2] = g[base + i * ow + j];
                }
            }
        });
    FlexTensor::new(
        Bytes::from_elems(dx),
        Layout::contiguous(StdShape::from(winners.shape.to_vec())),
        DType::F32,
    )
}

#[derive(Debug)]
struct MaxPoolBackward;

impl Backward<Flex, 1> for MaxPoolBackward {
    type State = Winners;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backprop_unary(ops, grads, |dy, winners| unpool_flex(dy, &winners));
    }
}

fn pool_autodiff(x: CpuTrainTensor) -> CpuTrainTensor {
    record_unary(MaxPoolBackward, &x, || pool_flex(&x.primitive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::assert_same_values_and_gradients;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn values_and_gradients_match_burns_max_pool() {
        let device = Default::default();
        // Odd height and width: Burn drops the last row and column; so must we.
        for shape in [[2, 3, 8, 6], [1, 2, 7, 9]] {
            let x0 = Tensor::<CpuTrain, 4>::random(shape, Distribution::Default, &device);
            assert_same_values_and_gradients(&x0, max_pool_2x2, |x| {
                max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false)
            });
            // inference backend
            let x = x0.inner();
            max_pool_2x2(x.clone()).into_data().assert_approx_eq::<f32>(
                &max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], false).into_data(),
                Tolerance::absolute(0.0),
            );
        }
    }

    #[test]
    fn a_hand_worked_block_routes_its_gradient_to_the_winner() {
        // One 2×4 plane: blocks [[1, 5], [3, 2]] → 5 (top right), [[0, -1], [7, 7]] → 7 (the
        // first of the tie, bottom left).
        type B = CpuTrain;
        let device = Default::default();
        let x =
            Tensor::<B, 4>::from_floats([[[[1.0, 5.0, 0.0, -1.0], [3.0, 2.0, 7.0, 7.0]]]], &device)
                .require_grad();
        let y = max_pool_2x2(x.clone());
        assert_eq!(
            y.clone().inner().into_data().to_vec::<f32>().unwrap(),
            vec![5.0, 7.0]
        );
        let grads = (y * Tensor::<B, 4>::from_floats([[[[10.0, 20.0]]]], &device))
            .sum()
            .backward();
        let g = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(g, vec![0.0, 10.0, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0]);
    }
}

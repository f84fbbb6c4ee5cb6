//! Axis permutation that materialises its result with block copies on the CPU backend.
//!
//! Burn's `permute` is a view; the `reshape` that follows it in the Swin window partition, the
//! attention head split and the patch merging makes flex copy the view element by element through
//! a generic N-d strided iterator, which was ~40% of a Swin-UNet training step. Here the copy
//! moves whole runs: the trailing axes that the permutation leaves in place are one contiguous
//! block in both layouts (`ws·C` floats for the window partition, `head_dim` for the heads). On
//! `Flex` and `Autodiff<Flex>` (f32) the result is a contiguous tensor and the gradient is the
//! inverse permutation done the same way; other backends use Burn's `permute`.
//! `CTRCL_BURN_PERMUTE=1` in the environment turns this path off (for A/B benchmarks).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::{Bytes, Shape as StdShape};
use rayon::prelude::*;

use crate::cpu::{cast, CpuTrain, CpuTrainTensor};

fn enabled() -> bool {
    crate::switches::Switch::Permute.fast()
}

/// `x.permute(axes)`: output axis `i` is input axis `axes[i]`. Contiguous on the CPU backend.
pub fn permute<B: Backend, const D: usize>(x: Tensor<B, D>, axes: [usize; D]) -> Tensor<B, D> {
    let backend = TypeId::of::<B>();
    let cpu = backend == TypeId::of::<Flex>() || backend == TypeId::of::<CpuTrain>();
    if !cpu || x.dtype() != DType::F32 || !enabled() {
        return x.permute(axes);
    }
    let prim = x.into_primitive().tensor();
    let out: B::FloatTensorPrimitive = if backend == TypeId::of::<Flex>() {
        cast(permute_flex(&cast(prim), &axes))
    } else {
        cast(permute_autodiff(cast(prim), axes.to_vec()))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `x.swap_dims(a, b)` through [`permute`].
pub fn swap_dims<B: Backend, const D: usize>(x: Tensor<B, D>, a: usize, b: usize) -> Tensor<B, D> {
    let mut axes: [usize; D] = std::array::from_fn(|i| i);
    axes.swap(a, b);
    permute(x, axes)
}

fn permute_flex(x: &FlexTensor, axes: &[usize]) -> FlexTensor {
    let x = x.to_contiguous();
    let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
    let values = permute_copy(x.storage(), &shape, axes);
    let out_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(StdShape::from(out_shape)),
        DType::F32,
    )
}

/// The permuted copy of a contiguous array of `shape`: output axis `i` is input axis `axes[i]`.
pub fn permute_copy(src: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
    let n = shape.len();
    assert_eq!(axes.len(), n, "permute: one axis per dimension");
    assert_eq!(
        src.len(),
        shape.iter().product::<usize>(),
        "permute: data size"
    );
    // Trailing axes left in place form one contiguous run in both layouts.
    let kept = (0..n).rev().take_while(|&i| axes[i] == i).count();
    let outer = n - kept;
    let run: usize = shape[outer..].iter().product();
    let mut src_strides = vec![1usize; n];
    for i in (0..n.saturating_sub(1)).rev() {
        src_strides[i] = src_strides[i + 1] * shape[i + 1];
    }
    let dims: Vec<usize> = axes[..outer].iter().map(|&a| shape[a]).collect();
    let strides: Vec<usize> = axes[..outer].iter().map(|&a| src_strides[a]).collect();
    let mut dst = vec![0.0f32; src.len()];
    if outer == 0 || src.is_empty() {
        dst.copy_from_slice(src);
        return dst;
    }
    // Split the output along its first axis; each part walks the rest with an odometer. The
    // innermost outer axis moves `run`-long blocks; when nothing trails (`run == 1`, a transpose
    // such as `[B, C, HW] → [B, HW, C]`) the two innermost outer axes move as one tiled 2D
    // transpose instead of one-element copies.
    let part = dst.len() / dims[0];
    let tiled = run == 1 && outer >= 3;
    let levels = if tiled { 2 } else { 1 };
    dst.par_chunks_mut(part).enumerate().for_each(|(i0, out)| {
        let mut index = vec![0usize; outer];
        let mut offset = i0 * strides[0];
        let (inner_dim, inner_stride) = (dims[outer - 1], strides[outer - 1]);
        let (rows, row_stride) = (dims[outer - 2], strides[outer - 2]);
        let block_len = if tiled {
            rows * inner_dim
        } else {
            run * inner_dim
        };
        for block in out.chunks_exact_mut(block_len) {
            if tiled {
                transpose_tile(
                    block,
                    &src[offset..],
                    [rows, inner_dim],
                    [row_stride, inner_stride],
                );
            } else if run == 1 {
                for (j, v) in block.iter_mut().enumerate() {
                    *v = src[offset + j * inner_stride];
                }
            } else {
                // `inner_dim` runs `inner_stride` apart
                for (j, chunk) in block.chunks_exact_mut(run).enumerate() {
                    let s = offset + j * inner_stride;
                    chunk.copy_from_slice(&src[s..s + run]);
                }
            }
            // advance the axes outside the block, innermost first (axis 0 is this part)
            for d in (1..outer.saturating_sub(levels)).rev() {
                index[d] += 1;
                offset += strides[d];
                if index[d] < dims[d] {
                    break;
                }
                offset -= strides[d] * dims[d];
                index[d] = 0;
            }
        }
    });
    dst
}

/// `out[i·cols + j] = src[i·strides[0] + j·strides[1]]` for `[rows, cols]`, in square tiles so
/// that both the reads and the writes stay within a few cache lines at a time.
fn transpose_tile(out: &mut [f32], src: &[f32], [rows, cols]: [usize; 2], strides: [usize; 2]) {
    const TILE: usize = 16;
    if rows == 0 || cols == 0 {
        return;
    }
    // One bounds check for the whole tile walk instead of one per element (~2× faster here).
    assert!(out.len() >= rows * cols, "transpose: output size");
    assert!(
        (rows - 1) * strides[0] + (cols - 1) * strides[1] < src.len(),
        "transpose: input size"
    );
    for i0 in (0..rows).step_by(TILE) {
        for j0 in (0..cols).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                for j in j0..(j0 + TILE).min(cols) {
                    // SAFETY: i < rows and j < cols, so both indices are within the sizes
                    // asserted above.
                    unsafe {
                        *out.get_unchecked_mut(i * cols + j) =
                            *src.get_unchecked(i * strides[0] + j * strides[1]);
                    }
                }
            }
        }
    }
}

#[derive(Debug)]
struct PermuteBackward;

impl Backward<Flex, 1> for PermuteBackward {
    /// The forward axes.
    type State = Vec<usize>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [parent] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(parent) = parent {
            let mut inverse = vec![0; ops.state.len()];
            for (i, &a) in ops.state.iter().enumerate() {
                inverse[a] = i;
            }
            grads.register::<Flex>(parent.id, permute_flex(&grad, &inverse));
        }
    }
}

fn permute_autodiff(x: CpuTrainTensor, axes: Vec<usize>) -> CpuTrainTensor {
    match PermuteBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = permute_flex(&x.primitive, &axes);
            prep.finish(axes, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(permute_flex(&x.primitive, &axes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::assert_same_values_and_gradients;
    use burn::tensor::{Distribution, Tolerance};

    /// Index-by-index reference.
    fn naive(src: &[f32], shape: &[usize], axes: &[usize]) -> Vec<f32> {
        let n = shape.len();
        let out_shape: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
        let total: usize = shape.iter().product();
        let mut out = vec![0.0; total];
        for (flat, slot) in out.iter_mut().enumerate() {
            let mut rem = flat;
            let mut idx = vec![0; n];
            for i in (0..n).rev() {
                idx[i] = rem % out_shape[i];
                rem /= out_shape[i];
            }
            let mut src_idx = 0;
            for (d, &size) in shape.iter().enumerate() {
                let pos = axes.iter().position(|&a| a == d).unwrap();
                src_idx = src_idx * size + idx[pos];
            }
            *slot = src[src_idx];
        }
        out
    }

    #[test]
    fn block_copy_matches_index_by_index_permutation() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3, 4, 3, 4, 5], &[0, 1, 3, 2, 4, 5]), // window partition
            (&[6, 7, 3, 2, 4], &[2, 0, 3, 1, 4]),       // qkv split
            (&[3, 2, 5, 4], &[0, 2, 1, 3]),             // heads back
            (&[2, 3, 2, 3, 2, 4], &[0, 1, 3, 4, 2, 5]), // patch merging
            (&[4, 5, 3], &[2, 0, 1]),                   // bias table (no kept axes)
            (&[3, 4], &[1, 0]),
            (&[2, 5, 37], &[0, 2, 1]), // token ↔ map swap (tiled, ragged tiles)
            (&[2, 3, 20, 18], &[0, 1, 3, 2]), // tiled with an odometer axis outside
            (&[3, 2, 17, 19], &[2, 0, 3, 1]), // tiled, axes reordered outside too
            (&[5, 6], &[0, 1]),        // identity
        ];
        for (shape, axes) in cases {
            let len: usize = shape.iter().product();
            let src: Vec<f32> = (0..len).map(|v| v as f32).collect();
            assert_eq!(
                permute_copy(&src, shape, axes),
                naive(&src, shape, axes),
                "{shape:?} {axes:?}"
            );
        }
    }

    #[test]
    fn values_and_gradients_match_burns_permute() {
        let device = Default::default();
        let x0 = Tensor::<CpuTrain, 5>::random([3, 4, 3, 2, 5], Distribution::Default, &device);
        let axes = [2, 0, 3, 1, 4];
        assert_same_values_and_gradients(&x0, |x| permute(x, axes), |x| x.permute(axes));
        // inference backend
        let x = x0.inner();
        permute(x.clone(), axes)
            .into_data()
            .assert_approx_eq::<f32>(&x.permute(axes).into_data(), Tolerance::absolute(0.0));
    }
}

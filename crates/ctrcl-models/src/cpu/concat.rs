//! Concatenation (the decoders' skip connections) whose gradients are contiguous tensors on the
//! CPU backend.
//!
//! Burn's `cat` backward hands each input a strided slice of the output gradient. When that
//! input also feeds another op (a U-Net encoder map goes to the skip and to the max-pool), the
//! autodiff adds the two gradients through flex's generic strided iterator, on one thread
//! (~3% of a U-Net training step, all of it on the main thread while the workers wait). Here
//! the forward copies whole runs into the output and the backward copies each input's runs
//! back out into a fresh contiguous gradient, both in parallel. On `Flex` and `Autodiff<Flex>`
//! (f32, two to four inputs); otherwise Burn's `cat`. `CTRCL_BURN_CAT=1` in the environment
//! turns this path off (for A/B benchmarks).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::Shape as StdShape;
use rayon::prelude::*;

use crate::cpu::{cast, flex_tensor, record, CpuTrain, CpuTrainTensor};

fn enabled() -> bool {
    crate::switches::Switch::Cat.fast()
}

/// `Tensor::cat(tensors, dim)`: the inputs agree on every axis but `dim`.
pub fn cat<B: Backend, const D: usize>(tensors: Vec<Tensor<B, D>>, dim: usize) -> Tensor<B, D> {
    let backend = TypeId::of::<B>();
    let cpu = backend == TypeId::of::<Flex>() || backend == TypeId::of::<CpuTrain>();
    let fits = (2..=4).contains(&tensors.len())
        && tensors.iter().all(|t| t.dtype() == DType::F32)
        && dim < D;
    if !cpu || !fits || !enabled() {
        return Tensor::cat(tensors, dim);
    }
    let prims = tensors.into_iter().map(|t| t.into_primitive().tensor());
    let out: B::FloatTensorPrimitive = if backend == TypeId::of::<Flex>() {
        let flex: Vec<FlexTensor> = prims.map(cast).collect();
        cast(cat_flex(&flex, dim))
    } else {
        let inputs: Vec<CpuTrainTensor> = prims.map(cast).collect();
        cast(match inputs.len() {
            2 => cat_autodiff::<2>(inputs, dim),
            3 => cat_autodiff::<3>(inputs, dim),
            _ => cat_autodiff::<4>(inputs, dim),
        })
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// How the inputs lie in the output: `outer` blocks (the axes before `dim`), in each of which
/// input `i` is the contiguous run `[offsets[i], offsets[i] + runs[i])` of `total` elements.
#[derive(Debug, Clone)]
struct Geometry {
    shapes: Vec<Vec<usize>>,
    outer: usize,
    runs: Vec<usize>,
    offsets: Vec<usize>,
    total: usize,
}

impl Geometry {
    fn new(shapes: Vec<Vec<usize>>, dim: usize) -> Self {
        let first = &shapes[0];
        for s in &shapes[1..] {
            let agree =
                s.len() == first.len() && (0..s.len()).all(|a| a == dim || s[a] == first[a]);
            assert!(
                agree,
                "cat: shapes {first:?} and {s:?} differ off axis {dim}"
            );
        }
        let outer = first[..dim].iter().product();
        let runs: Vec<usize> = shapes.iter().map(|s| s[dim..].iter().product()).collect();
        let offsets = runs
            .iter()
            .scan(0, |acc, &r| {
                let start = *acc;
                *acc += r;
                Some(start)
            })
            .collect();
        let total = runs.iter().sum();
        Geometry {
            shapes,
            outer,
            runs,
            offsets,
            total,
        }
    }

    fn output_shape(&self, dim: usize) -> Vec<usize> {
        let mut shape = self.shapes[0].clone();
        shape[dim] = self.shapes.iter().map(|s| s[dim]).sum();
        shape
    }
}

fn shape_of(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().iter().copied().collect()
}

fn cat_flex(inputs: &[FlexTensor], dim: usize) -> FlexTensor {
    let inputs: Vec<FlexTensor> = inputs.iter().map(|t| t.to_contiguous()).collect();
    let g = Geometry::new(inputs.iter().map(shape_of).collect(), dim);
    let data: Vec<&[f32]> = inputs.iter().map(|t| t.storage()).collect();
    let mut out = vec![0.0f32; g.outer * g.total];
    if g.total > 0 {
        out.par_chunks_mut(g.total)
            .enumerate()
            .for_each(|(o, block)| {
                for ((src, &run), &offset) in data.iter().zip(&g.runs).zip(&g.offsets) {
                    block[offset..offset + run].copy_from_slice(&src[o * run..(o + 1) * run]);
                }
            });
    }
    flex_tensor(out, StdShape::from(g.output_shape(dim)))
}

/// Input `i`'s part of the output gradient `dy`, contiguous.
fn slice_grad(dy: &[f32], g: &Geometry, i: usize) -> FlexTensor {
    let (run, offset) = (g.runs[i], g.offsets[i]);
    let mut grad = vec![0.0f32; g.outer * run];
    if run > 0 {
        grad.par_chunks_mut(run).enumerate().for_each(|(o, dst)| {
            let start = o * g.total + offset;
            dst.copy_from_slice(&dy[start..start + run]);
        });
    }
    flex_tensor(grad, StdShape::from(g.shapes[i].clone()))
}

#[derive(Debug)]
struct CatBackward;

impl<const N: usize> Backward<Flex, N> for CatBackward {
    type State = Geometry;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let dy: &[f32] = dy.storage();
        for (i, parent) in ops.parents.into_iter().enumerate() {
            if let Some(parent) = parent {
                grads.register::<Flex>(parent.id, slice_grad(dy, &ops.state, i));
            }
        }
    }
}

fn cat_autodiff<const N: usize>(inputs: Vec<CpuTrainTensor>, dim: usize) -> CpuTrainTensor {
    let parents: [&CpuTrainTensor; N] = std::array::from_fn(|i| &inputs[i]);
    let flex: Vec<FlexTensor> = inputs.iter().map(|t| t.primitive.clone()).collect();
    record(CatBackward, parents, || {
        let g = Geometry::new(flex.iter().map(shape_of).collect(), dim);
        (cat_flex(&flex, dim), g)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    /// Values and every input's gradient (a non-uniform output weighting, and a second use of
    /// the first input so its gradients accumulate) through [`cat`] and through Burn's `cat`.
    fn parity<const D: usize>(shapes: &[[usize; D]], dim: usize) {
        let device = Default::default();
        let inputs: Vec<Tensor<CpuTrain, D>> = shapes
            .iter()
            .map(|&s| Tensor::random(s, Distribution::Default, &device))
            .collect();
        let run = |fast: bool| {
            let xs: Vec<_> = inputs
                .iter()
                .map(|t| t.clone().detach().require_grad())
                .collect();
            let y = if fast {
                cat(xs.clone(), dim)
            } else {
                Tensor::cat(xs.clone(), dim)
            };
            let n = y.shape().num_elements() as i64;
            let w = Tensor::<CpuTrain, 1, Int>::arange(0..n, &device)
                .float()
                .reshape(y.dims())
                .sin();
            let loss = (y.clone() * w).sum() + (xs[0].clone() * xs[0].clone()).sum();
            let grads = loss.backward();
            let dx: Vec<_> = xs.iter().map(|x| x.grad(&grads).unwrap()).collect();
            (y.inner(), dx)
        };
        let ((y_fast, dx_fast), (y_ref, dx_ref)) = (run(true), run(false));
        // Copies only: exact.
        let exact = Tolerance::<f32>::absolute(0.0);
        y_fast
            .into_data()
            .assert_approx_eq::<f32>(&y_ref.into_data(), exact);
        for (a, b) in dx_fast.into_iter().zip(dx_ref) {
            a.into_data().assert_approx_eq::<f32>(&b.into_data(), exact);
        }
    }

    #[test]
    fn values_and_gradients_equal_burns_cat() {
        parity(&[[2, 3, 4, 5], [2, 2, 4, 5]], 1); // U-Net skip (channels)
        parity(&[[2, 7, 3], [2, 7, 5]], 2); // Swin-UNet skip (token channels)
        parity(&[[2, 1, 3, 3], [2, 4, 3, 3], [2, 2, 3, 3], [2, 3, 3, 3]], 1); // SegFormer fuse
        parity(&[[3, 2], [1, 2], [2, 2]], 0); // leading axis
    }

    #[test]
    fn inference_backend_equals_burns_cat() {
        let device = Default::default();
        let a = Tensor::<Flex, 3>::random([2, 3, 4], Distribution::Default, &device);
        let b = Tensor::<Flex, 3>::random([2, 3, 1], Distribution::Default, &device);
        let got = cat(vec![a.clone(), b.clone()], 2);
        let want = Tensor::cat(vec![a, b], 2);
        assert_eq!(got.into_data(), want.into_data());
    }
}

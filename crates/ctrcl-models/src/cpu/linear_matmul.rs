//! Linear layers and batched matrix products as direct GEMMs with their own backward on the CPU
//! backend (the transformers' projections, MLPs and attention products).
//!
//! Burn 0.21's flex matmul allocates each output as a zeroed byte vector that is then copied
//! into aligned storage (`FlexTensor::empty`: a `memset` and a `memcpy` per product, ~10% of a
//! Swin-UNet training step), runs a linear layer as a batched product against the broadcast
//! weight, and its autodiff computes the weight gradient per batch entry and sums afterwards.
//! Here a linear layer is one `[M, d_in] · [d_in, d_out]` GEMM over all leading axes, with its
//! input, weight and bias gradients as GEMMs (the weight gradient summed over fixed-size row
//! blocks in a fixed order, so it is the same on any number of threads); a batched product
//! reads its operands in their own strides (a transposed key is not copied) and its gradients
//! are the two transposed products. Outputs are written straight into `Vec<f32>`.
//! On `Flex` and `Autodiff<Flex>` (f32, equal batch axes); other backends, dtypes and
//! broadcasting products use Burn's ops. `CTRCL_BURN_MATMUL=1` in the environment turns this
//! path off (for A/B benchmarks).
//!
//! Length: ~490 lines of kernels and dispatch, ~125 of parity tests against Burn's ops.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::Shape as StdShape;
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use crate::cpu::{cast, flex_tensor, record, CpuTrain, CpuTrainTensor};

fn enabled() -> bool {
    crate::switches::Switch::Matmul.fast()
}

/// Which CPU backend `B` is, if any.
fn cpu_backend<B: Backend>() -> Option<bool> {
    let backend = TypeId::of::<B>();
    if backend == TypeId::of::<Flex>() {
        Some(false)
    } else if backend == TypeId::of::<CpuTrain>() {
        Some(true)
    } else {
        None
    }
}

/// `layer.forward(x)`: `x` `[…, d_in]` → `[…, d_out]`.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let weight = layer.weight.val();
    let bias = layer.bias.as_ref().map(|b| b.val());
    let f32s = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32);
    let (Some(autodiff), true, true, true) = (cpu_backend::<B>(), f32s, enabled(), D >= 2) else {
        return layer.forward(x);
    };
    let prim = |t: TensorPrimitive<B>| t.tensor();
    let x = prim(x.into_primitive());
    let weight = prim(weight.into_primitive());
    let bias = bias.map(|b| prim(b.into_primitive()));
    let out: B::FloatTensorPrimitive = if autodiff {
        cast(linear_autodiff(cast(x), cast(weight), bias.map(cast)))
    } else {
        cast(linear_flex(
            &cast(x),
            &cast(weight),
            bias.map(cast).as_ref(),
        ))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// `a.matmul(b)`: `[…, n, k] × […, k, m]` → `[…, n, m]` (the batch axes equal; Burn's op
/// broadcasts otherwise).
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    let (da, db) = (a.dims(), b.dims());
    let fits = D >= 2
        && da[..D - 2] == db[..D - 2]
        && da[D - 1] == db[D - 2]
        && a.dtype() == DType::F32
        && b.dtype() == DType::F32;
    let (Some(autodiff), true, true) = (cpu_backend::<B>(), fits, enabled()) else {
        return a.matmul(b);
    };
    let a = a.into_primitive().tensor();
    let b = b.into_primitive().tensor();
    let out: B::FloatTensorPrimitive = if autodiff {
        cast(matmul_autodiff(cast(a), cast(b)))
    } else {
        cast(matmul_flex(&cast(a), &cast(b)))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// A batch of equally shaped matrices inside one flex tensor's storage, in that tensor's own
/// strides: `[batch…, rows, cols]`.
#[derive(Clone, Copy)]
struct Matrix {
    rows: usize,
    cols: usize,
    /// (row, column) strides in elements.
    strides: (isize, isize),
}

impl Matrix {
    fn transposed(self) -> Self {
        Matrix {
            rows: self.cols,
            cols: self.rows,
            strides: (self.strides.1, self.strides.0),
        }
    }
}

/// `t` as a batch of matrices: the matrix geometry and each matrix's start in `t.storage()`.
/// `None` for a layout with negative strides (the caller copies to contiguous first).
fn matrices(t: &FlexTensor) -> Option<(Matrix, Vec<usize>)> {
    let layout = t.layout();
    let shape = layout.shape();
    let strides = layout.strides();
    let rank = shape.num_dims();
    if strides.iter().any(|&s| s < 0) {
        return None;
    }
    let matrix = Matrix {
        rows: shape[rank - 2],
        cols: shape[rank - 1],
        strides: (strides[rank - 2], strides[rank - 1]),
    };
    let mut starts = vec![layout.start_offset()];
    for axis in 0..rank - 2 {
        let step = strides[axis] as usize;
        starts = starts
            .iter()
            .flat_map(|&s| (0..shape[axis]).map(move |i| s + i * step))
            .collect();
    }
    // Every element each matrix reaches lies inside the storage (checked once here, so the
    // GEMM calls below stay in bounds).
    let len = t.storage::<f32>().len();
    let reach = |n: usize, s: isize| n.saturating_sub(1) * s as usize;
    let last = reach(matrix.rows, matrix.strides.0) + reach(matrix.cols, matrix.strides.1);
    let empty = matrix.rows == 0 || matrix.cols == 0;
    assert!(
        empty || starts.iter().all(|&s| s + last < len),
        "matmul: tensor layout outside its storage"
    );
    Some((matrix, starts))
}

/// `matrices(t)`, copying `t` to contiguous first where its layout needs it. Returns the tensor
/// whose storage the starts index.
fn matrices_of(t: &FlexTensor) -> (FlexTensor, Matrix, Vec<usize>) {
    match matrices(t) {
        Some((m, starts)) => (t.clone(), m, starts),
        None => {
            let t = t.to_contiguous();
            let (m, starts) = matrices(&t).expect("a contiguous layout has positive strides");
            (t, m, starts)
        }
    }
}

/// `dst[n, m] (+)= lhs[n, k] · rhs[k, m]`, `dst` row-major; `lhs` and `rhs` start at the given
/// offsets of their storages and are read in their strides.
#[allow(clippy::too_many_arguments)] // the GEMM's own arguments, named
fn product(
    dst: &mut [f32],
    accumulate: bool,
    (lhs, lhs_start, lhs_m): (&[f32], usize, Matrix),
    (rhs, rhs_start, rhs_m): (&[f32], usize, Matrix),
    parallelism: Parallelism,
) {
    let (n, k, m) = (lhs_m.rows, lhs_m.cols, rhs_m.cols);
    assert_eq!(rhs_m.rows, k, "matmul: inner sizes");
    assert!(dst.len() >= n * m, "matmul: output size");
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..n * m].fill(0.0);
        }
        return;
    }
    // SAFETY: `dst` holds `n·m` elements, written row-major; every `lhs`/`rhs` element the
    // strides reach from the starts is inside the storage (checked in `matrices`, or the
    // operands are contiguous blocks of exactly `n·k` and `k·m` elements).
    unsafe {
        gemm(
            n,
            m,
            k,
            dst.as_mut_ptr(),
            1,
            m as isize,
            accumulate,
            lhs.as_ptr().add(lhs_start),
            lhs_m.strides.1,
            lhs_m.strides.0,
            rhs.as_ptr().add(rhs_start),
            rhs_m.strides.1,
            rhs_m.strides.0,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Rows per block of a linear layer's row-parallel GEMMs and of its weight-gradient partial sums.
const ROW_BLOCK: usize = 512;

/// A contiguous row-major `[rows, cols]` matrix.
fn dense(rows: usize, cols: usize) -> Matrix {
    Matrix {
        rows,
        cols,
        strides: (cols as isize, 1),
    }
}

/// The product of every batch entry, in parallel over the batch (or inside the GEMM when the
/// batch is smaller than the thread count): `[batch, n, m]` row-major.
fn batched_product(
    (lhs, lhs_starts, lhs_m): (&[f32], &[usize], Matrix),
    (rhs, rhs_starts, rhs_m): (&[f32], &[usize], Matrix),
) -> Vec<f32> {
    let size = lhs_m.rows * rhs_m.cols;
    let mut out = vec![0.0f32; lhs_starts.len() * size];
    if size == 0 {
        return out;
    }
    let run = |(i, dst): (usize, &mut [f32]), parallelism| {
        let lhs = (lhs, lhs_starts[i], lhs_m);
        let rhs = (rhs, rhs_starts[i], rhs_m);
        product(dst, false, lhs, rhs, parallelism);
    };
    if lhs_starts.len() >= rayon::current_num_threads() {
        out.par_chunks_mut(size)
            .enumerate()
            .for_each(|entry| run(entry, Parallelism::None));
    } else {
        for entry in out.chunks_mut(size).enumerate() {
            run(entry, Parallelism::Rayon(0));
        }
    }
    out
}

fn matmul_flex(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let (a, a_m, a_starts) = matrices_of(a);
    let (b, b_m, b_starts) = matrices_of(b);
    let out = batched_product((a.storage(), &a_starts, a_m), (b.storage(), &b_starts, b_m));
    let mut shape: Vec<usize> = a.layout().shape().iter().copied().collect();
    *shape.last_mut().unwrap() = b_m.cols;
    flex_tensor(out, StdShape::from(shape))
}

/// The operands of a batched product, kept for its backward.
#[derive(Debug, Clone)]
struct MatmulSaved {
    a: FlexTensor,
    b: FlexTensor,
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    type State = MatmulSaved;

    /// `dA = dC · Bᵀ`, `dB = Aᵀ · dC`, per batch entry.
    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dc = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (a, a_m, a_starts) = matrices_of(&ops.state.a);
        let (b, b_m, b_starts) = matrices_of(&ops.state.b);
        let dc_m = dense(a_m.rows, b_m.cols);
        let dc_starts: Vec<usize> = (0..a_starts.len())
            .map(|i| i * a_m.rows * b_m.cols)
            .collect();
        let dc_data: &[f32] = dc.storage();
        if let Some(node) = node_a {
            let da = batched_product(
                (dc_data, &dc_starts, dc_m),
                (b.storage(), &b_starts, b_m.transposed()),
            );
            grads.register::<Flex>(node.id, flex_tensor(da, a.layout().shape().clone()));
        }
        if let Some(node) = node_b {
            let db = batched_product(
                (a.storage(), &a_starts, a_m.transposed()),
                (dc_data, &dc_starts, dc_m),
            );
            grads.register::<Flex>(node.id, flex_tensor(db, b.layout().shape().clone()));
        }
    }
}

fn matmul_autodiff(a: CpuTrainTensor, b: CpuTrainTensor) -> CpuTrainTensor {
    record(MatmulBackward, [&a, &b], || {
        let saved = MatmulSaved {
            a: a.primitive.clone(),
            b: b.primitive.clone(),
        };
        (matmul_flex(&a.primitive, &b.primitive), saved)
    })
}

/// `x` as `[M, d_in]` rows (contiguous) and the output shape `[…, d_out]`.
fn rows_of(x: &FlexTensor, d_out: usize) -> (FlexTensor, usize, StdShape) {
    let x = x.to_contiguous();
    let shape = x.layout().shape();
    let rows: usize = shape.iter().take(shape.num_dims() - 1).product();
    let mut out_shape: Vec<usize> = shape.iter().copied().collect();
    *out_shape.last_mut().unwrap() = d_out;
    (x, rows, StdShape::from(out_shape))
}

/// `y = x · W + b`: `x` `[…, d_in]`, `weight` `[d_in, d_out]`, `bias` `[d_out]` → `[…, d_out]`,
/// in blocks of [`ROW_BLOCK`] rows in parallel.
fn linear_flex(x: &FlexTensor, weight: &FlexTensor, bias: Option<&FlexTensor>) -> FlexTensor {
    let (w, w_m, w_starts) = matrices_of(weight);
    let (x, rows, out_shape) = rows_of(x, w_m.cols);
    let (d_in, d_out) = (w_m.rows, w_m.cols);
    let bias = bias.map(|b| b.to_contiguous());
    let bias: Option<&[f32]> = bias.as_ref().map(|b| b.storage());
    let (x_data, w_data): (&[f32], &[f32]) = (x.storage(), w.storage());
    let mut y = vec![0.0f32; rows * d_out];
    if d_out > 0 {
        y.par_chunks_mut(ROW_BLOCK * d_out)
            .enumerate()
            .for_each(|(block, y)| {
                let n = y.len() / d_out;
                if let Some(bias) = bias {
                    for row in y.chunks_exact_mut(d_out) {
                        row.copy_from_slice(bias);
                    }
                }
                let lhs = (x_data, block * ROW_BLOCK * d_in, dense(n, d_in));
                let rhs = (w_data, w_starts[0], w_m);
                product(y, bias.is_some(), lhs, rhs, Parallelism::None);
            });
    }
    flex_tensor(y, out_shape)
}

/// What a linear layer's backward needs: its input and weight.
#[derive(Debug, Clone)]
struct LinearSaved {
    x: FlexTensor,
    weight: FlexTensor,
}

/// Backward of a linear layer without bias: parents `[x, weight]`.
#[derive(Debug)]
struct LinearBackward;

/// Backward of a linear layer with bias: parents `[x, weight, bias]`.
#[derive(Debug)]
struct LinearBiasBackward;

impl Backward<Flex, 2> for LinearBackward {
    type State = LinearSaved;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        linear_grads(ops, grads);
    }
}

impl Backward<Flex, 3> for LinearBiasBackward {
    type State = LinearSaved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        linear_grads(ops, grads);
    }
}

/// `dx = dy · Wᵀ` (row blocks in parallel), `dW = xᵀ · dy` and `db = Σ_rows dy` (per row block,
/// then summed in block order).
fn linear_grads<const N: usize>(ops: Ops<LinearSaved, N>, grads: &mut Gradients) {
    let mut parents = ops.parents.into_iter();
    let (node_x, node_w, node_b) = (
        parents.next().flatten(),
        parents.next().flatten(),
        parents.next().flatten(),
    );
    let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
    let (w, w_m, w_starts) = matrices_of(&ops.state.weight);
    let (d_in, d_out) = (w_m.rows, w_m.cols);
    let (x, rows, _) = rows_of(&ops.state.x, d_out);
    let (x_data, dy_data): (&[f32], &[f32]) = (x.storage(), dy.storage());
    if let Some(node) = node_x {
        let mut dx = vec![0.0f32; rows * d_in];
        if d_in > 0 {
            let w_t = (w.storage(), w_starts[0], w_m.transposed());
            dx.par_chunks_mut(ROW_BLOCK * d_in)
                .enumerate()
                .for_each(|(block, dx)| {
                    let n = dx.len() / d_in;
                    let lhs = (dy_data, block * ROW_BLOCK * d_out, dense(n, d_out));
                    product(dx, false, lhs, w_t, Parallelism::None);
                });
        }
        grads.register::<Flex>(node.id, flex_tensor(dx, x.layout().shape().clone()));
    }
    if node_w.is_none() && node_b.is_none() {
        return;
    }
    // Per row block: its [d_in, d_out] weight-gradient term and its [d_out] bias term.
    let blocks: Vec<(Vec<f32>, Vec<f64>)> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|block| {
            let n = ROW_BLOCK.min(rows - block * ROW_BLOCK);
            let mut dw = vec![0.0f32; if node_w.is_some() { d_in * d_out } else { 0 }];
            if node_w.is_some() {
                let lhs = (
                    x_data,
                    block * ROW_BLOCK * d_in,
                    dense(n, d_in).transposed(),
                );
                let rhs = (dy_data, block * ROW_BLOCK * d_out, dense(n, d_out));
                product(&mut dw, false, lhs, rhs, Parallelism::None);
            }
            let mut db = vec![0.0f64; if node_b.is_some() { d_out } else { 0 }];
            if node_b.is_some() {
                let dy = &dy_data[block * ROW_BLOCK * d_out..(block * ROW_BLOCK + n) * d_out];
                for row in dy.chunks_exact(d_out) {
                    for (s, &v) in db.iter_mut().zip(row) {
                        *s += v as f64;
                    }
                }
            }
            (dw, db)
        })
        .collect();
    if let Some(node) = node_w {
        let mut dw = vec![0.0f32; d_in * d_out];
        for (part, _) in &blocks {
            for (s, &v) in dw.iter_mut().zip(part) {
                *s += v;
            }
        }
        grads.register::<Flex>(node.id, flex_tensor(dw, StdShape::new([d_in, d_out])));
    }
    if let Some(node) = node_b {
        let mut db = vec![0.0f64; d_out];
        for (_, part) in &blocks {
            for (s, &v) in db.iter_mut().zip(part) {
                *s += v;
            }
        }
        let db = db.into_iter().map(|v| v as f32).collect();
        grads.register::<Flex>(node.id, flex_tensor(db, StdShape::new([d_out])));
    }
}

fn linear_autodiff(
    x: CpuTrainTensor,
    weight: CpuTrainTensor,
    bias: Option<CpuTrainTensor>,
) -> CpuTrainTensor {
    let forward = || {
        let out = linear_flex(
            &x.primitive,
            &weight.primitive,
            bias.as_ref().map(|b| &b.primitive),
        );
        let saved = LinearSaved {
            x: x.primitive.clone(),
            weight: weight.primitive.clone(),
        };
        (out, saved)
    };
    match &bias {
        Some(b) => record(LinearBiasBackward, [&x, &weight, b], forward),
        None => record(LinearBackward, [&x, &weight], forward),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, Tolerance};

    type B = CpuTrain;

    /// f32 sums in a different order (and Burn's per-batch weight gradient summed afterwards):
    /// relative 1e-4 is loose for rounding, far tighter than a wrong index or missing term.
    fn tol() -> Tolerance<f32> {
        Tolerance::rel_abs(1e-4, 1e-5)
    }

    fn assert_close<const D: usize>(ours: Tensor<Flex, D>, burns: Tensor<Flex, D>, what: &str) {
        assert_eq!(ours.dims(), burns.dims(), "{what}: shape");
        ours.into_data()
            .assert_approx_eq::<f32>(&burns.into_data(), tol());
    }

    /// Values and the gradients of x, W and b under a non-uniform output weighting, through
    /// [`linear`] and through Burn's `Linear::forward` (its own autodiff: the reference).
    fn linear_parity(shape: [usize; 3], d_out: usize, bias: bool) {
        let device = Default::default();
        let mut layer = LinearConfig::new(shape[2], d_out)
            .with_bias(bias)
            .init::<B>(&device);
        let x0 = Tensor::<B, 3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool, layer: &Linear<B>| {
            let x = x0.clone().detach().require_grad();
            let y = if fast {
                linear(layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let r = y.clone().detach().sin();
            let grads = (y.clone() * r).sum().backward();
            let dw = layer.weight.val().grad(&grads).unwrap();
            let db = layer.bias.as_ref().map(|b| b.val().grad(&grads).unwrap());
            (y.inner(), x.grad(&grads).unwrap(), dw, db)
        };
        // Fresh parameter leaves per run, so the two graphs do not share gradients.
        let fresh = |layer: &Linear<B>| Linear {
            weight: Param::from_tensor(layer.weight.val().detach()),
            bias: layer
                .bias
                .as_ref()
                .map(|b| Param::from_tensor(b.val().detach())),
        };
        let ours = run(true, &fresh(&layer));
        layer = fresh(&layer);
        let burns = run(false, &layer);
        let what = format!("linear {shape:?} → {d_out} bias {bias}");
        assert_close(ours.0, burns.0, &format!("{what}: y"));
        assert_close(ours.1, burns.1, &format!("{what}: dx"));
        assert_close(ours.2, burns.2, &format!("{what}: dW"));
        assert_eq!(ours.3.is_some(), bias);
        if let (Some(a), Some(b)) = (ours.3, burns.3) {
            assert_close(a, b, &format!("{what}: db"));
        }
    }

    #[test]
    fn linear_matches_burns_values_and_gradients() {
        // More rows than one block (ragged last block), with and without bias, a 1-row input.
        linear_parity([3, 400, 7], 5, true);
        linear_parity([2, 9, 6], 11, false);
        linear_parity([1, 1, 4], 3, true);
    }

    #[test]
    fn linear_inference_matches_burns() {
        let device = Default::default();
        let layer = LinearConfig::new(6, 4).init::<Flex>(&device);
        let x = Tensor::<Flex, 3>::random([2, 700, 6], Distribution::Default, &device);
        assert_close(linear(&layer, x.clone()), layer.forward(x), "inference");
    }

    #[test]
    fn matmul_matches_burns_with_strided_operands() {
        let device = Default::default();
        let a0 = Tensor::<B, 4>::random([3, 2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        let k0 = Tensor::<B, 4>::random([3, 2, 6, 4], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let a = a0.clone().detach().require_grad();
            let k = k0.clone().detach().require_grad();
            // The key transposed as a view, as in attention: read in its strides.
            let kt = k.clone().swap_dims(2, 3);
            let y = if fast {
                matmul(a.clone(), kt)
            } else {
                a.clone().matmul(kt)
            };
            let r = y.clone().detach().sin();
            let grads = (y.clone() * r).sum().backward();
            (y.inner(), a.grad(&grads).unwrap(), k.grad(&grads).unwrap())
        };
        let (ours, burns) = (run(true), run(false));
        assert_close(ours.0, burns.0, "scores");
        assert_close(ours.1, burns.1, "d query");
        assert_close(ours.2, burns.2, "d key");
        // A broadcast product is Burn's op, same result.
        let w = Tensor::<B, 4>::random([1, 1, 4, 3], Distribution::Default, &device);
        assert_close(
            matmul(a0.clone(), w.clone()).inner(),
            a0.matmul(w).inner(),
            "broadcast",
        );
    }

    #[test]
    fn weight_gradient_is_the_same_on_any_number_of_threads() {
        let device = Default::default();
        let layer = LinearConfig::new(5, 3).init::<B>(&device);
        let x0 = Tensor::<B, 3>::random([2, 1500, 5], Distribution::Default, &device);
        let grad_on = |threads: usize| {
            crate::on_threads(threads, || {
                let x = x0.clone().detach().require_grad();
                let y = linear(&layer, x);
                let grads = (y.clone() * y.clone().detach().cos()).sum().backward();
                layer.weight.val().grad(&grads).unwrap().into_data()
            })
        };
        assert_eq!(grad_on(1), grad_on(3));
    }
}

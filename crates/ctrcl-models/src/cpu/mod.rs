//! The CPU fast path, in one wing: the fused kernels for the flex backend with their own
//! backward, and the autodiff plumbing they share. Models never call in here; they compute
//! through `crate::ops`, which names these ops (and would name Burn's, were this wing deleted).
//!
//! Each op module keeps its dispatch with its kernel: on `Flex` / `Autodiff<Flex>` at f32 with
//! its `CTRCL_BURN_*` switch off (`crate::switches`) it runs the kernel, otherwise Burn's op.
//! - `conv/`: Conv2d as an NCHW im2col GEMM (`gemm_kernels.rs` on plain slices),
//!   `depthwise.rs` for SegFormer's depthwise 3×3, `up.rs` for the U-Net's 2×2 stride-2
//!   transposed convolution;
//! - `linear_matmul.rs`: linear layers and batched matmuls as direct GEMMs;
//! - `batchnorm.rs` (BatchNorm2d's fused train mode; the layer itself is `crate::batchnorm`),
//!   `layer_norm.rs`, `activation.rs` (GELU, last-axis softmax), `pool.rs` (2×2 max-pool),
//!   `concat.rs`, `resize.rs` (bilinear), `permute.rs` (block copies, tiled transposes).
//!
//! This file is the plumbing: the CPU training backend's types, the checked cast between a
//! generic backend's tensors and the concrete flex ones, and the recording of a fused op as one
//! autodiff node with its backward. The ops above and ctrcl-train's losses build on it; it
//! imports none of them.

pub mod activation;
pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod layer_norm;
pub mod linear_matmul;
pub mod permute;
pub mod pool;
pub mod resize;

use std::any::Any;

use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::BackendTypes;
use burn::tensor::DType;
use burn_std::{Bytes, Shape as StdShape};

/// The CPU training backend, and its float tensor type (shared with the other fused CPU ops
/// here and in ctrcl-train's losses).
pub type CpuTrain = Autodiff<Flex>;
pub type CpuTrainTensor = <CpuTrain as BackendTypes>::FloatTensorPrimitive;

/// Moves a value between two names of the same type (checked at run time): a generic backend's
/// tensor primitive to the concrete CPU type after a `TypeId` check, and back.
pub fn cast<From: 'static, To: 'static>(value: From) -> To {
    let boxed: Box<dyn Any> = Box::new(value);
    *boxed
        .downcast::<To>()
        .expect("cpu: tensor type checked by TypeId before the cast")
}

/// A contiguous f32 flex tensor of `values` in `shape` (shared by the fused CPU ops).
pub fn flex_tensor(values: Vec<f32>, shape: StdShape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// The four axes of a rank-4 flex tensor (shared by the fused CPU ops).
pub fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

/// A flex tensor's f32 values in row-major order (small parameters such as γ and β).
pub fn values(t: &FlexTensor) -> Vec<f32> {
    t.to_contiguous().storage::<f32>().to_vec()
}

/// Records a one-input fused CPU op as one autodiff node: `forward` gives the output and what
/// `op`'s backward needs (dropped when nothing asks for gradients). Shared by the fused ops
/// here and in ctrcl-train's losses.
pub fn record_unary<Op: Backward<Flex, 1>>(
    op: Op,
    parent: &CpuTrainTensor,
    forward: impl FnOnce() -> (FlexTensor, Op::State),
) -> CpuTrainTensor {
    record(op, [parent], forward)
}

/// [`record_unary`] for an op with `N` inputs (`parents`, in the order its backward expects).
pub fn record<Op: Backward<Flex, N>, const N: usize>(
    op: Op,
    parents: [&CpuTrainTensor; N],
    forward: impl FnOnce() -> (FlexTensor, Op::State),
) -> CpuTrainTensor {
    match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let (out, state) = forward();
            prep.finish(state, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward().0),
    }
}

/// The body of a one-input fused op's `Backward::backward`: takes the upstream gradient and, if
/// the input wants one, registers `input_grad(upstream, state)` for it.
pub fn backprop_unary<S>(
    ops: Ops<S, 1>,
    grads: &mut Gradients,
    input_grad: impl FnOnce(&FlexTensor, S) -> FlexTensor,
) {
    let [parent] = ops.parents;
    let upstream = grads.consume::<Flex>(&ops.node);
    if let Some(parent) = parent {
        grads.register::<Flex>(parent.id, input_grad(&upstream, ops.state));
    }
}

/// The body of a fused op's `Backward::backward` whose gradients all come from one computation
/// (LayerNorm, BatchNorm: `[x, γ, β]`): takes the upstream gradient, computes
/// `grads_of(upstream, state)` and registers each for the parents that want one.
pub fn backprop_all<S, const N: usize>(
    ops: Ops<S, N>,
    grads: &mut Gradients,
    grads_of: impl FnOnce(&FlexTensor, &S) -> [FlexTensor; N],
) {
    let upstream = grads.consume::<Flex>(&ops.node);
    let computed = grads_of(&upstream, &ops.state);
    for (parent, grad) in ops.parents.into_iter().zip(computed) {
        if let Some(parent) = parent {
            grads.register::<Flex>(parent.id, grad);
        }
    }
}

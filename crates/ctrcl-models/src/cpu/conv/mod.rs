//! The students' 2D convolution: Burn's `Conv2d` module and weights, with a faster backward on
//! the default CPU training backend.
//!
//! [`forward`] is `Conv2d::forward` for every backend. On the CPU backend (`Flex` for inference,
//! `Autodiff<Flex>` for training) the convolution and, in training, its input, weight and bias
//! gradients are GEMMs over an im2col matrix ([`gemm_kernels`]), recorded as our own autodiff op,
//! instead of flex's NHWC forward and Burn 0.21's transposed-convolution backward. Other
//! backends (CUDA, Vulkan) and grouped convolutions other than stride-1 depthwise ones
//! ([`depthwise`]) run Burn's own op. The switch is a runtime type check (`TypeId`), so the
//! models stay generic over `B: Backend` and the weights, records and import key maps are
//! Burn's `Conv2d`'s.
//!
//! `CTRCL_BURN_CONV=1` in the environment turns this path off (for A/B benchmarks).

pub mod depthwise;
pub mod gemm_kernels;
pub mod up;

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::prelude::*;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::Shape as StdShape;

use crate::cpu::{cast, flex_tensor, CpuTrain, CpuTrainTensor};
use gemm_kernels::ConvGeometry;

/// Whether the GEMM convolution is enabled (default yes; `CTRCL_BURN_CONV=1` disables it).
pub fn fast_backward_enabled() -> bool {
    crate::switches::Switch::Conv.fast()
}

/// `conv.forward(x)`: `x` `[B, C_in, H, W]` → `[B, C_out, H_out, W_out]`.
pub fn forward<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [kh, kw] = conv.kernel_size;
    let padding = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Same if conv.stride == [1, 1] && kh % 2 == 1 && kw % 2 == 1 => {
            [(kh - 1) / 2, (kw - 1) / 2]
        }
        // Asymmetric padding: Burn's own op.
        _ => return conv.forward(x),
    };
    let options = ConvOptions::new(conv.stride, padding, conv.dilation, conv.groups);
    conv2d_fast(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        options,
    )
}

/// Functional 2D convolution: in an autocast region ([`crate::precision`]) Burn's `conv2d` in
/// the half dtype; else the GEMM path on `Flex` and `Autodiff<Flex>` (f32, `groups = 1`; the
/// [`depthwise`] kernels for `groups = C_in = C_out` at stride 1), Burn's `conv2d` otherwise.
/// Shapes as [`forward`]; `weight` `[C_out, C_in / groups, kh, kw]`, `bias` `[C_out]`.
pub fn conv2d_fast<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: ConvOptions<2>,
) -> Tensor<B, 4> {
    if let Some(half) = crate::precision::half() {
        return crate::precision::conv2d_in(half, x, weight, bias, options);
    }
    let [_, channels_in, _, _] = x.dims();
    let [channels_out, _, _, _] = weight.dims();
    let depthwise =
        depthwise::is_depthwise(options.groups, channels_in, channels_out, options.stride);
    let supported = (options.groups == 1 || depthwise)
        && x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && bias.as_ref().is_none_or(|b| b.dtype() == DType::F32)
        && fast_backward_enabled();
    let backend = TypeId::of::<B>();
    if !supported || (backend != TypeId::of::<CpuTrain>() && backend != TypeId::of::<Flex>()) {
        return conv2d(x, weight, bias, options);
    }
    let prim = |t: TensorPrimitive<B>| t.tensor();
    let x = prim(x.into_primitive());
    let weight = prim(weight.into_primitive());
    let bias = bias.map(|b| prim(b.into_primitive()));
    let out: B::FloatTensorPrimitive = if backend == TypeId::of::<Flex>() {
        let out = flex_conv2d(cast(x), cast(weight), bias.map(cast), &options);
        cast(out)
    } else {
        cast(autodiff_conv2d(
            cast(x),
            cast(weight),
            bias.map(cast),
            options,
        ))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// [`gemm_kernels::forward`] on flex tensors (f32).
fn flex_conv2d(
    x: FlexTensor,
    weight: FlexTensor,
    bias: Option<FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let g = geometry(&x, &weight, options);
    let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
    let bias = bias.map(|b| b.to_contiguous());
    let bias = bias.as_ref().map(|b| b.storage());
    let y = if depthwise::applies(&g, options.groups) {
        depthwise::forward(&g, x.storage(), weight.storage(), bias)
    } else {
        gemm_kernels::forward(&g, x.storage(), weight.storage(), bias)
    };
    let [oh, ow] = g.output_size();
    flex_tensor(y, StdShape::new([g.batch, g.channels_out, oh, ow]))
}

/// Backward of a convolution without bias: parents `[x, weight]`.
#[derive(Debug)]
struct GemmConv2dBackward;

/// Backward of a convolution with bias: parents `[x, weight, bias]`.
#[derive(Debug)]
struct GemmConv2dBiasBackward;

/// Node ids of the checkpointed input and weight, and the options.
type BackwardState = (NodeId, NodeId, ConvOptions<2>);

impl Backward<Flex, 2> for GemmConv2dBackward {
    type State = BackwardState;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        register_grads(ops, grads, ckpt);
    }
}

impl Backward<Flex, 3> for GemmConv2dBiasBackward {
    type State = BackwardState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, ckpt: &mut Checkpointer) {
        register_grads(ops, grads, ckpt);
    }
}

/// Computes and registers the gradients of the parents that need one (`[x, weight, bias?]`).
fn register_grads<const N: usize>(
    ops: Ops<BackwardState, N>,
    grads: &mut Gradients,
    checkpointer: &mut Checkpointer,
) {
    let mut parents = ops.parents.into_iter();
    let node_x = parents.next().flatten();
    let node_weight = parents.next().flatten();
    let node_bias = parents.next().flatten();
    let (x_id, weight_id, options) = ops.state;
    let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
    let x = checkpointer.retrieve_node_output::<FlexTensor>(x_id);
    let weight = checkpointer.retrieve_node_output::<FlexTensor>(weight_id);
    let g = geometry(&x, &weight, &options);
    let dy_data: &[f32] = dy.storage();
    let depthwise = depthwise::applies(&g, options.groups);
    if let Some(node) = node_x {
        let w = weight.to_contiguous();
        let dx = if depthwise {
            depthwise::input_grad(&g, w.storage(), dy_data)
        } else {
            gemm_kernels::input_grad(&g, w.storage(), dy_data)
        };
        grads.register::<Flex>(node.id, flex_tensor(dx, x.layout().shape().clone()));
    }
    if let Some(node) = node_weight {
        let xc = x.to_contiguous();
        let dw = if depthwise {
            depthwise::weight_grad(&g, xc.storage(), dy_data)
        } else {
            gemm_kernels::weight_grad(&g, xc.storage(), dy_data)
        };
        grads.register::<Flex>(node.id, flex_tensor(dw, weight.layout().shape().clone()));
    }
    if let Some(node) = node_bias {
        let db = gemm_kernels::bias_grad(&g, dy_data);
        grads.register::<Flex>(node.id, flex_tensor(db, StdShape::new([g.channels_out])));
    }
}

fn geometry(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> ConvGeometry {
    let xs = x.layout().shape();
    let ws = weight.layout().shape();
    ConvGeometry {
        batch: xs[0],
        channels_in: xs[1],
        channels_out: ws[0],
        height_in: xs[2],
        width_in: xs[3],
        kernel: [ws[2], ws[3]],
        stride: options.stride,
        padding: options.padding,
        dilation: options.dilation,
    }
}

/// The convolution as one autodiff node whose backward is [`register_grads`].
fn autodiff_conv2d(
    x: CpuTrainTensor,
    weight: CpuTrainTensor,
    bias: Option<CpuTrainTensor>,
    options: ConvOptions<2>,
) -> CpuTrainTensor {
    let run = |x: FlexTensor, w: FlexTensor, b: Option<FlexTensor>| flex_conv2d(x, w, b, &options);
    // The two arms differ in the op type (2 or 3 parents), so a macro rather than a function.
    macro_rules! record {
        ($op:expr, $nodes:expr, $bias:expr) => {
            match $op
                .prepare::<NoCheckpointing>($nodes)
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(mut prep) => {
                    let state = (
                        prep.checkpoint(&x),
                        prep.checkpoint(&weight),
                        options.clone(),
                    );
                    prep.finish(state, run(x.primitive, weight.primitive, $bias))
                }
                OpsKind::UnTracked(prep) => prep.finish(run(x.primitive, weight.primitive, $bias)),
            }
        };
    }
    match bias {
        Some(bias) => record!(
            GemmConv2dBiasBackward,
            [x.node.clone(), weight.node.clone(), bias.node.clone()],
            Some(bias.primitive)
        ),
        None => record!(
            GemmConv2dBackward,
            [x.node.clone(), weight.node.clone()],
            None
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    type B = CpuTrain;

    /// Gradients of `sum(conv(x, w, b) · r)` through [`conv2d_fast`] and through Burn's
    /// `conv2d` (the independent reference: its own backward) agree.
    fn parity(shape_x: [usize; 4], shape_w: [usize; 4], bias: bool, options: ConvOptions<2>) {
        let device = Default::default();
        let x0 = Tensor::<B, 4>::random(shape_x, Distribution::Normal(0.0, 1.0), &device);
        let w0 = Tensor::<B, 4>::random(shape_w, Distribution::Normal(0.0, 0.3), &device);
        let b0 = Tensor::<B, 1>::random([shape_w[0]], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let x = x0.clone().detach().require_grad();
            let w = w0.clone().detach().require_grad();
            let b = bias.then(|| b0.clone().detach().require_grad());
            let y = if fast {
                conv2d_fast(x.clone(), w.clone(), b.clone(), options.clone())
            } else {
                conv2d(x.clone(), w.clone(), b.clone(), options.clone())
            };
            // a non-uniform output weighting, so every gradient entry differs
            let r = y.clone().detach().sin();
            let grads = (y.clone() * r).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.map(|b| b.grad(&grads).unwrap()),
            )
        };
        let (y_fast, dx_fast, dw_fast, db_fast) = run(true);
        let (y_ref, dx_ref, dw_ref, db_ref) = run(false);
        // f32 sums in a different order: relative 1e-4 (absolute 1e-4) is loose for rounding,
        // far tighter than any wrong index or missing term.
        let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-4);
        y_fast
            .into_data()
            .assert_approx_eq::<f32>(&y_ref.into_data(), tol);
        dx_fast
            .into_data()
            .assert_approx_eq::<f32>(&dx_ref.into_data(), tol);
        dw_fast
            .into_data()
            .assert_approx_eq::<f32>(&dw_ref.into_data(), tol);
        if let (Some(a), Some(b)) = (db_fast, db_ref) {
            a.into_data().assert_approx_eq::<f32>(&b.into_data(), tol);
        }
    }

    #[test]
    fn fast_backward_matches_burns_conv2d_backward() {
        // (input, weight, bias, stride, padding): U-Net 3×3 without and with bias, ResNet
        // stride 2, Swin patch embedding, 1×1 head.
        let cases = [
            ([2, 3, 12, 10], [4, 3, 3, 3], false, 1, 1),
            ([2, 3, 12, 10], [4, 3, 3, 3], true, 1, 1),
            ([2, 4, 11, 9], [5, 4, 3, 3], true, 2, 1),
            ([1, 2, 16, 16], [3, 2, 4, 4], true, 4, 0),
            ([2, 3, 9, 9], [2, 3, 1, 1], true, 1, 0),
        ];
        for (x, w, bias, s, p) in cases {
            parity(x, w, bias, ConvOptions::new([s, s], [p, p], [1, 1], 1));
        }
    }

    #[test]
    fn depthwise_matches_burns_grouped_conv2d() {
        // SegFormer's Mix-FFN 3×3 (with bias), and a dilated one without bias.
        for (x, bias, padding, dilation) in
            [([2, 6, 9, 7], true, 1, 1), ([1, 4, 8, 8], false, 2, 2)]
        {
            let options = ConvOptions::new([1, 1], [padding; 2], [dilation; 2], x[1]);
            parity(x, [x[1], 1, 3, 3], bias, options);
        }
    }

    fn module_forward_parity<M: Backend>() {
        use burn::nn::conv::Conv2dConfig;
        let device = Default::default();
        let x = Tensor::<M, 4>::random([2, 3, 10, 10], Distribution::Default, &device);
        for (padding, stride) in [
            (PaddingConfig2d::Same, 1),
            (PaddingConfig2d::Valid, 2),
            (PaddingConfig2d::Explicit(1, 1, 1, 1), 2),
            (PaddingConfig2d::Explicit(0, 1, 2, 1), 1),
        ] {
            let conv = Conv2dConfig::new([3, 4], [3, 3])
                .with_stride([stride, stride])
                .with_padding(padding.clone())
                .init::<M>(&device);
            let got = forward(&conv, x.clone());
            let want = conv.forward(x.clone());
            assert_eq!(got.dims(), want.dims(), "{padding:?}");
            let tol = Tolerance::<f32>::rel_abs(1e-4, 1e-5);
            got.into_data()
                .assert_approx_eq::<f32>(&want.into_data(), tol);
        }
    }

    #[test]
    fn module_forward_matches_burns_module_forward() {
        module_forward_parity::<B>(); // training backend
        module_forward_parity::<Flex>(); // inference backend
    }
}

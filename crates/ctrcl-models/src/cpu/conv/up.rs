//! The U-Net's 2×2, stride-2 transposed convolution as one GEMM per image with its own backward
//! on the CPU backend.
//!
//! Each input pixel feeds a disjoint 2×2 output block, so with the weight `W` `[C_in, C_out·4]`
//! (its natural layout `[C_in, C_out, 2, 2]` flattened):
//! - forward: `T = Wᵀ · x_b` (`[C_out·4, H·W]`), scattered to `y[co, 2i + a, 2j + c] =
//!   T[co·4 + 2a + c, i·W + j] + bias[co]`;
//! - backward: `dT` gathered from `dy` the same way; `dx_b = W · dT`, `dW = Σ_b x_b · dTᵀ`,
//!   `dbias = Σ dy`.
//!
//! Burn 0.21's op goes through its 3D transposed convolution with strided `expand` copies, and
//! its backward through a convolution. Any other geometry, and other backends, use Burn's op.

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::nn::conv::ConvTranspose2d;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_std::Shape as StdShape;
use rayon::prelude::*;

use super::fast_backward_enabled;
use super::gemm_kernels::matmul;
use crate::cpu::{cast, flex_tensor, CpuTrain, CpuTrainTensor};

/// `conv.forward(x)`: `x` `[B, C_in, H, W]` → `[B, C_out, 2H, 2W]` for a 2×2 stride-2 layer
/// (Burn's op in the half dtype inside an autocast region).
pub fn forward<B: Backend>(conv: &ConvTranspose2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if let Some(half) = crate::precision::half() {
        return crate::precision::conv_transpose2d_in(half, conv, x);
    }
    let backend = TypeId::of::<B>();
    let supported = conv.kernel_size == [2, 2]
        && conv.stride == [2, 2]
        && conv.padding == [0, 0]
        && conv.padding_out == [0, 0]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.bias.is_some()
        && x.dtype() == DType::F32
        && fast_backward_enabled()
        && (backend == TypeId::of::<CpuTrain>() || backend == TypeId::of::<Flex>());
    if !supported {
        return conv.forward(x);
    }
    let prim = |t: TensorPrimitive<B>| t.tensor();
    let bias = conv.bias.as_ref().expect("checked above").val();
    let (x, w, b) = (
        prim(x.into_primitive()),
        prim(conv.weight.val().into_primitive()),
        prim(bias.into_primitive()),
    );
    let out: B::FloatTensorPrimitive = if backend == TypeId::of::<Flex>() {
        cast(values(&cast(x), &cast(w), &cast(b)))
    } else {
        cast(autodiff(cast(x), cast(w), cast(b)))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// Sizes of one layer application.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
}

impl Geometry {
    fn of(x: &FlexTensor, w: &FlexTensor) -> Self {
        let (xs, ws) = (x.layout().shape(), w.layout().shape());
        Geometry {
            batch: xs[0],
            cin: xs[1],
            cout: ws[1],
            h: xs[2],
            w: xs[3],
        }
    }

    fn pixels(&self) -> usize {
        self.h * self.w
    }
}

/// The forward values `[B, C_out, 2H, 2W]`.
fn values(x: &FlexTensor, w: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let g = Geometry::of(x, w);
    let (x, w, b) = (x.to_contiguous(), w.to_contiguous(), b.to_contiguous());
    let (xs, ws, bs): (&[f32], &[f32], &[f32]) = (x.storage(), w.storage(), b.storage());
    let (p, rows) = (g.pixels(), g.cout * 4);
    let mut y = vec![0.0f32; g.batch * g.cout * 4 * p];
    y.par_chunks_mut(rows * p).enumerate().for_each_init(
        || vec![0.0f32; rows * p],
        |t, (bi, y_b)| {
            // T[co·4 + q, pixel] = Σ_ci W[ci, co·4 + q] · x_b[ci, pixel]
            let x_b = &xs[bi * g.cin * p..(bi + 1) * g.cin * p];
            matmul(
                rows,
                p,
                g.cin,
                t,
                false,
                ws,
                (1, rows as isize),
                x_b,
                (p as isize, 1),
            );
            let w2 = 2 * g.w;
            for co in 0..g.cout {
                let plane = &mut y_b[co * 4 * p..(co + 1) * 4 * p];
                for (q, tq) in t[co * 4 * p..(co + 1) * 4 * p].chunks_exact(p).enumerate() {
                    let (a, c) = (q / 2, q % 2);
                    for i in 0..g.h {
                        let out_row = &mut plane[(2 * i + a) * w2..(2 * i + a + 1) * w2];
                        for (j, &v) in tq[i * g.w..(i + 1) * g.w].iter().enumerate() {
                            out_row[2 * j + c] = v + bs[co];
                        }
                    }
                }
            }
        },
    );
    flex_tensor(y, StdShape::new([g.batch, g.cout, 2 * g.h, 2 * g.w]))
}

/// `dT_b[co·4 + 2a + c, i·W + j] = dy_b[co, 2i + a, 2j + c]` for one image.
fn gather(g: &Geometry, dy_b: &[f32], dt: &mut [f32]) {
    let (p, w2) = (g.pixels(), 2 * g.w);
    for co in 0..g.cout {
        let plane = &dy_b[co * 4 * p..(co + 1) * 4 * p];
        for (q, tq) in dt[co * 4 * p..(co + 1) * 4 * p]
            .chunks_exact_mut(p)
            .enumerate()
        {
            let (a, c) = (q / 2, q % 2);
            for i in 0..g.h {
                let in_row = &plane[(2 * i + a) * w2..(2 * i + a + 1) * w2];
                for (j, v) in tq[i * g.w..(i + 1) * g.w].iter_mut().enumerate() {
                    *v = in_row[2 * j + c];
                }
            }
        }
    }
}

/// `(dx, dW, dbias)` from the output gradient.
fn gradients(g: &Geometry, xs: &[f32], ws: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (p, rows) = (g.pixels(), g.cout * 4);
    let mut dx = vec![0.0f32; g.batch * g.cin * p];
    // Per image: dx_b, and the image's partial dW and dbias, summed in image order afterwards
    // (results do not depend on the thread count).
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(g.cin * p)
        .enumerate()
        .map(|(bi, dx_b)| {
            let mut dt = vec![0.0f32; rows * p];
            gather(g, &dy[bi * rows * p..(bi + 1) * rows * p], &mut dt);
            // dx_b[ci, pixel] = Σ W[ci, r] · dT[r, pixel]
            matmul(
                g.cin,
                p,
                rows,
                dx_b,
                false,
                ws,
                (rows as isize, 1),
                &dt,
                (p as isize, 1),
            );
            // dW_b[ci, r] = Σ_pixel x_b[ci, pixel] · dT[r, pixel]
            let mut dw = vec![0.0f32; g.cin * rows];
            matmul(
                g.cin,
                rows,
                p,
                &mut dw,
                false,
                &xs[bi * g.cin * p..(bi + 1) * g.cin * p],
                (p as isize, 1),
                &dt,
                (1, p as isize),
            );
            let db: Vec<f32> = dt
                .chunks_exact(4 * p)
                .map(|block| block.iter().sum())
                .collect();
            (dw, db)
        })
        .collect();
    let (mut dw, mut db) = (vec![0.0f32; g.cin * rows], vec![0.0f32; g.cout]);
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dx, dw, db)
}

#[derive(Debug)]
struct UpConvBackward;

#[derive(Debug, Clone)]
struct Saved {
    /// Contiguous input and weight.
    x: FlexTensor,
    w: FlexTensor,
}

impl Backward<Flex, 3> for UpConvBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_w, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node).to_contiguous();
        let Saved { x, w } = &ops.state;
        let g = Geometry::of(x, w);
        let (dx, dw, db) = gradients(&g, x.storage(), w.storage(), dy.storage());
        let shape = |t: &FlexTensor| t.layout().shape().clone();
        for (node, grad) in [
            (node_x, flex_tensor(dx, shape(x))),
            (node_w, flex_tensor(dw, shape(w))),
            (node_b, flex_tensor(db, StdShape::new([g.cout]))),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, grad);
            }
        }
    }
}

fn autodiff(x: CpuTrainTensor, w: CpuTrainTensor, b: CpuTrainTensor) -> CpuTrainTensor {
    match UpConvBackward
        .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone(), b.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let saved = Saved {
                x: x.primitive.to_contiguous(),
                w: w.primitive.to_contiguous(),
            };
            let out = values(&saved.x, &saved.w, &b.primitive);
            prep.finish(saved, out)
        }
        OpsKind::UnTracked(prep) => prep.finish(values(&x.primitive, &w.primitive, &b.primitive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::{AutodiffModule, Param};
    use burn::nn::conv::ConvTranspose2dConfig;
    use burn::tensor::{Distribution, Tolerance};

    /// Values and the gradients of x, W and bias through this op and through Burn's
    /// `ConvTranspose2d` (its own backward: the independent reference), for `Σ y · sin(k)`.
    #[test]
    fn matches_burns_transposed_convolution_and_its_gradients() {
        type B = CpuTrain;
        let device = Default::default();
        let mut layer = ConvTranspose2dConfig::new([5, 3], [2, 2])
            .with_stride([2, 2])
            .init::<B>(&device);
        layer.bias = Some(Param::from_tensor(Tensor::random(
            [3],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        )));
        let x0 = Tensor::<B, 4>::random([2, 5, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let run = |fast: bool| {
            let x = x0.clone().detach().require_grad();
            let y = if fast {
                forward(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let n = y.shape().num_elements() as i64;
            let r = Tensor::<B, 1, Int>::arange(0..n, &device)
                .float()
                .reshape(y.dims())
                .sin();
            let grads = (y.clone() * r).sum().backward();
            [
                y.inner().into_data(),
                x.grad(&grads).unwrap().into_data(),
                layer.weight.grad(&grads).unwrap().into_data(),
                layer
                    .bias
                    .as_ref()
                    .unwrap()
                    .grad(&grads)
                    .unwrap()
                    .into_data(),
            ]
        };
        // Different summation orders only.
        let tol = Tolerance::<f32>::rel_abs(1e-5, 1e-5);
        for (what, (fast, reference)) in ["y", "dx", "dW", "dbias"]
            .into_iter()
            .zip(run(true).into_iter().zip(run(false)))
        {
            assert_eq!(fast.shape, reference.shape, "{what}");
            fast.assert_approx_eq::<f32>(&reference, tol);
        }
        // Inference backend: same values.
        let inner = layer.valid();
        let x = x0.inner();
        forward(&inner, x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&inner.forward(x).into_data(), tol);
    }
}

//! GELU and last-axis softmax as fused, parallel ops with their own backward on the CPU backend.
//!
//! Burn 0.21's autodiff GELU evaluates libm's scalar `erff` in the forward and again in the
//! backward, whose derivative is a chain of single-threaded element-wise passes through flex's
//! strided iterator; its softmax is max, subtract, exp, sum, divide, with a composite backward.
//! Together they were ~25% of a Swin-UNet training step on one core (`perf`). Here each is one
//! pass over contiguous chunks in parallel:
//! - e^x without libm ([`exp`], 1 ulp), for the two ops here and the fused loss.
//! - GELU `y = x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`, with erf as a rational approximation
//!   (Eigen's and XLA's, clamped to ±4; |error| ≤ 5e-7, the compiler vectorises it) and
//!   backward `dx = dy·(Φ(x) + x·φ(x))`, `φ` the standard normal density; the input is kept.
//! - softmax over the last axis, row by row (max-subtracted), keeping the output `y`; backward
//!   `dx = y·(dy − Σ dy·y)` per row.
//!
//! On `Autodiff<Flex>` (training) and `Flex` (inference) with f32; other backends use Burn's.
//! `CTRCL_BURN_ACTIVATION=1` in the environment turns this path off (for A/B benchmarks).

use std::any::TypeId;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use rayon::prelude::*;

use crate::cpu::{backprop_unary, cast, flex_tensor, record_unary, CpuTrain, CpuTrainTensor};

fn enabled() -> bool {
    crate::switches::Switch::Activation.fast()
}

/// Elements per parallel task: enough work to amortise the task.
const CHUNK: usize = 1 << 14;

/// The backend this module handles `x` on, if any.
#[derive(PartialEq)]
enum Path {
    Train,
    Infer,
}

fn path<B: Backend, const D: usize>(x: &Tensor<B, D>) -> Option<Path> {
    if x.dtype() != DType::F32 || !enabled() {
        return None;
    }
    let b = TypeId::of::<B>();
    if b == TypeId::of::<CpuTrain>() {
        Some(Path::Train)
    } else if b == TypeId::of::<Flex>() {
        Some(Path::Infer)
    } else {
        None
    }
}

/// `burn::tensor::activation::gelu` (exact, erf-based). Shape unchanged.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match path(&x) {
        None => burn::tensor::activation::gelu(x),
        Some(p) => apply(x, p, Op::Gelu),
    }
}

/// `burn::tensor::activation::softmax(x, dim)`. Shape unchanged; fused only for the last axis.
pub fn softmax<B: Backend, const D: usize>(x: Tensor<B, D>, dim: usize) -> Tensor<B, D> {
    match path(&x) {
        Some(p) if dim == D - 1 => {
            let row = x.dims()[D - 1];
            apply(x, p, Op::Softmax { row })
        }
        _ => burn::tensor::activation::softmax(x, dim),
    }
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Gelu,
    /// Softmax over rows of `row` contiguous elements.
    Softmax {
        row: usize,
    },
}

fn apply<B: Backend, const D: usize>(x: Tensor<B, D>, path: Path, op: Op) -> Tensor<B, D> {
    let x = x.into_primitive().tensor();
    let out: B::FloatTensorPrimitive = if path == Path::Infer {
        cast(forward(&cast::<_, FlexTensor>(x), op))
    } else {
        cast(autodiff(cast(x), op))
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

/// erf(x) in f32 to |error| ≤ 5e-7: x·P(x²)/Q(x²) on x clamped to [−4, 4] (beyond, erf is ±1
/// in f32). Coefficients from Eigen's `generic_fast_erf_float`.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for a in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_6e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + a;
    }
    let mut q = -1.456_607_2e-5_f32;
    for b in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + b;
    }
    x * p / q
}

/// e^x in f32 within 1 ulp of libm's (measured over 2·10⁷ inputs) without a libm call, so that
/// loops over it vectorise: Cody–Waite reduction x = n·ln2 + r (|r| ≤ ln2/2, n rounded with the
/// 1.5·2²³ trick) and Cephes' degree-5 polynomial for e^r, scaled by 2ⁿ through the exponent
/// bits. x is clamped to [−87, 88], so e^x ≥ 1.6e-38 (≈ 0 beside any softmax denominator ≥ 1)
/// and it never overflows or gives NaN for ±∞.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5·2²³
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4_f32;
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5, // Cephes: 5.0000001201e-1, which rounds to 0.5 in f32
    ] {
        p = p * r + c;
    }
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    (p * r * r + r + 1.0) * scale
}

/// Φ(x), the standard normal distribution function.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

fn forward(x: &FlexTensor, op: Op) -> FlexTensor {
    let x = x.to_contiguous();
    let src: &[f32] = x.storage();
    let mut y = vec![0.0f32; src.len()];
    match op {
        Op::Gelu => y
            .par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * normal_cdf(x);
                }
            }),
        Op::Softmax { row } => {
            let rows_per_task = (CHUNK / row.max(1)).max(1) * row;
            y.par_chunks_mut(rows_per_task)
                .zip(src.par_chunks(rows_per_task))
                .for_each(|(y, x)| {
                    for (y, x) in y.chunks_exact_mut(row).zip(x.chunks_exact(row)) {
                        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        for (y, &x) in y.iter_mut().zip(x) {
                            *y = exp(x - max);
                        }
                        let inv = 1.0 / y.iter().sum::<f32>();
                        y.iter_mut().for_each(|y| *y *= inv);
                    }
                });
        }
    }
    flex_tensor(y, x.layout().shape().clone())
}

/// `dx` from the output gradient `dy` and the kept tensor (GELU: the input; softmax: the output).
fn backward(dy: &FlexTensor, kept: &FlexTensor, op: Op) -> FlexTensor {
    let dy = dy.to_contiguous();
    let (dy, k): (&[f32], &[f32]) = (dy.storage(), kept.storage());
    let mut dx = vec![0.0f32; dy.len()];
    match op {
        Op::Gelu => {
            // φ(x) = exp(−x²/2)/√(2π)
            let inv_sqrt_2pi =
                0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
            dx.par_chunks_mut(CHUNK)
                .zip(dy.par_chunks(CHUNK))
                .zip(k.par_chunks(CHUNK))
                .for_each(|((dx, dy), x)| {
                    for ((dx, &dy), &x) in dx.iter_mut().zip(dy).zip(x) {
                        let pdf = exp(-0.5 * x * x) * inv_sqrt_2pi;
                        *dx = dy * (normal_cdf(x) + x * pdf);
                    }
                });
        }
        Op::Softmax { row } => {
            let rows_per_task = (CHUNK / row.max(1)).max(1) * row;
            dx.par_chunks_mut(rows_per_task)
                .zip(dy.par_chunks(rows_per_task))
                .zip(k.par_chunks(rows_per_task))
                .for_each(|((dx, dy), y)| {
                    for ((dx, dy), y) in dx
                        .chunks_exact_mut(row)
                        .zip(dy.chunks_exact(row))
                        .zip(y.chunks_exact(row))
                    {
                        let dot: f32 = dy.iter().zip(y).map(|(a, b)| a * b).sum();
                        for ((dx, &dy), &y) in dx.iter_mut().zip(dy).zip(y) {
                            *dx = y * (dy - dot);
                        }
                    }
                });
        }
    }
    flex_tensor(dx, kept.layout().shape().clone())
}

#[derive(Debug)]
struct ActivationBackward;

#[derive(Debug, Clone)]
struct Saved {
    op: Op,
    /// Contiguous: the input (GELU) or the output (softmax).
    kept: FlexTensor,
}

impl Backward<Flex, 1> for ActivationBackward {
    type State = Saved;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        backprop_unary(ops, grads, |dy, s| backward(dy, &s.kept, s.op));
    }
}

fn autodiff(x: CpuTrainTensor, op: Op) -> CpuTrainTensor {
    record_unary(ActivationBackward, &x, || {
        let input = x.primitive.to_contiguous();
        let out = forward(&input, op);
        let kept = match op {
            Op::Gelu => input,
            Op::Softmax { .. } => out.clone(),
        };
        (out, Saved { op, kept })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_backend::assert_values_and_gradients_match;
    use burn::tensor::{Distribution, Tolerance};

    #[test]
    fn erf_is_within_5e7_of_the_exact_values() {
        // Exact values: Python's math.erf (double precision).
        for (x, exact) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (1.5, 0.966_105_146_475_310_7),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
            (5.0, 0.999_999_999_998_462_5),
        ] {
            assert!((f64::from(erf(x)) - exact).abs() <= 5e-7, "erf({x})");
            assert!((f64::from(erf(-x)) + exact).abs() <= 5e-7, "erf({})", -x);
        }
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm_over_the_softmax_range() {
        // Every 97th f32 in [−87, 88] (≈ 2·10⁷ values) against libm's expf; measured worst 1 ulp.
        let (lo, hi) = (-87.0f32, 88.0f32);
        let mut worst = 0.0f64;
        let mut x = lo;
        while x < hi {
            let (got, want) = (f64::from(exp(x)), f64::from(x.exp()));
            worst = worst.max(((got - want) / want).abs());
            x = f32::from_bits(if x < 0.0 {
                x.to_bits() - 97
            } else {
                x.to_bits() + 97
            });
            if x == 0.0 || (x < 0.0 && x > -1e-30) {
                x = 1e-30;
            }
        }
        assert!(
            worst <= 2.0 * f64::from(f32::EPSILON),
            "worst relative error {worst}"
        );
        // Clamped ends: no overflow, no NaN, ~0 for very negative inputs.
        assert!(exp(f32::NEG_INFINITY) < 1e-37 && exp(-1e4) < 1e-37);
        assert!(exp(88.0).is_finite() && exp(f32::INFINITY).is_finite());
    }

    #[test]
    fn gelu_matches_burns_values_and_gradient() {
        let device = Default::default();
        // Wide range, several parallel chunks, a length that is not a multiple of the chunk.
        let x0 =
            Tensor::<CpuTrain, 3>::random([3, 1000, 17], Distribution::Normal(0.0, 3.0), &device);
        // Burn evaluates libm's erf, this the rational approximation (≤ 5e-7 apart).
        let tol = Tolerance::<f32>::rel_abs(1e-5, 2e-6);
        assert_values_and_gradients_match(&x0, gelu, burn::tensor::activation::gelu, tol);
    }

    #[test]
    fn softmax_over_the_last_axis_matches_burns_values_and_gradient() {
        let device = Default::default();
        let x0 =
            Tensor::<CpuTrain, 4>::random([5, 3, 49, 49], Distribution::Normal(0.0, 4.0), &device);
        // Same formula, summation order differs only.
        let tol = Tolerance::<f32>::rel_abs(1e-5, 1e-6);
        assert_values_and_gradients_match(
            &x0,
            |x| softmax(x, 3),
            |x| burn::tensor::activation::softmax(x, 3),
            tol,
        );
    }

    #[test]
    fn inference_path_matches_burns_values() {
        let device = Default::default();
        let x = Tensor::<Flex, 2>::random([64, 49], Distribution::Normal(0.0, 3.0), &device);
        let tol = Tolerance::<f32>::rel_abs(1e-5, 2e-6);
        for (fast, reference) in [
            (gelu(x.clone()), burn::tensor::activation::gelu(x.clone())),
            (
                softmax(x.clone(), 1),
                burn::tensor::activation::softmax(x, 1),
            ),
        ] {
            fast.into_data()
                .assert_approx_eq::<f32>(&reference.into_data(), tol);
        }
    }
}

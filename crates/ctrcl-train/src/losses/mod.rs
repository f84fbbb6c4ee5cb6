//! The loss terms of METHOD.md §3–§7 and §9 (pseudo-labels, RLCL and CFCL on trusted pixels).

pub mod baselines;
pub mod cfcl;
pub mod pseudo;
pub mod rlcl;
mod rlcl_cpu;
pub mod seg;
mod seg_cpu;

use burn::prelude::*;

/// Smoothing of the Dice ratio (SSL4MIS `DiceLoss`).
pub const DICE_EPS: f64 = 1e-5;

/// One-hot maps of class labels (0 … K − 1) along the class axis.
///
/// # Shapes
/// `labels`: `[B, 1, H, W]` → `[B, K, H, W]`.
pub(crate) fn onehot_of<B: Backend>(labels: Tensor<B, 4, Int>, k: usize) -> Tensor<B, 4> {
    let [b, _, h, w] = labels.dims();
    let classes = Tensor::<B, 1, Int>::arange(0..k as i64, &labels.device())
        .reshape([1, k, 1, 1])
        .expand([b, k, h, w]);
    labels.expand([b, k, h, w]).equal(classes).float()
}

/// The sum of every element, added in one fixed order whatever the thread count.
///
/// Burn's flex `sum()` and `mean()` of 4 Mi elements or more add 64 Ki-element chunk sums with a
/// rayon reduction, whose tree depends on the thread count and on scheduling; `sum_dim` over one
/// axis is sequential. A loss reduced here is therefore bit-identical on 1 or 16 threads (the
/// seed promise of README), at any image size.
///
/// # Shapes
/// any `[..]` → `[1]`.
pub(crate) fn total<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    t.reshape([n]).sum_dim(0)
}

/// The mean of every element, in [`total`]'s fixed order.
///
/// # Shapes
/// any `[..]` → `[1]`.
pub(crate) fn average<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    total(t) / n as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// 5 Mi elements, past the 4 Mi at which flex's `sum()` goes parallel: the same bits on 1
    /// and 4 threads, and the value of an f64 sum to f32 rounding of the running total (relative
    /// 1e-6 over 5 Mi terms of magnitude ≤ 1 is far looser than a wrong reduction would miss by).
    /// Burn's own `sum()` fails the first check here (measured: 1.3243537 on 1 thread, 1.324353
    /// on 4).
    #[test]
    fn total_is_thread_count_independent_and_correct() {
        let n = 5 << 20;
        let values: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let reference: f64 = values.iter().map(|&v| f64::from(v)).sum();
        let device = Default::default();
        let t = Tensor::<Flex, 1>::from_floats(values.as_slice(), &device).reshape([5, 1024, 1024]);
        let run =
            |threads: usize| ctrcl_models::on_threads(threads, || total(t.clone()).into_scalar());
        let (one, four) = (run(1), run(4));
        assert_eq!(one.to_bits(), four.to_bits(), "{one} vs {four}");
        let mean = average(t).into_scalar();
        assert!(
            (f64::from(one) - reference).abs() <= 1e-6 * n as f64,
            "{one} vs {reference}"
        );
        assert!((f64::from(mean) - reference / n as f64).abs() <= 1e-6);
    }
}

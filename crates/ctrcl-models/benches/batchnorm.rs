//! Forward + backward of ctrcl's BatchNorm2d against Burn 0.21's BatchNorm on the activations of
//! the SSL4MIS U-Net's first level (B=4, 16×128×128) and a deeper one (B=4, 128×16×16).
//!
//!     cargo bench -p ctrcl-models --bench batchnorm
//!
//! Prints the median of 20 timed repetitions after 3 warm-up ones, and the ratio.

use burn::backend::{Autodiff, Flex};
use burn::nn::BatchNormConfig;
use burn::prelude::*;
use burn::tensor::Distribution;
use ctrcl_models::batchnorm::BatchNorm2dConfig;
use std::time::Instant;

type B = Autodiff<Flex>;

fn median_ms(mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times: Vec<f64> = (0..20)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

fn main() {
    let device = Default::default();
    println!(
        "{:<22} {:>12} {:>12} {:>8}",
        "shape [B,C,H,W]", "burn ms", "ctrcl ms", "ratio"
    );
    for shape in [[4, 16, 128, 128], [4, 128, 16, 16]] {
        let c = shape[1];
        let x = Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let ours = BatchNorm2dConfig::new(c).init::<B>(&device);
        let burns = BatchNormConfig::new(c).init::<B>(&device);
        let t_burn = median_ms(|| {
            let xi = x.clone().require_grad();
            let g = burns.forward(xi.clone()).sum().backward();
            let _ = xi.grad(&g).unwrap().into_data();
        });
        let t_ours = median_ms(|| {
            let xi = x.clone().require_grad();
            let g = ours.forward(xi.clone()).sum().backward();
            let _ = xi.grad(&g).unwrap().into_data();
        });
        println!(
            "{:<22} {:>12.2} {:>12.2} {:>7.2}x",
            format!("{shape:?}"),
            t_burn,
            t_ours,
            t_burn / t_ours
        );
    }
}

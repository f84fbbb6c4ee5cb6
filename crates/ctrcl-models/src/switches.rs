//! The A/B switches of the CPU fast path, in one place. Each `CTRCL_BURN_<NAME>` variable set to
//! anything but `0` sends one family of ops back to Burn's own implementation, to measure a
//! kernel against Burn's or to bisect a difference (`docs/benchmarks.md`). The environment is
//! read once per process; [`fallbacks`] lists the variables that are on, and training records
//! them in `run.json` (`burn_fallbacks`), so a run says which code computed it.

use std::sync::OnceLock;

/// One family of fused CPU ops with a Burn fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The GEMM convolution and its backward (`cpu/conv/`).
    Conv,
    /// Linear layers and batched matmuls as direct GEMMs (`cpu/linear_matmul.rs`).
    Matmul,
    /// Fused LayerNorm (`cpu/layer_norm.rs`).
    Norm,
    /// Fused train-mode BatchNorm (`cpu/batchnorm.rs`).
    Batchnorm,
    /// GELU and softmax (`cpu/activation.rs`).
    Activation,
    /// Layout permutes (`cpu/permute.rs`).
    Permute,
    /// Skip concatenation (`cpu/concat.rs`).
    Cat,
    /// 2×2 max-pool (`cpu/pool.rs`).
    Pool,
    /// Bilinear resize (`cpu/resize.rs`).
    Resize,
    /// The fused CE + Dice and RLCL losses (ctrcl-train's `losses/*_cpu.rs`).
    Loss,
}

impl Switch {
    pub const ALL: [Switch; 10] = [
        Switch::Conv,
        Switch::Matmul,
        Switch::Norm,
        Switch::Batchnorm,
        Switch::Activation,
        Switch::Permute,
        Switch::Cat,
        Switch::Pool,
        Switch::Resize,
        Switch::Loss,
    ];

    /// The environment variable that turns this fast path off.
    pub fn variable(self) -> &'static str {
        match self {
            Switch::Conv => "CTRCL_BURN_CONV",
            Switch::Matmul => "CTRCL_BURN_MATMUL",
            Switch::Norm => "CTRCL_BURN_NORM",
            Switch::Batchnorm => "CTRCL_BURN_BATCHNORM",
            Switch::Activation => "CTRCL_BURN_ACTIVATION",
            Switch::Permute => "CTRCL_BURN_PERMUTE",
            Switch::Cat => "CTRCL_BURN_CAT",
            Switch::Pool => "CTRCL_BURN_POOL",
            Switch::Resize => "CTRCL_BURN_RESIZE",
            Switch::Loss => "CTRCL_BURN_LOSS",
        }
    }

    /// Whether our fast path is on: its variable unset or `0`.
    pub fn fast(self) -> bool {
        static STATE: OnceLock<[bool; 10]> = OnceLock::new();
        let state = STATE.get_or_init(|| {
            Switch::ALL.map(|s| std::env::var_os(s.variable()).is_none_or(|v| v == "0"))
        });
        state[self as usize]
    }
}

/// The variables that sent an op family back to Burn in this process, in [`Switch::ALL`] order.
pub fn fallbacks() -> Vec<&'static str> {
    Switch::ALL
        .iter()
        .filter(|s| !s.fast())
        .map(|s| s.variable())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_switch_has_its_own_variable_and_slot() {
        for (i, s) in Switch::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "ALL is in declaration order");
            assert!(s.variable().starts_with("CTRCL_BURN_"));
        }
        let mut names: Vec<_> = Switch::ALL.iter().map(|s| s.variable()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Switch::ALL.len());
    }
}

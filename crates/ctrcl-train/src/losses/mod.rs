//! The loss terms of METHOD.md §3–§7.

pub mod baselines;
pub mod cfcl;
pub mod rlcl;
mod rlcl_cpu;
pub mod seg;
mod seg_cpu;

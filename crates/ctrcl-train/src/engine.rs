//! The backend a multi-run job (the quickstart, an experiment) trains and tests on: the binary
//! picks the backend at build time and passes its device and name; the jobs stay generic.

use crate::config::TrainConfig;
use crate::role::Role;
use crate::tester::{test_run, TestReport};
use crate::trainer::TrainSummary;
use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_data::geometry::Upsample;
use ctrcl_data::split::Split;
use std::path::Path;

/// A device of backend `B` and the backend's name (recorded in each run and in results, e.g.
/// "flex CPU (burn 0.21.0)").
pub struct Engine<'a, B: AutodiffBackend> {
    pub device: &'a B::Device,
    pub name: &'a str,
}

impl<B: AutodiffBackend> Engine<'_, B> {
    /// Trains a new run into `out` (with a progress bar).
    pub fn train(&self, cfg: &TrainConfig, out: &Path) -> Result<TrainSummary> {
        crate::trainer::train::<B>(cfg, out, self.device, self.name, true)
    }

    /// Continues an interrupted run from its `last/` checkpoint.
    pub fn resume(&self, run: &Path) -> Result<TrainSummary> {
        crate::trainer::resume::<B>(run, self.device, self.name, true)
    }

    /// Tests the students of `roles` in `run` on `split` (the run's own upsampling unless
    /// given).
    pub fn test(
        &self,
        run: &Path,
        roles: &[Role],
        split: Split,
        upsample: Option<Upsample>,
    ) -> Result<TestReport> {
        test_run::<B::InnerBackend>(run, roles, split, upsample, self.device)
    }
}

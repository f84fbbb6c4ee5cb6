//! The training batches of a run as tensors: one loader over the training slices, or — in a
//! semi-supervised run (METHOD.md §9, `data.labelled`) — a loader over the labelled slices and
//! one over the unlabelled ones (labels erased, `ctrcl_data::labelled`), whose batches are
//! stacked labelled first.
//!
//! Determinism: each loader's batch `t` depends only on (its seed, t) (`ctrcl_data::loader`);
//! the labelled stream is seeded by the run's seed, the unlabelled one by a seed derived from
//! it, so a resumed run reads exactly the batches an uninterrupted one would.

use crate::config::{Method, TrainConfig};
use crate::step::onehot_tensor;
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use ctrcl_data::dataset::Dataset;
use ctrcl_data::labelled::{labelled_names, labelled_slices, partition};
use ctrcl_data::loader::{BatchLoader, Plan};
use ctrcl_data::split::Split;
use serde_json::json;
use std::sync::Arc;

/// Mixed into the run's seed for the unlabelled stream, so its order and augmentations are not
/// the labelled stream's.
const UNLABELLED_STREAM: u64 = 0x5EED_0000_0000_0001;

/// Where a run's batches come from.
pub(crate) struct Feed {
    labelled: BatchLoader,
    unlabelled: Option<BatchLoader>,
    /// The `semi` event of `log.jsonl` (semi-supervised runs only).
    pub(crate) semi_event: Option<serde_json::Value>,
}

impl Feed {
    /// Starts the loaders at step `first_step` of `total` (each step reads `optim.accumulate`
    /// batches).
    pub(crate) fn start(
        cfg: &TrainConfig,
        dataset: &Dataset,
        first_step: usize,
        total: usize,
    ) -> Result<Feed> {
        let size = cfg.data.image_size;
        let samples = dataset.samples(Split::Train, size);
        let accumulate = cfg.optim.accumulate;
        let plan = Plan {
            geometric: cfg.data.augment,
            extra: cfg.augmentation,
            foreground: cfg.data.foreground_oversample,
        };
        let loader = |samples, batch, seed, plan| {
            BatchLoader::start(
                Arc::new(samples),
                size,
                batch,
                seed,
                plan,
                first_step * accumulate,
                total * accumulate,
                cfg.data.workers,
            )
        };
        let Some(labelled) = &cfg.data.labelled else {
            return Ok(Feed {
                labelled: loader(samples, cfg.data.batch_size, cfg.seed, plan),
                unlabelled: None,
                semi_event: None,
            });
        };
        let keep = labelled_slices(dataset, labelled)
            .with_context(|| format!("data.labelled of {}", dataset.root.display()))?;
        let names = labelled_names(dataset, &keep);
        let (with_labels, without) = partition(samples, &keep);
        let b = cfg.data.batch_size;
        let b_l = cfg.semi.labelled_batch(b);
        let uses_unlabelled = cfg.method != Method::Independent;
        if uses_unlabelled && without.is_empty() {
            bail!(
                "data.labelled keeps the labels of all {} training slices: nothing is left to \
                 learn from without labels (drop data.labelled for supervised training)",
                with_labels.len()
            );
        }
        let semi_event = json!({"event": "semi", "labelled_slices": with_labels.len(),
            "unlabelled_slices": without.len(), "labelled_batch": b_l,
            "unlabelled_batch": if uses_unlabelled { b - b_l } else { 0 },
            "labelled": names});
        let unlabelled = uses_unlabelled.then(|| {
            // Forcing foreground needs labels: the unlabelled stream follows its epoch order.
            let plan = Plan {
                foreground: 0.0,
                ..plan
            };
            loader(without, b - b_l, cfg.seed ^ UNLABELLED_STREAM, plan)
        });
        Ok(Feed {
            labelled: loader(with_labels, b_l, cfg.seed, plan),
            unlabelled,
            semi_event: Some(semi_event),
        })
    }

    /// The next batch: images `[B, C, S, S]` and one-hot labels `[B_l, K, S, S]` of its first
    /// B_l images (B_l = B unless semi-supervised).
    pub(crate) fn next<B: Backend>(
        &mut self,
        k: usize,
        device: &B::Device,
    ) -> Result<(Tensor<B, 4>, Tensor<B, 4>)> {
        let stopped = "the batch loader stopped early (a worker thread failed)";
        let mut batch = self.labelled.next().context(stopped)?;
        let onehot = onehot_tensor::<B>(&batch, k, device);
        let (c, s) = (batch.channels, batch.size);
        let mut images = std::mem::take(&mut batch.images);
        let mut n = batch.batch_size;
        if let Some(unlabelled) = &mut self.unlabelled {
            let u = unlabelled.next().context(stopped)?;
            images.extend_from_slice(&u.images);
            n += u.batch_size;
        }
        let x = Tensor::<B, 4>::from_data(TensorData::new(images, [n, c, s, s]), device);
        Ok((x, onehot))
    }
}

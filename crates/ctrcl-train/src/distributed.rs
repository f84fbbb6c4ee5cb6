//! Data-parallel training on several devices of one machine (`parallel.devices`, `ctrcl train
//! --devices N`), with Burn's collective all-reduce (`burn-collective`), not a home-made one.
//!
//! The training thread is peer 0 and keeps the students that the loop validates and checkpoints;
//! peers 1 … N−1 are worker threads, each with a replica of both students and both optimizers
//! (same parameter ids, same values, same optimizer state). Every step the global batch is split
//! into N equal shards along the batch axis; each peer computes its shard's loss and gradients,
//! the gradients of each student are averaged across peers (`GradientsParams::all_reduce`, mean),
//! and every peer applies the same optimizer step, so the replicas stay identical.
//!
//! As with PyTorch's DDP, terms that are statistics of the batch are computed per shard:
//! BatchNorm statistics, the batch-summed soft Dice, CFCL's class prototypes, KDCL's ensemble.
//! Where every term is a mean over samples (e.g. cross-entropy + RLCL on LayerNorm students) the
//! step equals the single-device step on the global batch up to float summation order; the test
//! checks exactly that. Dropout and drop-path masks come from the backend's one random stream,
//! drawn by the peers in thread order, so runs with dropout and N > 1 are not bit-reproducible.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use anyhow::{anyhow, bail, Context, Result};
use burn::collective::{
    all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation,
};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::TensorPrimitive;

use crate::config::TrainConfig;
use crate::student::{StudentOptimizer, TrainStudent};
use crate::trainer::{pair_step, Terms};

/// Averages a student's gradients over the peers with one collective all-reduce (mean) of all
/// its gradients flattened in module order — the same order on every peer, and one collective
/// operation instead of one per parameter.
pub(crate) fn all_reduce_mean<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    peer: PeerId,
) -> Result<GradientsParams> {
    /// Takes every gradient out of `grads`, flattened, in visiting order, noting which
    /// parameters had one.
    struct Take<'a, I: Backend> {
        grads: &'a mut GradientsParams,
        flat: Vec<Tensor<I, 1>>,
        present: Vec<bool>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let grad = self.grads.remove::<B::InnerBackend, D>(param.id);
            self.present.push(grad.is_some());
            if let Some(g) = grad {
                self.flat.push(g.flatten::<1>(0, D - 1));
            }
        }
    }
    /// Puts the reduced values back, in the same order.
    struct Put<'a, I: Backend> {
        grads: &'a mut GradientsParams,
        reduced: Tensor<I, 1>,
        offset: usize,
        expected: &'a [bool],
        index: usize,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Put<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let had_grad = self.expected[self.index];
            self.index += 1;
            if had_grad {
                let shape: [usize; D] = param.val().dims();
                let n: usize = shape.iter().product();
                let values = self
                    .reduced
                    .clone()
                    .narrow(0, self.offset, n)
                    .reshape(shape);
                self.offset += n;
                self.grads.register::<B::InnerBackend, D>(param.id, values);
            }
        }
    }
    let mut take = Take::<B::InnerBackend> {
        grads: &mut grads,
        flat: Vec::new(),
        present: Vec::new(),
    };
    module.visit(&mut take);
    let (flat, present) = (take.flat, take.present);
    if flat.is_empty() {
        return Ok(grads);
    }
    let flat = Tensor::cat(flat, 0);
    let reduced =
        all_reduce::<B::InnerBackend>(peer, flat.into_primitive().tensor(), ReduceOperation::Mean)
            .map_err(|e| anyhow!("peer {}: gradient all-reduce failed: {e:?}", peer.0))?;
    let mut put = Put::<B::InnerBackend> {
        grads: &mut grads,
        reduced: Tensor::from_primitive(TensorPrimitive::Float(reduced)),
        offset: 0,
        expected: &present,
        index: 0,
    };
    module.visit(&mut put);
    Ok(grads)
}

/// Gives every float parameter its own storage and autodiff leaf (same id, same values). A plain
/// clone shares the tensors, so two threads' graphs would meet at the same leaf nodes.
struct DeepCopy;

impl<B: Backend> ModuleMapper<B> for DeepCopy {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| {
            let grad = t.is_require_grad();
            let copy = Tensor::from_data(t.to_data(), &t.device());
            if grad {
                copy.require_grad()
            } else {
                copy
            }
        })
    }
}

/// One step's work for a worker: its shards (image `[b, C, S, S]` and one-hot `[b, K, S, S]`
/// data, one pair per accumulated batch), learning rates and transfer weights.
struct Job {
    shards: Vec<(TensorData, TensorData)>,
    lrs: [f64; 2],
    beta_r: f64,
    beta_f: f64,
}

struct Worker {
    jobs: SyncSender<Job>,
    results: Receiver<Result<[Terms; 2], String>>,
    handle: JoinHandle<()>,
}

/// The replicas of an N-device run; peer 0 is the caller's thread. With one device there are
/// no workers and [`DataParallel::step`] is the plain single-device step.
pub(crate) struct DataParallel {
    workers: Vec<Worker>,
}

impl DataParallel {
    /// Registers peer 0 and starts N−1 workers holding copies of `students` and `optims`.
    pub(crate) fn start<B: AutodiffBackend>(
        cfg: &TrainConfig,
        students: &[TrainStudent<B>; 2],
        optims: &[StudentOptimizer<B>; 2],
        devices: usize,
        device: &B::Device,
    ) -> Result<Self> {
        if devices <= 1 {
            return Ok(DataParallel {
                workers: Vec::new(),
            });
        }
        // Burn creates parameters lazily and a clone of a not-yet-created parameter draws its
        // own values: `train` creates them all first (`materialize_params`) and `resume` loads
        // them, so the copies below copy values.
        let config = CollectiveConfig::default().with_num_devices(devices);
        let mut workers = Vec::with_capacity(devices - 1);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(devices);
        for peer in 1..devices {
            let (jobs, job_rx) = sync_channel::<Job>(1);
            let (result_tx, results) = sync_channel(1);
            let mut replicas = students.clone().map(|s| s.map(&mut DeepCopy));
            let mut replica_optims = [
                optims[0].replicate(&cfg.optim.cnn),
                optims[1].replicate(&cfg.optim.transformer),
            ];
            let (cfg, device, config, ready) = (
                cfg.clone(),
                device.clone(),
                config.clone(),
                ready_tx.clone(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("ctrcl-peer-{peer}"))
                .spawn(move || {
                    let id = PeerId::from(peer);
                    let registered = register::<B::InnerBackend>(id, device.clone(), config)
                        .map_err(|e| format!("peer {peer}: cannot join the collective: {e:?}"));
                    let ok = registered.is_ok();
                    let _ = ready.send(registered);
                    if !ok {
                        return;
                    }
                    while let Ok(job) = job_rx.recv() {
                        let batches = job
                            .shards
                            .into_iter()
                            .map(|(x, y)| {
                                (Tensor::from_data(x, &device), Tensor::from_data(y, &device))
                            })
                            .collect();
                        let terms = pair_step(
                            &cfg,
                            &mut replicas,
                            &mut replica_optims,
                            batches,
                            job.lrs,
                            job.beta_r,
                            job.beta_f,
                            Some(id),
                        )
                        .map_err(|e| format!("{e:#}"));
                        let failed = terms.is_err();
                        if result_tx.send(terms).is_err() || failed {
                            break;
                        }
                    }
                    let _ = finish_collective::<B::InnerBackend>(id);
                })
                .context("cannot start a data-parallel worker thread")?;
            workers.push(Worker {
                jobs,
                results,
                handle,
            });
        }
        register::<B::InnerBackend>(PeerId::from(0), device.clone(), config)
            .map_err(|e| anyhow!("peer 0: cannot join the collective: {e:?}"))?;
        for _ in 1..devices {
            ready_rx
                .recv()
                .context("a data-parallel worker stopped while starting")?
                .map_err(|e| anyhow!(e))?;
        }
        Ok(DataParallel { workers })
    }

    /// Number of peers, peer 0 included.
    pub(crate) fn devices(&self) -> usize {
        self.workers.len() + 1
    }

    /// One synchronous data-parallel step over the global `batches` (`x` `[B, C, S, S]`,
    /// one-hot `[B, K, S, S]` each): peer 0 trains on the first shard of each batch here, the
    /// workers on the others. Returns the loss terms averaged over the peers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step<B: AutodiffBackend>(
        &self,
        cfg: &TrainConfig,
        students: &mut [TrainStudent<B>; 2],
        optims: &mut [StudentOptimizer<B>; 2],
        batches: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
        lrs: [f64; 2],
        beta_r: f64,
        beta_f: f64,
    ) -> Result<[Terms; 2]> {
        let n = self.devices();
        if n == 1 {
            return pair_step(cfg, students, optims, batches, lrs, beta_r, beta_f, None);
        }
        let mut own = Vec::with_capacity(batches.len());
        let mut per_worker: Vec<Vec<(TensorData, TensorData)>> = vec![Vec::new(); n - 1];
        for (x, onehot) in batches {
            let b = x.dims()[0];
            if !b.is_multiple_of(n) {
                bail!("a batch of {b} cannot be split evenly over {n} devices");
            }
            let shard = b / n;
            let xs = x.chunk(n, 0);
            let ys = onehot.chunk(n, 0);
            for (p, (xs, ys)) in xs.into_iter().zip(ys).enumerate() {
                debug_assert_eq!(xs.dims()[0], shard);
                if p == 0 {
                    own.push((xs, ys));
                } else {
                    per_worker[p - 1].push((xs.into_data(), ys.into_data()));
                }
            }
        }
        for (worker, shards) in self.workers.iter().zip(per_worker) {
            worker
                .jobs
                .send(Job {
                    shards,
                    lrs,
                    beta_r,
                    beta_f,
                })
                .map_err(|_| anyhow!("a data-parallel worker stopped"))?;
        }
        let own = pair_step(
            cfg,
            students,
            optims,
            own,
            lrs,
            beta_r,
            beta_f,
            Some(PeerId::from(0)),
        )?;
        let mut terms = [Terms::default(); 2];
        let w = 1.0 / n as f64;
        terms[0].add_scaled(&own[0], w);
        terms[1].add_scaled(&own[1], w);
        for worker in &self.workers {
            let theirs = worker
                .results
                .recv()
                .map_err(|_| anyhow!("a data-parallel worker stopped during a step"))?
                .map_err(|e| anyhow!(e))?;
            terms[0].add_scaled(&theirs[0], w);
            terms[1].add_scaled(&theirs[1], w);
        }
        Ok(terms)
    }

    /// Stops the workers and leaves the collective.
    pub(crate) fn finish<B: AutodiffBackend>(self) -> Result<()> {
        if self.workers.is_empty() {
            return Ok(());
        }
        for worker in self.workers {
            drop(worker.jobs);
            worker
                .handle
                .join()
                .map_err(|_| anyhow!("a data-parallel worker panicked"))?;
        }
        finish_collective::<B::InnerBackend>(PeerId::from(0))
            .map_err(|e| anyhow!("peer 0: leaving the collective: {e:?}"))
    }
}

//! Data-parallel training (`[parallel]`): several devices of one machine (`ctrcl train --devices
//! N`) and several machines (`--nodes N --node-rank R --coordinator HOST:PORT`), with Burn's
//! collective all-reduce (`burn-collective`), not a home-made one.
//!
//! Every machine runs the same loop on the same global batch stream. On each machine the
//! training thread is the first local peer and keeps the students that the loop validates and
//! checkpoints; the other local peers are worker threads, each with a replica of both students
//! and both optimizers (same parameter ids, same values, same optimizer state). Every step the
//! global batch is split into `nodes × devices` equal shards along the batch axis, peer
//! `rank × devices + d` taking shard `rank × devices + d`; each peer computes its shard's loss and
//! gradients, the gradients of each student are averaged over all peers (one all-reduce, mean),
//! and every peer applies the same optimizer step, so all replicas stay identical. The logged
//! loss terms are averaged over all peers the same way, so every machine logs the global batch's
//! loss and takes the same decisions (e.g. stopping on a non-finite loss).
//!
//! Across machines, Burn's global orchestrator (`ctrcl coordinator`, started by rank 0 unless
//! told otherwise) introduces the nodes to each other; gradients then travel node to node over
//! WebSocket (each node's tensor service listens on its `node_address`).
//!
//! As with PyTorch's DDP, terms that are statistics of the batch are computed per shard:
//! BatchNorm statistics, the batch-summed soft Dice, CFCL's class prototypes, KDCL's ensemble.
//! Where every term is a mean over samples (e.g. cross-entropy + RLCL on LayerNorm students) the
//! step equals the single-device step on the global batch up to float summation order; the tests
//! check exactly that. Dropout and drop-path masks come from the backend's one random stream,
//! drawn by the peers in thread order, so runs with dropout and N > 1 are not bit-reproducible.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::str::FromStr;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use burn::collective::{
    all_reduce, finish_collective, register, CollectiveConfig, PeerId, ReduceOperation,
};
use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::backend::DeviceId;
use burn_communication::Address;

use crate::config::{host_port, ParallelConfig, TrainConfig};
use crate::objective::Terms;
use crate::step::{pair_step, StepRates};
use crate::student::{StudentOptimizer, TrainStudent};

/// Gives every float parameter its own storage and autodiff leaf (same id, same values) on the
/// replica's device. A plain clone shares the tensors, so two threads' graphs would meet at the
/// same leaf nodes.
struct DeepCopy<D> {
    device: D,
}

impl<B: Backend> ModuleMapper<B> for DeepCopy<B::Device> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| {
            let grad = t.is_require_grad();
            let copy = Tensor::from_data(t.to_data(), &self.device);
            if grad {
                copy.require_grad()
            } else {
                copy
            }
        })
    }
}

/// One step's work for a worker: its shards (image `[b, C, S, S]` and one-hot `[b, K, S, S]`
/// data, one pair per accumulated batch) and the step's rates.
struct Job {
    shards: Vec<(TensorData, TensorData)>,
    rates: StepRates,
}

struct Worker {
    jobs: SyncSender<Job>,
    results: Receiver<Result<[Terms; 2], String>>,
    handle: JoinHandle<()>,
}

/// Where this process sits among all peers, and how its collective is configured.
struct Topology {
    /// Peers on this machine (`parallel.devices`).
    local: usize,
    /// Peers over all machines (`nodes × devices`).
    total: usize,
    /// Global id of this machine's first peer (`node_rank × devices`).
    first: usize,
    config: CollectiveConfig,
}

impl Topology {
    fn new(parallel: &ParallelConfig) -> Result<Self> {
        let local = parallel.devices;
        let mut config = CollectiveConfig::default().with_num_devices(local);
        if parallel.nodes > 1 {
            let node = node_address(parallel)?;
            let (_, port) = host_port(&node)?;
            let url = |hp: &str| -> Result<Address> {
                Address::from_str(&format!("ws://{hp}")).map_err(|e| anyhow!("{hp}: {e}"))
            };
            config = config
                .with_num_nodes(parallel.nodes as u32)
                .with_global_address(url(&parallel.coordinator)?)
                .with_node_address(url(&node)?)
                .with_data_service_port(port);
        }
        Ok(Topology {
            local,
            total: parallel.peers(),
            first: parallel.node_rank * local,
            config,
        })
    }
}

/// The device of local peer `p`: the backend's device `p` places after the training thread's
/// (GPU k + p on a CUDA build started on GPU k). On the CPU backend every index is the one CPU.
fn local_device<B: Backend>(base: &B::Device, p: usize) -> B::Device {
    let id = base.to_id();
    B::Device::from_id(DeviceId {
        type_id: id.type_id,
        index_id: id.index_id + p as u16,
    })
}

/// `parallel.node_address`, or this machine's address on the route to the coordinator with
/// port coordinator port + 1 + node_rank.
pub fn node_address(parallel: &ParallelConfig) -> Result<String> {
    if !parallel.node_address.is_empty() {
        return Ok(parallel.node_address.clone());
    }
    let (host, port) = host_port(&parallel.coordinator)?;
    let target = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the coordinator's host {host}"))?
        .next()
        .ok_or_else(|| anyhow!("the coordinator's host {host} has no address"))?;
    // Connecting a UDP socket sends nothing; it only picks the local interface for the route.
    let bind = if target.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket =
        UdpSocket::bind(bind).context("cannot open a UDP socket to find this node's address")?;
    socket
        .connect(target)
        .with_context(|| format!("no route to the coordinator {}", parallel.coordinator))?;
    let ip = socket.local_addr()?.ip();
    let own_port = usize::from(port) + 1 + parallel.node_rank;
    let own_port = u16::try_from(own_port).map_err(|_| {
        anyhow!("coordinator port {port} + 1 + node_rank is past 65535; set parallel.node_address")
    })?;
    Ok(match ip {
        IpAddr::V4(v4) => format!("{v4}:{own_port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{own_port}"),
    })
}

/// The replicas of a data-parallel run; the first local peer is the caller's thread. With one
/// peer in all there are no workers and [`DataParallel::step`] is the plain single-device step.
pub(crate) struct DataParallel {
    workers: Vec<Worker>,
    /// Peers over all machines.
    total: usize,
    /// Global id of the caller's peer.
    first: usize,
    /// Whether several machines take part (a final barrier orders the shutdown).
    multi_node: bool,
}

impl DataParallel {
    /// Joins the collective as this machine's first peer and starts `devices − 1` workers
    /// holding copies of `students` and `optims`. With several nodes this waits (retrying every
    /// second) until the coordinator answers and every node has joined.
    pub(crate) fn start<B: AutodiffBackend>(
        cfg: &TrainConfig,
        students: &[TrainStudent<B>; 2],
        optims: &[StudentOptimizer<B>; 2],
        device: &B::Device,
    ) -> Result<Self> {
        let topology = Topology::new(&cfg.parallel)?;
        let (first, total) = (topology.first, topology.total);
        if total <= 1 {
            return Ok(DataParallel {
                workers: Vec::new(),
                total,
                first,
                multi_node: false,
            });
        }
        // Burn creates parameters lazily and a clone of a not-yet-created parameter draws its
        // own values: `train` creates them all first (`materialize_params`) and `resume` loads
        // them, so the copies below copy values.
        let config = topology.config;
        let mut workers = Vec::with_capacity(topology.local - 1);
        let (ready_tx, ready_rx) = sync_channel::<Result<(), String>>(topology.local);
        for peer in first + 1..first + topology.local {
            let (jobs, job_rx) = sync_channel::<Job>(1);
            let (result_tx, results) = sync_channel(1);
            let device = local_device::<B>(device, peer - first);
            let mut replicas = students.clone().map(|s| {
                s.map(&mut DeepCopy {
                    device: device.clone(),
                })
            });
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
            let multi_node = cfg.parallel.nodes > 1;
            let total = cfg.parallel.peers();
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
                            job.rates,
                            Some(id),
                        )
                        .map_err(|e| format!("{e:#}"));
                        let failed = terms.is_err();
                        if result_tx.send(terms).is_err() || failed {
                            break;
                        }
                    }
                    if multi_node {
                        let _ = barrier::<B::InnerBackend>(id, total, &device);
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
        register::<B::InnerBackend>(PeerId::from(first), device.clone(), config).map_err(|e| {
            anyhow!(
                "peer {first}: cannot join the collective{}: {e:?}",
                if cfg.parallel.nodes > 1 {
                    format!(" (coordinator {})", cfg.parallel.coordinator)
                } else {
                    String::new()
                }
            )
        })?;
        for _ in 1..topology.local {
            ready_rx
                .recv()
                .context("a data-parallel worker stopped while starting")?
                .map_err(|e| anyhow!(e))?;
        }
        Ok(DataParallel {
            workers,
            total,
            first,
            multi_node: cfg.parallel.nodes > 1,
        })
    }

    /// One synchronous data-parallel step over the global `batches` (`x` `[B, C, S, S]`,
    /// one-hot `[B, K, S, S]` each): of each batch's `total` shards, the caller's peer trains on
    /// shard `first` here and the workers on the next ones. Returns the loss terms averaged
    /// over all peers.
    pub(crate) fn step<B: AutodiffBackend>(
        &self,
        cfg: &TrainConfig,
        students: &mut [TrainStudent<B>; 2],
        optims: &mut [StudentOptimizer<B>; 2],
        batches: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
        rates: StepRates,
    ) -> Result<[Terms; 2]> {
        let n = self.total;
        if n == 1 {
            return pair_step(cfg, students, optims, batches, rates, None);
        }
        let local = self.workers.len() + 1;
        let mut own = Vec::with_capacity(batches.len());
        let mut per_worker: Vec<Vec<(TensorData, TensorData)>> = vec![Vec::new(); local - 1];
        for (x, onehot) in batches {
            let b = x.dims()[0];
            if !b.is_multiple_of(n) {
                bail!("a batch of {b} cannot be split evenly over {n} peers");
            }
            let shard = b / n;
            for p in 0..local {
                let start = (self.first + p) * shard;
                let xs = x.clone().narrow(0, start, shard);
                let ys = onehot.clone().narrow(0, start, shard);
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
                .send(Job { shards, rates })
                .map_err(|_| anyhow!("a data-parallel worker stopped"))?;
        }
        // Every peer's terms are already the all-peer means (pair_step reduces them).
        let terms = pair_step(
            cfg,
            students,
            optims,
            own,
            rates,
            Some(PeerId::from(self.first)),
        )?;
        for worker in &self.workers {
            worker
                .results
                .recv()
                .map_err(|_| anyhow!("a data-parallel worker stopped during a step"))?
                .map_err(|e| anyhow!(e))?;
        }
        Ok(terms)
    }

    /// Stops the workers and leaves the collective. With several machines, every peer first
    /// meets the others at a barrier (all have finished training), then rank 0 — whose process
    /// hosts the coordinator — leaves last, so that the coordinator outlives the other nodes'
    /// goodbyes.
    pub(crate) fn finish<B: AutodiffBackend>(self, device: &B::Device) -> Result<()> {
        if self.total <= 1 {
            return Ok(());
        }
        let me = PeerId::from(self.first);
        let mut handles = Vec::with_capacity(self.workers.len());
        for worker in self.workers {
            drop(worker.jobs);
            handles.push(worker.handle);
        }
        if self.multi_node {
            barrier::<B::InnerBackend>(me, self.total, device)?;
        }
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow!("a data-parallel worker panicked"))?;
        }
        if !self.multi_node {
            return finish_collective::<B::InnerBackend>(me)
                .map_err(|e| anyhow!("peer {}: leaving the collective: {e:?}", self.first));
        }
        if self.first == 0 {
            std::thread::sleep(RANK_ZERO_GRACE);
        }
        // Leaving talks to the coordinator; if it is gone already (e.g. rank 0 ended first on
        // a slow network), the results are saved and there is nothing left to wait for.
        let (done_tx, done_rx) = sync_channel(1);
        std::thread::spawn(move || {
            let _ = done_tx.send(finish_collective::<B::InnerBackend>(me));
        });
        match done_rx.recv_timeout(LEAVE_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: peer {}: leaving the collective: {e:?}", self.first),
            Err(_) => eprintln!(
                "warning: peer {}: the coordinator did not answer the goodbye within {} s; exiting anyway",
                self.first,
                LEAVE_TIMEOUT.as_secs()
            ),
        }
        Ok(())
    }
}

/// How long rank 0 waits after the final barrier before leaving (and stopping the coordinator
/// it hosts): the other nodes' goodbyes are one round trip each.
const RANK_ZERO_GRACE: Duration = Duration::from_secs(1);
/// How long a node waits for the coordinator to acknowledge its goodbye.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Blocks until every peer has called it (an all-reduce of `peers` numbers: Burn's ring
/// all-reduce across nodes needs at least one element per node).
fn barrier<B: Backend>(peer: PeerId, peers: usize, device: &B::Device) -> Result<()> {
    let one = Tensor::<B, 1>::ones([peers], device);
    all_reduce::<B>(peer, one.into_primitive().tensor(), ReduceOperation::Sum)
        .map(|_| ())
        .map_err(|e| anyhow!("peer {}: final barrier failed: {e:?}", peer.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_address_defaults_to_the_route_to_the_coordinator() {
        let mut p = ParallelConfig {
            nodes: 2,
            node_rank: 1,
            coordinator: "127.0.0.1:29500".into(),
            ..ParallelConfig::default()
        };
        // Loopback coordinator: this node is reached on loopback, at port + 1 + rank.
        assert_eq!(node_address(&p).unwrap(), "127.0.0.1:29502");
        p.node_address = "10.1.2.3:4000".into();
        assert_eq!(node_address(&p).unwrap(), "10.1.2.3:4000");
        p.node_address.clear();
        p.coordinator = "127.0.0.1:65535".into();
        let e = format!("{:#}", node_address(&p).unwrap_err());
        assert!(e.contains("parallel.node_address"), "{e}");
    }
}

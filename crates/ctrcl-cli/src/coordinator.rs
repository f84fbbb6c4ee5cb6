//! `ctrcl coordinator`: Burn's global collective orchestrator for multi-node training, and the
//! child process through which rank 0's `ctrcl train` hosts it.
//!
//! The orchestrator runs in its own process, not in a thread of the trainer: Burn's orchestrator
//! installs Ctrl-C/SIGTERM handlers to shut itself down, which inside the trainer would stop
//! Ctrl-C from interrupting training.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ctrcl_train::config::host_port;
use ctrcl_train::TrainConfig;

#[derive(clap::Args)]
pub struct Args {
    /// Port to listen on (all interfaces); the nodes' --coordinator is HOST:PORT of this machine.
    #[arg(long, default_value_t = 29500)]
    pub port: u16,
}

/// Serves until Ctrl-C or SIGTERM.
pub fn run(args: Args) -> Result<()> {
    // Burn's orchestrator only logs a failed bind; check first so that the error is clear.
    drop(TcpListener::bind(("0.0.0.0", args.port)).with_context(|| {
        format!(
            "the coordinator cannot listen on port {} (in use? another coordinator?)",
            args.port
        )
    })?);
    eprintln!(
        "coordinator: listening on port {} (Ctrl-C stops it)",
        args.port
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the coordinator's runtime")?;
    runtime.block_on(burn_collective::start_global_orchestrator(args.port));
    Ok(())
}

/// A coordinator child process, stopped when dropped (the end of training, or an error).
pub struct Hosted(Child);

impl Drop for Hosted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ctrcl coordinator` on the coordinator's port when this is rank 0 of a multi-node run
/// that hosts it (`parallel.host_coordinator`).
pub fn host_if_rank_zero(cfg: &TrainConfig) -> Result<Option<Hosted>> {
    let p = &cfg.parallel;
    if p.nodes <= 1 || p.node_rank != 0 || !p.host_coordinator {
        return Ok(None);
    }
    let (_, port) = host_port(&p.coordinator)?;
    let exe = std::env::current_exe().context("cannot find the ctrcl executable")?;
    let mut child = Command::new(exe)
        .args(["coordinator", "--port", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the coordinator process")?;
    // A coordinator that cannot bind exits at once; give it a moment to say so.
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = child.try_wait()? {
        bail!(
            "the coordinator exited ({status}) — is port {port} taken? With a coordinator of \
             your own, set parallel.host_coordinator=false"
        );
    }
    Ok(Some(Hosted(child)))
}

//! ctrcl patch: kernels compiled on a pool of threads while the client queues launches.
//!
//! Upstream cubecl 0.10 compiles a kernel (IR → CUDA C++ → NVRTC → PTX) on the device's server
//! thread the first time the server meets its launch, so a cold start compiles every kernel one
//! after another on one CPU core while the GPU idles (the first ctrcl run on an H200 compiled
//! ~1.5 s per kernel). Burn's client thread, however, queues launches without waiting for them
//! (allocations are decided on the client, only reads block), so by the time the server reaches
//! the first launch of a training step the client has usually queued many more.
//!
//! With `CTRCL_COMPILE_THREADS=N` (N ≥ 2; unset, 0 or 1 = off, upstream behaviour) the client-side
//! hook [`Precompiler::prepare`] (called by the patched `ComputeClient::launch_inner` through
//! `ComputeServer::prepare_launch`) hands each kernel id it has not seen before, and that the
//! persistent PTX cache does not hold, to a pool of N threads, which run the whole compilation.
//! The server's `CudaContext::compile_kernel` takes the finished PTX from [`Precompiler::take`]
//! (waiting if the job is still running), stores it in the PTX cache and loads it exactly as if it
//! had compiled it; a kernel the pool failed on is compiled again on the server, which reports
//! the error as upstream does. Launch order, the PTX and the loaded module are unchanged: only
//! where and when NVRTC runs changes. NVRTC compiles independent programs concurrently; each
//! compilation holds a few hundred MB of host memory, hence a bounded pool.
//!
//! The pool itself (threads, run-once per kernel id, waiting, panics) is ctrcl's
//! `ctrcl-compile-pool` crate, tested there without a GPU; this file says what a job does.

use std::ffi::{CStr, CString, c_char};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ctrcl_compile_pool::CompilePool;
use cubecl_core::{
    compilation_cache::CompilationCache, hash::StableHash, ir::DeviceProperties, prelude::*,
};
use cubecl_cpp::{cuda::arch::CudaArchitecture, shared::CompilationOptions};
use cubecl_runtime::{
    compiler::CubeTask,
    id::KernelId,
    kernel::KernelMetadata,
    validation::{validate_cube_dim, validate_units},
};

use super::context::PtxCacheEntry;
use crate::{
    CudaCompiler,
    install::{cccl_include_path, include_path},
};

/// The persistent PTX cache, shared by the server's context and the pool's dispatcher.
pub(crate) type SharedPtxCache = Arc<Mutex<Option<CompilationCache<StableHash, PtxCacheEntry>>>>;

/// Environment variable naming the number of compile threads.
pub const THREADS_VAR: &str = "CTRCL_COMPILE_THREADS";

/// A kernel compiled by the pool: what the PTX cache stores, plus its cube dim.
pub(crate) struct Precompiled {
    pub entry: PtxCacheEntry,
    pub cube_dim: CubeDim,
}

type Outcome = Result<Precompiled, String>;

/// What every job needs to know about the device.
struct Target {
    options: CompilationOptions,
    arch: CudaArchitecture,
    properties: DeviceProperties,
}

struct Shared {
    target: Arc<Target>,
    cache: SharedPtxCache,
    pool: CompilePool<KernelId, Outcome>,
}

/// The pool of one device (`ServerUtilities::info` of the CUDA server); off unless
/// `CTRCL_COMPILE_THREADS` ≥ 2.
#[derive(Clone)]
pub struct Precompiler {
    shared: Option<Arc<Shared>>,
}

impl core::fmt::Debug for Precompiler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Precompiler")
            .field("enabled", &self.shared.is_some())
            .finish()
    }
}

/// Threads asked for by `CTRCL_COMPILE_THREADS`; `None` = off (unset, unparsable, 0 or 1).
fn threads_from_env() -> Option<usize> {
    let value = std::env::var(THREADS_VAR).ok()?;
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 2 => Some(n),
        Ok(_) => None,
        Err(_) => {
            log::warn!(
                "{THREADS_VAR}={value:?} is not a number of threads; compiling on the server thread"
            );
            None
        }
    }
}

impl Precompiler {
    /// No pool: every kernel is compiled on the server thread (upstream behaviour).
    pub(crate) fn off() -> Self {
        Self { shared: None }
    }

    pub(crate) fn new(
        options: CompilationOptions,
        arch: CudaArchitecture,
        properties: DeviceProperties,
        cache: SharedPtxCache,
    ) -> Self {
        let Some(threads) = threads_from_env() else {
            return Self::off();
        };
        let pool = match CompilePool::new(threads, "cubecl-cuda-compile") {
            Ok(pool) => pool,
            Err(err) => {
                log::warn!(
                    "could not start compile threads ({err}); compiling on the server thread"
                );
                return Self::off();
            }
        };
        Self {
            shared: Some(Arc::new(Shared {
                target: Arc::new(Target {
                    options,
                    arch,
                    properties,
                }),
                cache,
                pool,
            })),
        }
    }

    /// Client thread, before a launch is queued: start compiling `kernel` if it is new and not
    /// in the PTX cache. Returns the kernel to queue (the same task, shared with the pool).
    pub(crate) fn prepare(
        &self,
        kernel: Box<dyn CubeTask<CudaCompiler>>,
        mode: ExecutionMode,
    ) -> Box<dyn CubeTask<CudaCompiler>> {
        let Some(shared) = &self.shared else {
            return kernel;
        };
        let mut kernel_id = kernel.id();
        kernel_id.mode(mode);
        let kernel: Arc<dyn CubeTask<CudaCompiler>> = Arc::from(kernel);
        let target = shared.target.clone();
        let job_kernel = kernel.clone();
        let queued = shared.pool.submit_once(
            kernel_id,
            |id| {
                // Kernels the server would reject are left to it (it reports the error), and
                // cached ones to its cache.
                validate_cube_dim(&target.properties, id).is_err()
                    || validate_units(&target.properties, id).is_err()
                    || shared
                        .cache
                        .lock()
                        .unwrap()
                        .as_ref()
                        .is_some_and(|cache| cache.get(&id.stable_hash()).is_some())
            },
            {
                let target = target.clone();
                move || compile(&target, job_kernel.as_ref(), mode)
            },
        );
        if queued {
            // Same compile-count record as the server's serial path (ctrcl counts these).
            log::trace!(target: "cubecl_cuda::compute::context", "Compiling kernel");
        }
        Box::new(SharedTask(kernel))
    }

    /// Server thread: the pool's result for `kernel_id`, waiting for it if still compiling;
    /// `None` when the pool was not asked (or is off).
    pub(crate) fn take(&self, kernel_id: &KernelId) -> Option<Outcome> {
        let outcome = self.shared.as_ref()?.pool.take(kernel_id)?;
        Some(outcome.unwrap_or_else(|panicked| Err(format!("panicked: {}", panicked.0))))
    }
}

/// The server's `compile_kernel` minus the debug logging: IR → C++ → NVRTC → PTX.
fn compile(target: &Target, kernel: &dyn CubeTask<CudaCompiler>, mode: ExecutionMode) -> Outcome {
    let started = std::time::Instant::now();
    let compiled = kernel
        .compile(
            &mut Default::default(),
            &target.options,
            mode,
            kernel.address_type(),
        )
        .map_err(|err| format!("{err:?}"))?;
    let repr = compiled.repr.as_ref().ok_or("no kernel representation")?;
    let shared_mem_bytes = repr.shared_memory_size();
    if shared_mem_bytes > target.properties.hardware.max_shared_memory_size {
        return Err("shared memory over the device's limit".into());
    }
    let ptx = nvrtc(&compiled.source, &target.arch)?;
    // Same timing record as the server's serial path (ctrcl sums these).
    log::trace!(
        target: "cubecl_cuda::compute::context",
        "Compiled kernel in {} us",
        started.elapsed().as_micros()
    );
    Ok(Precompiled {
        entry: PtxCacheEntry {
            entrypoint_name: compiled.entrypoint_name.clone(),
            shared_mem_bytes,
            ptx,
        },
        cube_dim: compiled.cube_dim,
    })
}

/// NVRTC with the options of `CudaContext::compile_kernel`.
fn nvrtc(source: &str, arch: &CudaArchitecture) -> Result<Vec<c_char>, String> {
    let arch = if arch.version >= 90 {
        format!("--gpu-architecture=sm_{arch}a")
    } else {
        format!("--gpu-architecture=sm_{arch}")
    };
    let include_option = format!("--include-path={}", include_path().to_str().unwrap());
    let cccl_include_path = cccl_include_path();
    let cccl_include_option = format!("--include-path={}", cccl_include_path.to_str().unwrap());
    let mut options = vec![arch.as_str(), include_option.as_str(), "-lineinfo"];
    if cccl_include_path.exists() {
        options.push(&cccl_include_option);
    }
    let source = CString::from_str(source).map_err(|err| format!("{err}"))?;
    // SAFETY: as in `CudaContext::compile_kernel`: the source outlives the program; NVRTC
    // compiles independent programs from several threads.
    unsafe {
        let program = cudarc::nvrtc::result::create_program(source.as_c_str(), None)
            .map_err(|err| format!("{err:?}"))?;
        let result = if cudarc::nvrtc::result::compile_program(program, &options).is_err() {
            let log = cudarc::nvrtc::result::get_program_log(program)
                .map(|raw| CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default();
            Err(format!("NVRTC: {log}"))
        } else {
            cudarc::nvrtc::result::get_ptx(program).map_err(|err| format!("{err:?}"))
        };
        let _ = cudarc::nvrtc::result::destroy_program(program);
        result
    }
}

/// A kernel shared between the launch queue and the pool.
struct SharedTask(Arc<dyn CubeTask<CudaCompiler>>);

impl KernelMetadata for SharedTask {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn id(&self) -> KernelId {
        self.0.id()
    }

    fn address_type(&self) -> cubecl_core::ir::StorageType {
        self.0.address_type()
    }
}

impl CubeTask<CudaCompiler> for SharedTask {
    fn compile(
        &self,
        compiler: &mut CudaCompiler,
        compilation_options: &CompilationOptions,
        mode: ExecutionMode,
        address_type: cubecl_core::ir::StorageType,
    ) -> Result<
        cubecl_runtime::kernel::CompiledKernel<CudaCompiler>,
        cubecl_runtime::compiler::CompilationError,
    > {
        self.0
            .compile(compiler, compilation_options, mode, address_type)
    }
}

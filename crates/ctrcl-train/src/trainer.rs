//! The collaborative training loop (METHOD.md §6): a new run (`train`) or an interrupted one
//! (`resume`) set up, then the loop — schedules, batches, the pair's step
//! ([`crate::step`], through the data-parallel wrapper), validation, checkpoints and the log.
//! The objective per method is `crate::objective`, the frozen teacher `crate::teacher`, the
//! run directory's files `crate::run_dir` and `crate::run_log`.

use crate::checkpoint::{recover_checkpoint, write_checkpoint, write_text_atomic};
use crate::config::TrainConfig;
use crate::distributed::DataParallel;
use crate::feed::Feed;
use crate::inference::{dice_on_samples, DiceScores};
use crate::kernels;
use crate::role::Role;
use crate::run_dir::{self, lock_run, prepare_run_dir, write_split_lists, RunInfo};
use crate::run_log::{class_presence_event, class_presence_line, truncate_log, RunLog};
use crate::step::{check_precision, StepRates};
use crate::student::{
    build_student, import_pretrained, materialize_params, recorder, save_module, StudentOptimizer,
    TrainStudent,
};
use crate::teacher::{load_teacher, resolve_teacher, teacher_slot};
use crate::tensorboard::EventWriter;
use anyhow::{bail, Context, Result};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use ctrcl_data::dataset::Dataset;
use ctrcl_data::split::Split;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a finished training run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub best_val: [DiceScores; 2],
    pub seconds: f64,
}

/// Prints above the progress bar, or plainly when the bar is hidden (output not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Poly learning-rate decay: lr·(1 − it/max_it)^power.
pub fn poly_lr(base: f64, step: usize, total: usize, power: f64) -> f64 {
    base * (1.0 - step as f64 / total as f64).max(0.0).powf(power)
}

/// Sigmoid ramp-up: β·exp(−5(1 − min(t, t_r)/t_r)²); the full β when t_r is 0.
pub fn ramp_up(beta: f64, step: usize, rampup_steps: f64) -> f64 {
    if rampup_steps <= 0.0 {
        return beta;
    }
    let phase = 1.0 - (step as f64).min(rampup_steps) / rampup_steps;
    beta * (-5.0 * phase * phase).exp()
}

/// Trains both students as `cfg` says, writing everything into `out`.
pub fn train<B: AutodiffBackend>(
    cfg: &TrainConfig,
    out: &Path,
    device: &B::Device,
    backend: &str,
    progress: bool,
) -> Result<TrainSummary> {
    let kernels_at_start = kernels::counts();
    cfg.validate()?;
    let dataset = Dataset::open(&cfg.data.dataset, cfg.data.open_options())
        .with_context(|| format!("opening dataset {}", cfg.data.dataset.display()))?;
    let presence = class_presence_event(&dataset);
    if progress {
        for note in &dataset.notes {
            eprintln!("data: {note}");
        }
        eprintln!("data: {}", class_presence_line(&presence));
    }
    // The input layer follows the data (3 channels for RGB datasets); recorded with the run.
    let mut with_channels = cfg.clone();
    with_channels.data.channels = dataset.channels();
    // `test`, `predict` and `report` reopen the data from any working directory.
    if let Some(split) = &cfg.data.split {
        with_channels.data.split = Some(std::fs::canonicalize(split).unwrap_or(split.clone()));
    }
    let cfg = &with_channels;
    let resolved;
    let cfg = if cfg.method.is_offline() {
        resolved = resolve_teacher(cfg, &dataset.class_names)?;
        &resolved
    } else {
        cfg
    };
    check_precision::<B>(cfg, device, backend)?;
    let k = dataset.num_classes();
    let memory = crate::memory::gate::<B>(cfg, k, device, progress)?;
    let run_dir = prepare_run_dir(out)?;
    let _lock = lock_run(out)?;
    let size = cfg.data.image_size;
    let info = RunInfo {
        ctrcl_version: env!("CARGO_PKG_VERSION").to_string(),
        commit: env!("CTRCL_GIT_COMMIT").to_string(),
        backend: backend.to_string(),
        machine: crate::bench::host_description(),
        method: cfg.method.name().to_string(),
        dataset: std::fs::canonicalize(&cfg.data.dataset)
            .unwrap_or_else(|_| cfg.data.dataset.clone()),
        class_names: dataset.class_names.clone(),
        image_size: size,
        cnn: cfg.students.cnn.name().to_string(),
        transformer: cfg.students.transformer.name().to_string(),
        channel_normalization: dataset.channel_norms.clone(),
        burn_fallbacks: ctrcl_models::switches::fallbacks()
            .into_iter()
            .map(String::from)
            .collect(),
    };
    write_text_atomic(&run_dir::config(out), &cfg.to_toml())?;
    write_text_atomic(&run_dir::info(out), &serde_json::to_string_pretty(&info)?)?;
    write_split_lists(&dataset, out)?;
    let log = std::fs::File::create(run_dir::log(out)).context("cannot create log.jsonl")?;
    let mut log = RunLog {
        file: log,
        events: EventWriter::create(out)?,
        class_names: dataset.class_names.clone(),
    };
    log.line(json!({"event": "start", "backend": backend, "method": cfg.method.name(), "image_size": size, "iterations": cfg.schedule.iterations, "batch_size": cfg.data.batch_size, "accumulate": cfg.optim.accumulate, "precision": cfg.precision.name(), "devices": cfg.parallel.devices, "nodes": cfg.parallel.nodes, "node_rank": cfg.parallel.node_rank, "seed": cfg.seed}))?;
    log.line(presence)?;
    if let Some((estimate, available)) = memory {
        log.line(json!({"event": "memory", "estimated_bytes": estimate.bytes, "available_bytes": available,
            "calibration_batch": estimate.calibration_batch,
            "calibration": estimate.measured.iter().map(|(size, peak)| json!({"image_size": size,
                "forward_backward_bytes": peak.gradients, "optimizer_bytes": peak.optimizer})).collect::<Vec<_>>()}))?;
    }

    B::seed(device, cfg.seed);
    let mut students = [
        build_student::<B>(cfg, Role::Cnn, k, device),
        build_student::<B>(cfg, Role::Transformer, k, device),
    ];
    if cfg.method.is_offline() {
        students[teacher_slot(cfg)].net = load_teacher(cfg, k, device)?;
    }
    for (i, role) in Role::BOTH.into_iter().enumerate() {
        if cfg.method.is_offline() && i == teacher_slot(cfg) {
            continue;
        }
        let imported = import_pretrained::<B>(cfg, role, k, device)?;
        if let Some((net, report, path)) = imported {
            students[i].net = net;
            log.line(json!({"event": "pretrained", "role": role.name(), "file": path,
                "loaded": report.loaded.len(), "missing": report.missing, "unexpected": report.unexpected}))?;
        }
    }
    // Each student's lazily initialised parameters are drawn now from a stream of its own, so
    // its initial weights depend on the seed and its role only — not on the forward order, the
    // other student, or a frozen teacher in the other slot — and data-parallel replicas can copy
    // them.
    for (i, s) in students.iter().enumerate() {
        B::seed(device, step_seed(cfg.seed, usize::MAX - i));
        materialize_params(s);
    }
    let optims = [
        StudentOptimizer::<B>::new(&cfg.optim.cnn),
        StudentOptimizer::<B>::new(&cfg.optim.transformer),
    ];
    run_dir.keep();
    let ctx = RunContext {
        cfg,
        out,
        dataset: &dataset,
        device,
        progress,
        kernels_at_start,
    };
    run_loop(
        ctx,
        RunState {
            students,
            optims,
            first_step: 0,
            best: [None, None],
            log,
        },
    )
}

/// The seed of step `t`'s random draws (dropout, stochastic depth): a function of (seed, t) only,
/// so that a resumed run draws exactly what an uninterrupted one would.
fn step_seed(seed: u64, step: usize) -> u64 {
    let mut z = seed ^ (step as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Continues an interrupted run from its `last/` checkpoint: both students, their CPM heads,
/// both optimizers' state and the step; the data order and random draws depend only on (seed,
/// step), so the resumed run logs exactly what the uninterrupted one would have. Log lines after
/// the checkpoint's step (written before the interruption) are dropped first.
pub fn resume<B: AutodiffBackend>(
    run: &Path,
    device: &B::Device,
    backend: &str,
    progress: bool,
) -> Result<TrainSummary> {
    let kernels_at_start = kernels::counts();
    let (cfg, info) = run_dir::open_run(run)?;
    check_precision::<B>(&cfg, device, backend)?;
    let _lock = lock_run(run)?;
    for name in [
        run_dir::LAST.to_string(),
        run_dir::best_name(Role::Cnn),
        run_dir::best_name(Role::Transformer),
    ] {
        if let Some(note) = recover_checkpoint(run, &name)? {
            eprintln!("{note}");
        }
    }
    let last = run_dir::last(run);
    let state_path = run_dir::state(&last);
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_path).with_context(|| {
            format!(
                "{} has no checkpoint to resume from ({})",
                run.display(),
                state_path.display()
            )
        })?)
        .with_context(|| format!("{} is not valid", state_path.display()))?;
    let step = state["step"]
        .as_u64()
        .with_context(|| format!("{}: no step", state_path.display()))? as usize;
    if step >= cfg.schedule.iterations {
        bail!(
            "{} already finished all {} iterations",
            run.display(),
            cfg.schedule.iterations
        );
    }
    let dataset = Dataset::open(&info.dataset, cfg.data.open_options())
        .with_context(|| format!("opening the run's dataset {}", info.dataset.display()))?;
    let k = dataset.num_classes();
    crate::memory::gate::<B>(&cfg, k, device, progress)?;
    B::seed(device, cfg.seed);
    let mut students = Vec::with_capacity(2);
    let mut optims = Vec::with_capacity(2);
    let mut best = Vec::with_capacity(2);
    for (role, optim_cfg) in Role::BOTH
        .into_iter()
        .zip([&cfg.optim.cnn, &cfg.optim.transformer])
    {
        let s = build_student::<B>(&cfg, role, k, device);
        let net = crate::student::load_net(s.net, &last, role, device)?;
        let cpm_path = last.join(format!("{}-cpm", role.name()));
        let cpm = s
            .cpm
            .load_file(cpm_path.clone(), &recorder(), device)
            .map_err(|e| anyhow::anyhow!("cannot load {}.mpk: {e}", cpm_path.display()))?;
        students.push(TrainStudent { net, cpm });
        optims.push(
            StudentOptimizer::<B>::new(optim_cfg)
                .load(&last.join(format!("{}-optim", role.name())), device)?,
        );
        best.push(run_dir::best_scores(run, role));
    }
    truncate_log(&run_dir::log(run), step)?;
    let file = std::fs::OpenOptions::new()
        .append(true)
        .open(run_dir::log(run))
        .context("cannot open log.jsonl")?;
    let mut log = RunLog {
        file,
        events: EventWriter::resume(run, step as u64)?,
        class_names: info.class_names.clone(),
    };
    log.line(json!({"event": "resume", "from_step": step, "backend": backend}))?;
    let students: [TrainStudent<B>; 2] = students
        .try_into()
        .map_err(|_| anyhow::anyhow!("two students"))?;
    let optims: [StudentOptimizer<B>; 2] = optims
        .try_into()
        .map_err(|_| anyhow::anyhow!("two optimizers"))?;
    let best: [Option<DiceScores>; 2] = best
        .try_into()
        .map_err(|_| anyhow::anyhow!("two students"))?;
    let ctx = RunContext {
        cfg: &cfg,
        out: run,
        dataset: &dataset,
        device,
        progress,
        kernels_at_start,
    };
    run_loop(
        ctx,
        RunState {
            students,
            optims,
            first_step: step,
            best,
            log,
        },
    )
}

/// What the loop reads: the run's settings, where it writes, its data and device.
struct RunContext<'a, B: AutodiffBackend> {
    cfg: &'a TrainConfig,
    out: &'a Path,
    dataset: &'a Dataset,
    device: &'a B::Device,
    progress: bool,
    /// GPU builds: the process's kernel counts when this run began (before its students were
    /// built), so the run logs what it compiled itself.
    kernels_at_start: Option<kernels::KernelCounts>,
}

/// What the loop starts from (a new run: step 0; `--resume`: the `last/` checkpoint's).
struct RunState<B: AutodiffBackend> {
    students: [TrainStudent<B>; 2],
    optims: [StudentOptimizer<B>; 2],
    first_step: usize,
    best: [Option<DiceScores>; 2],
    log: RunLog,
}

fn run_loop<B: AutodiffBackend>(ctx: RunContext<B>, state: RunState<B>) -> Result<TrainSummary> {
    let RunContext {
        cfg,
        out,
        dataset,
        device,
        progress,
        kernels_at_start,
    } = ctx;
    let RunState {
        mut students,
        mut optims,
        first_step,
        mut best,
        mut log,
    } = state;
    let k = dataset.num_classes();
    let size = cfg.data.image_size;
    let base_lr = [cfg.optim.cnn.lr, cfg.optim.transformer.lr];
    let val_samples = dataset.samples(Split::Val, size);
    let total = cfg.schedule.iterations;
    let rampup_steps = cfg.schedule.rampup_fraction * total as f64;
    let semi_rampup_steps = cfg.semi.rampup_fraction * total as f64;
    // With accumulation, step t consumes batches t·N .. t·N + N − 1 of the loaders' streams.
    let accumulate = cfg.optim.accumulate;
    let mut feed = Feed::start(cfg, dataset, first_step, total)?;
    if let (Some(event), 0) = (&feed.semi_event, first_step) {
        log.line(event.clone())?;
    }

    let bar = if progress {
        ProgressBar::new(total as u64).with_position(first_step as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta}) {msg}",
        )
        .expect("valid template"),
    );
    bar.set_prefix(format!(
        "{} {}+{}",
        cfg.method.name(),
        cfg.students.cnn.name(),
        cfg.students.transformer.name()
    ));
    let parallel = DataParallel::start(cfg, &students, &optims, device)?;
    let started = Instant::now();
    // GPU builds: the kernels this run compiles (issue #17) are logged after its first step,
    // which is where a cold start spends them, and at the end (validation compiles a few more).
    for step in first_step..total {
        B::seed(device, step_seed(cfg.seed, step));
        let beta_r = ramp_up(cfg.transfer_weight(), step, rampup_steps);
        let beta_f = ramp_up(cfg.cfcl.weight, step, rampup_steps);
        let lrs = base_lr.map(|lr| poly_lr(lr, step, total, cfg.optim.poly_power));
        let beta_u = ramp_up(cfg.semi.weight, step, semi_rampup_steps);
        let mut batches = Vec::with_capacity(accumulate);
        for _ in 0..accumulate {
            batches.push(feed.next::<B>(k, device)?);
        }
        let rates = StepRates {
            lrs,
            beta_r,
            beta_f,
            beta_u,
        };
        let [terms_c, terms_t] = parallel.step(cfg, &mut students, &mut optims, batches, rates)?;
        for (role, t) in Role::BOTH.iter().zip([&terms_c, &terms_t]) {
            if !t.total.is_finite() {
                // Recorded in the log too, so the run directory says why it stopped.
                log.line(
                    json!({"event": "stop", "reason": "diverged", "step": step + 1,
                    "role": role.name(), "terms": t.json(cfg)}),
                )?;
                bail!(
                    "step {}: the {} student's loss is not finite (ce {}, dice {}, logit transfer {}, feature transfer {}); \
                     training stopped; {}",
                    step + 1,
                    role.name(),
                    t.ce,
                    t.dice,
                    t.transfer_logit,
                    t.transfer_feature,
                    last_checkpoint_note(out)
                );
            }
        }
        if let (Some(compiled), true) = (kernels::since(kernels_at_start), step == first_step) {
            log.line(
                json!({"event": "first_step", "seconds": started.elapsed().as_secs_f64(),
                "kernels": compiled}),
            )?;
        }
        bar.inc(1);
        bar.set_message(format!(
            "loss cnn {:.3} transformer {:.3}",
            terms_c.total, terms_t.total
        ));
        let done = step + 1;
        if done % cfg.schedule.log_every == 0 || done == total {
            let mut line = json!({
                "step": done,
                "lr": {"cnn": lrs[0], "transformer": lrs[1]},
                "beta_r": beta_r, "beta_f": beta_f,
                "cnn": terms_c.json(cfg),
                "transformer": terms_t.json(cfg),
                "elapsed_s": started.elapsed().as_secs_f64(),
            });
            if cfg.is_semi() {
                line["beta_u"] = json!(beta_u);
            }
            log.line(line)?;
        }
        if done % cfg.schedule.validate_every == 0 || done == total {
            let mut val = serde_json::Map::new();
            for (i, role) in Role::BOTH.iter().enumerate() {
                let net = students[i].net.valid();
                let scores = if val_samples.is_empty() {
                    DiceScores {
                        per_class: vec![f64::NAN; k - 1],
                        mean: f64::NAN,
                    }
                } else {
                    dice_on_samples(&net, &val_samples, size, k, device)
                };
                val.insert(
                    role.name().into(),
                    json!({"mean_dice": scores.mean, "per_class_dice": scores.per_class}),
                );
                // Without a validation split (Synapse's protocol) the best checkpoints follow
                // the last one.
                if val_samples.is_empty() || best[i].as_ref().is_none_or(|b| scores.mean > b.mean) {
                    write_checkpoint(out, &run_dir::best_name(*role), |dir| {
                        save_module(students[i].net.clone(), &dir.join(role.name()))?;
                        write_text_atomic(
                            &run_dir::state(dir),
                            &json!({"step": done, "val_mean_dice": scores.mean, "val_per_class_dice": scores.per_class}).to_string(),
                        )
                    })?;
                    best[i] = Some(scores);
                }
            }
            log.line(json!({"step": done, "val": val}))?;
            save_last(out, &students, &optims, done)?;
            let message = if val_samples.is_empty() {
                format!("step {done}/{total}: no validation split; best-* checkpoints = last")
            } else {
                format!(
                    "step {done}/{total}: validation mean Dice cnn {:.4} transformer {:.4}",
                    val["cnn"]["mean_dice"].as_f64().unwrap_or(f64::NAN),
                    val["transformer"]["mean_dice"].as_f64().unwrap_or(f64::NAN)
                )
            };
            say(&bar, message);
        }
    }
    bar.finish_and_clear();
    parallel.finish::<B>(device)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut end = json!({"event": "end", "seconds": seconds});
    if let Some(compiled) = kernels::since(kernels_at_start) {
        end["kernels"] = json!(compiled);
    }
    log.line(end)?;
    let [c, t] = best;
    Ok(TrainSummary {
        run_dir: out.to_path_buf(),
        best_val: [
            c.expect("validated at the end"),
            t.expect("validated at the end"),
        ],
        seconds,
    })
}

/// What a stopped run leaves to resume from: the step of its intact `last/` checkpoint, or that
/// there is none yet.
fn last_checkpoint_note(out: &Path) -> String {
    match run_dir::checkpoint_step(&run_dir::last(out)) {
        Some(step) => format!(
            "the last checkpoint, {} (step {step}), is intact",
            run_dir::last(out).display()
        ),
        None => format!(
            "no checkpoint was written yet (one is written every schedule.validate_every steps), so {} cannot be resumed",
            out.display()
        ),
    }
}

fn save_last<B: AutodiffBackend>(
    out: &Path,
    students: &[TrainStudent<B>; 2],
    optims: &[StudentOptimizer<B>; 2],
    step: usize,
) -> Result<()> {
    write_checkpoint(out, run_dir::LAST, |dir| {
        for (i, role) in Role::BOTH.iter().enumerate() {
            save_module(students[i].net.clone(), &dir.join(role.name()))?;
            save_module(
                students[i].cpm.clone(),
                &dir.join(format!("{}-cpm", role.name())),
            )?;
            optims[i].save(&dir.join(format!("{}-optim", role.name())))?;
        }
        write_text_atomic(&run_dir::state(dir), &json!({"step": step}).to_string())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poly_and_ramp_follow_their_formulas() {
        assert!((poly_lr(0.01, 0, 100, 0.9) - 0.01).abs() < 1e-15);
        assert!((poly_lr(0.01, 50, 100, 0.9) - 0.01 * 0.5f64.powf(0.9)).abs() < 1e-15);
        assert_eq!(poly_lr(0.01, 100, 100, 0.9), 0.0);
        assert!((ramp_up(1.0, 0, 10.0) - (-5.0f64).exp()).abs() < 1e-15);
        assert!((ramp_up(2.0, 5, 10.0) - 2.0 * (-1.25f64).exp()).abs() < 1e-15);
        assert_eq!(ramp_up(0.1, 10, 10.0), 0.1);
        assert_eq!(ramp_up(0.1, 50, 10.0), 0.1);
        assert_eq!(ramp_up(0.3, 0, 0.0), 0.3);
    }
}

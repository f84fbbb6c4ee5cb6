//! `ctrcl evaluate`: its arguments and its printed table; the scoring itself is
//! `ctrcl_train::score` (metrics of predicted label maps against references, paired by case id,
//! in the published conventions of METHOD.md §8).

use anyhow::Result;
use ctrcl_metrics::distance::Hd95Mode;
use ctrcl_metrics::modes::Mode;
use ctrcl_train::score::{check_spacing, score_folders, ScoreOptions};
use std::path::PathBuf;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Transunet,
    Strict,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Hd95Arg {
    Pooled,
    Max,
}

#[derive(clap::Args)]
pub struct Args {
    /// Folder of predicted label maps (.nii, .nii.gz, .png; a 0/255 PNG mask is read as 0/1).
    #[arg(long)]
    pred: PathBuf,
    /// Folder of reference label maps with the same case ids.
    #[arg(long)]
    truth: PathBuf,
    /// transunet: TransUNet's per-case rules, unit spacing unless --spacing; strict: NaN where a
    /// mask is empty, spacing from the file header.
    #[arg(long, value_enum, default_value_t = ModeArg::Transunet)]
    mode: ModeArg,
    /// pooled: medpy's 95th percentile of both directions pooled; max: MONAI's larger directed one.
    #[arg(long, value_enum, default_value_t = Hd95Arg::Pooled)]
    hd95: Hd95Arg,
    /// Voxel spacing x,y,z in mm (`--spacing 0.8,0.8,2.5` or `--spacing 0.8 0.8 2.5`),
    /// overriding the mode's default (2D images use x,y).
    #[arg(long, value_delimiter = ',', num_args = 1..=3, value_name = "X,Y,Z")]
    spacing: Option<Vec<f64>>,
    /// The foreground label values to score, e.g. --labels 1,2,3 (default: the `labels` of a
    /// dataset.json in the reference folder or its parent, else every value present in the
    /// references). Other values count as background, with a warning.
    #[arg(long, value_delimiter = ',', num_args = 1.., value_name = "L1,L2,...")]
    labels: Option<Vec<u8>>,
    /// Score a prediction whose voxel size, origin or orientation differs from its reference's
    /// (by default an error: the two are not on one grid).
    #[arg(long)]
    ignore_geometry: bool,
    /// Skip (with a warning) cases present on one side only, instead of failing.
    #[arg(long)]
    allow_missing: bool,
    /// Output JSON; the CSV is written beside it with the extension .csv.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    let opts = ScoreOptions {
        mode: match args.mode {
            ModeArg::Transunet => Mode::TransUnet,
            ModeArg::Strict => Mode::Strict,
        },
        hd95: match args.hd95 {
            Hd95Arg::Pooled => Hd95Mode::Pooled,
            Hd95Arg::Max => Hd95Mode::Max,
        },
        spacing: args.spacing,
        labels: args.labels,
        ignore_geometry: args.ignore_geometry,
        allow_missing: args.allow_missing,
    };
    check_spacing(opts.spacing.as_deref())?;
    let scores = score_folders(&args.pred, &args.truth, &opts)?;
    for w in &scores.warnings {
        eprintln!("warning: {w}");
    }
    for n in &scores.notes {
        eprintln!("note: {n}");
    }
    let csv_path = scores.write(&args.out)?;
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>8}",
        "class", "Dice", "Jaccard", "HD95", "ASD"
    );
    for (name, m) in scores.class_names.iter().zip(&scores.means) {
        println!(
            "{:<16} {:>8.4} {:>8.4} {:>9.3} {:>8.3}",
            name, m.dice, m.jaccard, m.hd95, m.asd
        );
    }
    let o = &scores.overall;
    println!(
        "{:<16} {:>8.4} {:>8.4} {:>9.3} {:>8.3}",
        "mean", o.dice, o.jaccard, o.hd95, o.asd
    );
    println!(
        "{} cases; written: {} and {}",
        scores.ids.len(),
        args.out.display(),
        csv_path.display()
    );
    Ok(())
}

//! The results tables against hand-worked numbers (scipy's t quantiles, numpy's std).

use super::super::cells;
use super::*;

/// A test metrics file of one class, with each student's mean (and class) Dice.
fn metrics_of(cnn: f64, transformer: f64) -> Value {
    let student = |dice: f64| {
        serde_json::json!({"transunet": {"mean": {"dice": dice, "jaccard": 0.5, "hd95": 1.0},
                                         "per_class": {"1": {"dice": dice}}}})
    };
    serde_json::json!({"classes": {"1": "a"}, "cnn": student(cnn), "transformer": student(transformer)})
}

/// Timing of a table whose runs' logs hold no times (the tests of the numbers).
const NO_TIMES: Timing = Timing {
    invocation_s: 1.0,
    runs_s: &[],
};

fn options() -> ExperimentOptions {
    ExperimentOptions {
        config: "t.toml".into(),
        out: None,
        results: None,
    }
}

/// A rewritten table keeps the people's `## Notes` (and only that section), before the runs.
#[test]
fn rewriting_a_results_file_keeps_its_notes() {
    let old = "# t\n\nold table\n\n## Notes\n\nCTRCL wins on liver.\n\n## Runs\n\n- `a`\n";
    let new = "# t\n\nnew table\n\n## Runs\n\n- `a`\n- `b`\n";
    let md = with_notes(new, old);
    assert_eq!(
        md,
        "# t\n\nnew table\n\n## Notes\n\nCTRCL wins on liver.\n\n## Runs\n\n- `a`\n- `b`\n"
    );
    assert_eq!(with_notes(new, &md), md, "rewriting again changes nothing");
    assert_eq!(with_notes(new, "# t\nno notes\n"), new);
}

/// With 3 of 4 runs finished the table says so, averages what exists, and marks the row
/// that holds one seed of two; the finished matrix carries no such marks.
#[test]
fn partial_tables_are_marked_and_average_the_finished_runs() {
    let exp: ExperimentFile = toml::from_str(
        "name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"independent\", \"ctrcl\"]\nseeds = [0, 1]\n",
    )
    .unwrap();
    let base = TrainConfig::default();
    let all = cells(&exp, &base, Path::new("out"));
    assert_eq!(all.len(), 4);
    let args = options();
    let run = |dice: f64| metrics_of(dice, dice);
    let metrics = [run(0.6), run(0.8), run(0.7)];
    let names = class_names_of(&metrics[0]);
    let md = results_markdown(
        &exp, &args, "b", &all, &metrics, &names, &base, "c", &NO_TIMES,
    );
    assert!(md.contains("**Partial: 3 of 4 runs finished**"), "{md}");
    let row = |variant: &str| {
        md.lines()
            .find(|l| l.starts_with(&format!("| unet+swin-unet | {variant} | cnn")))
            .unwrap_or_else(|| panic!("{md}"))
            .to_string()
    };
    // Seed-major order: independent 0.6 and 0.7 (seeds 0, 1), ctrcl 0.8 (seed 0).
    let order: Vec<(&str, u64)> = all.iter().map(|c| (c.variant.as_str(), c.seed)).collect();
    assert_eq!(
        order,
        [
            ("independent", 0),
            ("ctrcl", 0),
            ("independent", 1),
            ("ctrcl", 1)
        ]
    );
    assert!(row("independent").contains("**0.6500 ± 0.0707**"), "{md}");
    assert!(row("ctrcl (1 of 2 seeds)").contains("**0.8000**"), "{md}");
    let full = [run(0.6), run(0.8), run(0.7), run(0.9)];
    let md = results_markdown(&exp, &args, "b", &all, &full, &names, &base, "c", &NO_TIMES);
    assert!(!md.contains("Partial") && !md.contains("seeds)"), "{md}");
}

/// The paired interval against numbers worked out with scipy: diffs [0.01, 0.03, 0.02]
/// have mean 0.02, s = 0.01, half-width t_{0.975,2}·s/√3 = 4.303·0.01/1.7321 = 0.024843.
#[test]
fn paired_differences_and_their_interval() {
    let (m, h) = paired_ci(&[0.01, 0.03, 0.02]);
    assert!(
        (m - 0.02).abs() < 1e-12 && (h - 0.024843).abs() < 1e-6,
        "{m} {h}"
    );
    assert_eq!(verdict(m, h), "within noise");
    // Five seeds all ahead by ~0.01: t_{0.975,4} = 2.776, s = 0.001581 → 0.001963.
    let (m, h) = paired_ci(&[0.010, 0.012, 0.009, 0.011, 0.008]);
    assert!((h - 2.776 * 0.0015811 / 5f64.sqrt()).abs() < 1e-6, "{h}");
    assert_eq!(verdict(m, h), "**better, beyond noise**");
    assert_eq!(verdict(-m, h), "**worse, beyond noise**");
    assert!(paired_ci(&[0.1]).1.is_nan());
    assert_eq!(t_975(100), 2.042);

    // In the table: ctrcl paired with independent seed by seed.
    let exp: ExperimentFile = toml::from_str(
        "name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"independent\", \"ctrcl\"]\nseeds = [0, 1, 2]\n",
    )
    .unwrap();
    let base = TrainConfig::default();
    let all = cells(&exp, &base, Path::new("out"));
    let args = options();
    let run = |dice: f64| metrics_of(dice, dice + 0.1);
    let order: Vec<(&str, u64)> = all.iter().map(|c| (c.variant.as_str(), c.seed)).collect();
    let dice = |variant: &str, seed: u64| match (variant, seed) {
        ("independent", s) => 0.70 + 0.05 * s as f64,
        (_, s) => 0.72 + 0.05 * s as f64 + 0.01 * (s as f64 - 1.0),
    };
    let metrics: Vec<Value> = order.iter().map(|(v, s)| run(dice(v, *s))).collect();
    let names = class_names_of(&metrics[0]);
    // The table of these metrics, and its row of ctrcl's U-Net.
    let ctrcl_row = |metrics: &[Value]| {
        let md = results_markdown(
            &exp, &args, "b", &all, metrics, &names, &base, "c", &NO_TIMES,
        );
        let row = md
            .lines()
            .find(|l| l.starts_with("| unet+swin-unet | ctrcl | cnn (unet) | 3 |"))
            .unwrap_or_else(|| panic!("{md}"))
            .to_string();
        (md, row)
    };
    let (md, row) = ctrcl_row(&metrics);
    assert!(row.contains("+0.0100, +0.0200, +0.0300"), "{row}");
    assert!(row.contains("| +0.0200 ± 0.0248 | within noise |"), "{row}");
    // Bold marks an interval that excludes zero (as in the per-class table): +0.02 every seed.
    let steady: Vec<Value> = order
        .iter()
        .map(|(v, s)| run(0.70 + 0.05 * *s as f64 + if *v == "ctrcl" { 0.02 } else { 0.0 }))
        .collect();
    let (_, steady_row) = ctrcl_row(&steady);
    assert!(
        steady_row.contains("| **+0.0200 ± 0.0000** | **better, beyond noise** |"),
        "{steady_row}"
    );

    // The same comparison as a forest plot beside the Markdown, linked from it: one row per
    // student with the table's seeds, mean and interval.
    assert_eq!(
        plot_path(Path::new("docs/results/t.md")),
        Path::new("docs/results/t-paired.svg")
    );
    assert!(md.contains("](t-paired.svg)"), "{md}");
    let rows = paired_rows(&all, &metrics);
    assert_eq!(rows.len(), 2);
    for (r, role) in rows.iter().zip(Role::BOTH) {
        assert_eq!((r.variant, r.role), ("ctrcl", role));
        assert_eq!(r.diffs.len(), 3);
        assert!((r.mean - 0.02).abs() < 1e-12 && (r.half - 0.024843).abs() < 1e-6);
    }
    let svg = paired_plot("t", &all, &metrics).unwrap();
    assert!(svg.contains("ctrcl · cnn (unet)") && svg.contains("ctrcl · transformer (swin-unet)"));
    assert_eq!(svg.matches(r#"class="seed""#).count(), 6);
    assert_eq!(svg.matches("+0.020 ± 0.025").count(), 2, "{svg}");
    // Without independent there is nothing to pair: no plot and no link.
    let lone: ExperimentFile =
        toml::from_str("name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"ctrcl\"]\nseeds = [0]\n")
            .unwrap();
    let one = cells(&lone, &base, Path::new("out"));
    let m = [run(0.7)];
    assert!(paired_plot("t", &one, &m).is_none());
    let md = results_markdown(&lone, &args, "b", &one, &m, &names, &base, "c", &NO_TIMES);
    assert!(!md.contains("-paired.svg"), "{md}");
}

/// A `variants` arm (any method, its own overrides) is a row of the methods table and is
/// paired against `independent`, per class too: class `b` gains 0.1/0.2/0.3 over three
/// seeds (mean 0.2, s 0.1, half-width 4.303·0.1/√3 = 0.248: within noise), class `a`
/// exactly 0.05 each time (half-width 0: beyond noise, bold).
#[test]
fn variants_are_compared_class_by_class() {
    let exp: ExperimentFile = toml::from_str(
        "name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"independent\"]\nseeds = [0, 1, 2]\n\
         [variants]\nfg = [\"method=independent\", \"data.foreground_oversample=0.5\"]\n",
    )
    .unwrap();
    assert_eq!(super::super::repeated_arm(&exp), None);
    let base = TrainConfig::default();
    let all = cells(&exp, &base, Path::new("out"));
    assert_eq!(all.len(), 6);
    let fg = all.iter().find(|c| c.variant == "fg").unwrap();
    assert!(!fg.is_ablation);
    assert!(fg
        .overrides
        .contains(&"data.foreground_oversample=0.5".to_string()));
    let run = |a: f64, b: f64| {
        let student = serde_json::json!({"transunet": {
            "mean": {"dice": (a + b) / 2.0, "jaccard": 0.5, "hd95": 1.0},
            "per_class": {"1": {"dice": a}, "2": {"dice": b}}}});
        serde_json::json!({"classes": {"1": "a", "2": "b"}, "cnn": student, "transformer": student})
    };
    let metrics: Vec<Value> = all
        .iter()
        .map(|c| {
            let s = c.seed as f64;
            match c.variant.as_str() {
                "independent" => run(0.5, 0.1),
                _ => run(0.55, 0.2 + 0.1 * s),
            }
        })
        .collect();
    let names = class_names_of(&metrics[0]);
    let md = results_markdown(
        &exp,
        &options(),
        "b",
        &all,
        &metrics,
        &names,
        &base,
        "c",
        &NO_TIMES,
    );
    assert!(
        md.contains("- `fg`: `method=independent`, `data.foreground_oversample=0.5`"),
        "{md}"
    );
    let per_class = &md[md.find("### Per class").unwrap_or_else(|| panic!("{md}"))..];
    assert!(per_class.contains("| seeds | a | b |"), "{md}");
    let row = per_class
        .lines()
        .find(|l| l.starts_with("| unet+swin-unet | fg | cnn (unet) | 3 |"))
        .unwrap_or_else(|| panic!("{md}"));
    assert!(
        row.contains("| **+0.050 ± 0.000** | +0.200 ± 0.248 |"),
        "{row}"
    );

    let twice: ExperimentFile = toml::from_str(
        "name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"dml\"]\n[variants]\ndml = []\n",
    )
    .unwrap();
    assert_eq!(super::super::repeated_arm(&twice), Some("dml"));
}

#[test]
fn the_commits_and_machines_runs_were_trained_on_are_counted() {
    let at = |c: &str, m: &str| serde_json::json!({ "trained_at": c, "trained_on": m });
    let metrics = [
        at("abc1234", "flex CPU on 2 logical CPUs, AMD EPYC"),
        at("abc1234", "cuda on 16 logical CPUs, Intel Xeon"),
        serde_json::json!({}),
        at("def5678", "flex CPU on 2 logical CPUs, AMD EPYC"),
        at("def5678", ""),
    ];
    assert_eq!(
        tally(&metrics, "trained_at", "a commit not recorded"),
        "abc1234 (2 runs), a commit not recorded (1 run), def5678 (2 runs)"
    );
    assert_eq!(
        tally(&metrics, "trained_on", "a machine not recorded"),
        "flex CPU on 2 logical CPUs, AMD EPYC (2 runs), cuda on 16 logical CPUs, Intel Xeon (1 run), \
         a machine not recorded (2 runs)"
    );
}

#[test]
fn mean_and_sample_std() {
    // numpy: np.mean([0.70, 0.74, 0.72]) = 0.72, np.std(..., ddof=1) = 0.02
    let (m, s) = mean_std(&[0.70, 0.74, 0.72]);
    assert!(
        (m - 0.72).abs() < 1e-12 && (s - 0.02).abs() < 1e-12,
        "{m} {s}"
    );
    assert!(mean_std(&[0.5]).1.is_nan());
    assert_eq!(cell_text(&[0.70, 0.74, 0.72], 3), "0.720 ± 0.020");
    assert_eq!(cell_text(&[0.5], 2), "0.50");
}

/// The header's cost is the sum of the runs' own training times (a re-invocation that only
/// reuses finished runs takes minutes, the matrix took hours): 2400 + 3000 s = 90 min = 1.5 h,
/// 45 min a run; a run whose log has no end event is counted apart.
#[test]
fn the_header_sums_the_runs_training_times() {
    assert_eq!(
        training_time(&[Some(2400.0), None, Some(3000.0)]),
        "the 2 finished runs trained for 1.5 h in all by their logs (45 min a run; 1 more without a time in their log)"
    );
    assert_eq!(
        training_time(&[Some(61.0)]),
        "the 1 finished run trained for 2 min in all by their logs (2 min a run)"
    );
    assert_eq!(
        training_time(&[None]),
        "no finished run's log holds its training time"
    );
    let exp: ExperimentFile =
        toml::from_str("name = \"t\"\nconfig = \"c.toml\"\nmethods = [\"dml\"]\nseeds = [0, 1]\n")
            .unwrap();
    let base = TrainConfig::default();
    let all = cells(&exp, &base, Path::new("out"));
    let metrics = [metrics_of(0.5, 0.5), metrics_of(0.6, 0.6)];
    let timing = Timing {
        invocation_s: 30.0,
        runs_s: &[Some(1800.0), Some(3600.0)],
    };
    let md = results_markdown(
        &exp,
        &options(),
        "b",
        &all,
        &metrics,
        &class_names_of(&metrics[0]),
        &base,
        "c",
        &timing,
    );
    assert!(
        md.contains(", backend b, 1 min. 2 runs: the 2 finished runs trained for 1.5 h in all by their logs (45 min a run)"),
        "{md}"
    );
}

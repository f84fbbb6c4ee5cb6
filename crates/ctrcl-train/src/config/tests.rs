//! The configuration's tests: shipped configs, unknown and ill-typed keys named, blame on
//! `--set` items, range checks.

use super::*;
use std::path::Path;

#[test]
fn shipped_configs_parse_and_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 2, "expected the shipped configs in {}", dir.display());
}

#[test]
fn foreground_oversample_is_a_share_of_the_batch() {
    let cfg = TrainConfig::from_toml("", &["data.foreground_oversample=0.33".into()]).unwrap();
    assert_eq!(cfg.data.foreground_oversample, 0.33);
    assert_eq!(TrainConfig::default().data.foreground_oversample, 0.0);
    for bad in ["1.5", "-0.1", "nan"] {
        let err =
            TrainConfig::from_toml("", &[format!("data.foreground_oversample={bad}")]).unwrap_err();
        assert!(
            format!("{err:#}").contains("data.foreground_oversample"),
            "{bad}: {err:#}"
        );
    }
}

#[test]
fn semi_supervised_keys_are_typed_and_checked() {
    let cfg = TrainConfig::from_toml("", &["data.labelled=0.1".into()]).unwrap();
    assert!(cfg.is_semi());
    assert_eq!(
        cfg.data.labelled,
        Some(ctrcl_data::labelled::Labelled::Fraction(0.1))
    );
    assert_eq!(cfg.semi.labelled_batch(8), 4);
    assert_eq!(cfg.semi.labelled_batch(5), 3);
    let cfg = TrainConfig::from_toml("[data]\nlabelled = [\"a\", \"b\"]\n", &[]).unwrap();
    assert_eq!(
        cfg.data.labelled,
        Some(ctrcl_data::labelled::Labelled::Cases(vec![
            "a".into(),
            "b".into()
        ]))
    );
    // Written into the run directory and read back the same.
    assert_eq!(TrainConfig::from_toml(&cfg.to_toml(), &[]).unwrap(), cfg);
    assert!(!TrainConfig::default().is_semi());
    assert!(!TrainConfig::default().to_toml().contains("labelled ="));
    let refused = |sets: &[&str], key: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = TrainConfig::from_toml("", &sets).unwrap_err();
        assert!(format!("{err:#}").contains(key), "{sets:?}: {err:#}");
    };
    refused(&["data.labelled=0.0"], "data.labelled");
    refused(&["data.labelled=1.5"], "data.labelled");
    refused(&["data.labelled=[]"], "data.labelled");
    refused(&["data.labelled=0.1", "method=dml"], "data.labelled");
    refused(
        &["data.labelled=0.1", "semi.labelled_batch=8"],
        "semi.labelled_batch",
    );
    refused(
        &["data.labelled=0.1", "semi.threshold=1.5"],
        "semi.threshold",
    );
    refused(&["data.labelled=0.1", "semi.weight=-1"], "semi.weight");
    refused(
        &["data.labelled=0.1", "parallel.devices=2"],
        "data.labelled",
    );
    // independent may train on a whole batch of labelled samples.
    TrainConfig::from_toml(
        "",
        &[
            "data.labelled=0.1".into(),
            "method=independent".into(),
            "semi.labelled_batch=8".into(),
        ],
    )
    .unwrap();
}

#[test]
fn baselines_have_their_own_transfer_keys() {
    let dml = |sets: &[&str]| {
        let mut all = vec!["method=dml".to_string()];
        all.extend(sets.iter().map(|s| s.to_string()));
        TrainConfig::from_toml("", &all)
    };
    let cfg = dml(&["baseline.weight=0.3", "baseline.temperature=2.0"]).unwrap();
    assert_eq!(cfg.transfer_weight(), 0.3);
    assert_eq!(cfg.baseline.temperature, 2.0);
    // Where the baselines read them before: refused, naming the new key.
    for (old, new) in [
        ("rlcl.weight=0.5", "baseline.weight"),
        ("rlcl.temperature=2.0", "baseline.temperature"),
    ] {
        let err = dml(&[old]).unwrap_err();
        assert!(format!("{err:#}").contains(new), "{old}: {err:#}");
    }
    // CTRCL keeps β_r in [rlcl].
    let cfg = TrainConfig::from_toml("", &["rlcl.weight=0.5".into()]).unwrap();
    assert_eq!(cfg.transfer_weight(), 0.5);
    assert!(dml(&["baseline.temperature=0.0"]).is_err());
}

#[test]
fn unknown_keys_are_named() {
    let err = TrainConfig::from_toml("[rlcl]\ntemprature = 2.0\n", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("temprature"), "{err:#}");
    let err = TrainConfig::from_toml("", &["optim.cnn.lrr=0.1".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("lrr"), "{err:#}");
    // A bad value of an enumerated key names the key too.
    let err = TrainConfig::from_toml("", &["precision=f8".into()]).unwrap_err();
    assert!(
        format!("{err:#}").starts_with("precision: unknown variant `f8`"),
        "{err:#}"
    );
    let err = TrainConfig::from_toml("precision = \"f16\"", &[]).unwrap_err();
    assert!(format!("{err:#}").contains("bf16"), "{err:#}");
    let err =
        TrainConfig::from_toml("[optim.transformer]\noptimizer = \"adam\"\n", &[]).unwrap_err();
    assert!(
        format!("{err:#}").starts_with("optim.transformer.optimizer: "),
        "{err:#}"
    );
}

/// Found by the hostile-input probe (issue #21): a type error named neither its key nor its
/// source, and blamed the config file for a `--set` value.
#[test]
fn type_errors_name_the_key_and_blame_the_override_that_set_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[schedule]\niterations = 10\n").unwrap();
    let err = TrainConfig::load(&file, &["schedule.iterations=abc".into()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.starts_with("--set schedule.iterations=abc: schedule.iterations: invalid type"),
        "{msg}"
    );
    assert!(!msg.contains("c.toml"), "the file is not to blame: {msg}");
    // The same mistake in the file names the file and the key.
    std::fs::write(&file, "[schedule]\niterations = \"abc\"\n").unwrap();
    let msg = format!("{:#}", TrainConfig::load(&file, &[]).unwrap_err());
    assert!(
        msg.contains("c.toml") && msg.contains("schedule.iterations: invalid type"),
        "{msg}"
    );
    // A nested key inside an array-of-numbers key.
    let msg = format!(
        "{:#}",
        TrainConfig::from_toml("", &["models.unet.channels=[4,\"x\"]".into()]).unwrap_err()
    );
    assert!(msg.starts_with("models.unet.channels"), "{msg}");
    // A range error from a --set value blames the --set too (it replaced the file's value).
    let msg = format!(
        "{:#}",
        TrainConfig::load(&file, &["schedule.iterations=0".into()]).unwrap_err()
    );
    assert!(
        msg.starts_with("--set schedule.iterations=0: schedule.iterations must be at least 1"),
        "{msg}"
    );
}

/// Found by the probe: a negative learning rate trained (gradient ascent) without a word.
#[test]
fn learning_rates_and_loss_weights_must_be_sensible_numbers() {
    for (set, key) in [
        ("optim.cnn.lr=-0.01", "optim.cnn.lr = -0.01"),
        ("optim.transformer.lr=0.0", "optim.transformer.lr = 0"),
        ("optim.cnn.lr=nan", "optim.cnn.lr = NaN"),
        ("optim.cnn.weight_decay=-1e-4", "optim.cnn.weight_decay"),
        ("optim.cnn.momentum=1.5", "optim.cnn.momentum = 1.5"),
        ("rlcl.weight=-1.0", "rlcl.weight = -1"),
        ("cfcl.weight=inf", "cfcl.weight = inf"),
        (
            "optim.transformer.adam_epsilon=0.0",
            "optim.transformer.adam_epsilon",
        ),
    ] {
        let msg = format!(
            "{:#}",
            TrainConfig::from_toml("", &[set.into()]).unwrap_err()
        );
        assert!(msg.starts_with(key), "{set}: {msg}");
    }
    let msg = format!(
        "{:#}",
        TrainConfig::from_toml(
            "",
            &["seg.ce_weight=0.0".into(), "seg.dice_weight=0.0".into()]
        )
        .unwrap_err()
    );
    assert!(msg.contains("learn nothing"), "{msg}");
    // Zero weights of the transfer terms stay allowed (ablations).
    TrainConfig::from_toml("", &["rlcl.weight=0.0".into(), "cfcl.weight=0.0".into()]).unwrap();
}

#[test]
fn overrides_set_typed_values() {
    let c = TrainConfig::from_toml(
        "",
        &[
            "method=dml".into(),
            "schedule.iterations=7".into(),
            "rlcl.rectify=hard".into(),
            "cfcl.taps=[8]".into(),
        ],
    )
    .unwrap();
    assert_eq!(c.method, Method::Dml);
    assert_eq!(c.schedule.iterations, 7);
    assert_eq!(c.rlcl.rectify, Rectify::Hard);
    assert_eq!(c.cfcl.taps, vec![8]);
}

#[test]
fn host_port_accepts_names_and_addresses_and_names_the_problem() {
    assert_eq!(host_port("node-a:29500").unwrap(), ("node-a".into(), 29500));
    assert_eq!(host_port("10.0.0.2:1").unwrap(), ("10.0.0.2".into(), 1));
    assert_eq!(host_port("[::1]:29500").unwrap(), ("[::1]".into(), 29500));
    for bad in [
        "node-a",
        ":29500",
        "node-a:",
        "node-a:0",
        "node-a:70000",
        "node-a:x",
    ] {
        assert!(host_port(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_multi_node_topology_is_checked_against_the_batch() {
    let with = |sets: &[&str]| {
        let mut all = vec!["data.batch_size=8".to_string()];
        all.extend(sets.iter().map(|s| s.to_string()));
        TrainConfig::from_toml("", &all)
    };
    let ok = with(&[
        "parallel.nodes=2",
        "parallel.devices=2",
        "parallel.node_rank=1",
        "parallel.coordinator=\"10.0.0.1:29500\"",
    ])
    .unwrap();
    assert_eq!(ok.parallel.peers(), 4);
    let err = |sets: &[&str]| format!("{:#}", with(sets).unwrap_err());
    let e = err(&["parallel.nodes=3", "parallel.coordinator=\"h:1\""]);
    assert!(
        e.contains("parallel.nodes = 3") && e.contains("data.batch_size (8)"),
        "{e}"
    );
    let e = err(&["parallel.nodes=2"]);
    assert!(e.contains("parallel.coordinator"), "{e}");
    let e = err(&[
        "parallel.nodes=2",
        "parallel.node_rank=2",
        "parallel.coordinator=\"h:1\"",
    ]);
    assert!(e.contains("parallel.node_rank = 2"), "{e}");
    let e = err(&["parallel.nodes=2", "parallel.coordinator=\"h\""]);
    assert!(
        e.contains("parallel.coordinator") && e.contains("HOST:PORT"),
        "{e}"
    );
}

/// configs/icbm152_ctrcl.toml documents every key: each key of the default configuration
/// (tables walked recursively) is present in it, and it parses.
#[test]
fn the_documented_config_lists_every_key() {
    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, child) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                keys(child, &path, out);
            }
        }
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/icbm152_ctrcl.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    TrainConfig::from_toml(&text, &[]).unwrap();
    let documented: toml::Value = toml::from_str(&text).unwrap();
    let mut documented_keys = Vec::new();
    keys(&documented, "", &mut documented_keys);
    let mut default_keys = Vec::new();
    keys(
        &toml::Value::try_from(TrainConfig::default()).unwrap(),
        "",
        &mut default_keys,
    );
    let missing: Vec<&String> = default_keys
        .iter()
        .filter(|k| !documented_keys.contains(k))
        .collect();
    assert!(missing.is_empty(), "undocumented keys: {missing:?}");
}

#[test]
fn ct_windows_and_augmentation_ranges_are_checked() {
    let cfg = TrainConfig::from_toml("[data]\nwindow = \"liver\"", &[]).unwrap();
    assert_eq!(cfg.data.intensity().clip, Some([-45.0, 105.0]));
    // An explicit clip wins over the window.
    let cfg = TrainConfig::from_toml("[data]\nwindow = \"liver\"\nclip = [0.0, 1.0]", &[]).unwrap();
    assert_eq!(cfg.data.intensity().clip, Some([0.0, 1.0]));
    let err = TrainConfig::from_toml("[data]\nwindow = \"kidney\"", &[]).unwrap_err();
    assert!(err.to_string().contains("kidney"), "{err}");
    let err = TrainConfig::from_toml("", &["augmentation.gamma.p=1.5".into()]).unwrap_err();
    assert!(err.to_string().contains("augmentation.gamma.p"), "{err}");
    let err = TrainConfig::from_toml("", &["augmentation.blurr.p=0.5".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("blurr"), "{err:#}");
}

#[test]
fn untileable_swin_size_is_a_config_error() {
    let err = TrainConfig::from_toml("[data]\nimage_size = 112\n", &[]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("students.transformer") && msg.contains("112"),
        "{msg}"
    );
}

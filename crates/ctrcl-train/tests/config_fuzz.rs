//! A bounded, seeded mutation fuzzer over the configuration's TOML + `--set` merge (issue #21),
//! seeded with every shipped config and a few overrides; run by `cargo test` and so by CI. A
//! panic fails the test and its input is written to `target/fuzz-failures/`. The mutator and
//! the time budget (`CTRCL_FUZZ_SECONDS`, default 2; `CTRCL_FUZZ_SEED`, default 0) are those of
//! ctrcl-data's parser fuzzer.

use ctrcl_data::fuzzing::{mutate, Rng};
use ctrcl_train::config::fuzz_config;
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn the_config_merge_survives_mutated_configs() {
    let env = |k: &str, d: f64| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let (seconds, seed) = (
        env("CTRCL_FUZZ_SECONDS", 2.0),
        env("CTRCL_FUZZ_SEED", 0.0) as u64,
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let mut bytes = std::fs::read(p).unwrap();
            bytes.extend_from_slice(
                b"\0schedule.iterations=7\nmodels.unet.channels=[4,8,8,16,16]\nrlcl.rectify=hard\n",
            );
            bytes
        })
        .collect();
    corpus.sort();
    assert!(corpus.len() >= 2, "the shipped configs are the seeds");
    let failures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut rng = Rng(seed ^ 0xC0FF_EE00_1234_5678);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let (mut rounds, mut failed) = (0usize, Vec::new());
    while rounds < corpus.len() || Instant::now() < deadline {
        let mut input = corpus[rounds % corpus.len()].clone();
        if rounds >= corpus.len() {
            mutate(&mut rng, &mut input);
        }
        if std::panic::catch_unwind(|| fuzz_config(&input)).is_err() {
            std::fs::create_dir_all(&failures).unwrap();
            let file = failures.join(format!("config-seed{seed}-round{rounds}"));
            std::fs::write(&file, &input).unwrap();
            failed.push(file.display().to_string());
        }
        rounds += 1;
    }
    std::panic::set_hook(quiet);
    eprintln!("fuzzed the config merge with {rounds} inputs");
    assert!(failed.is_empty(), "panics, inputs saved as: {failed:?}");
}

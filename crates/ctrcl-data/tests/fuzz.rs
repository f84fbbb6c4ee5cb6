//! A bounded, seeded mutation fuzzer over every parser ctrcl wrote (`ctrcl_data::fuzzing`), run
//! by `cargo test` and so by CI on every change (issue #21). Seeds are the real and malformed
//! files under `tests/data/` (the corpus kept in the repository); each round applies a few
//! random mutations (bit flips, interesting integers at random offsets, truncation, duplicated
//! and inserted runs) and feeds the result to the parser, which must return — a panic is a
//! failure, and the input that caused it is written to `target/fuzz-failures/` with its seed and
//! round so it can be replayed. `CTRCL_FUZZ_SECONDS` sets the time per parser (default 2);
//! `CTRCL_FUZZ_SEED` the generator's seed (default 0: the same inputs every run, so a failure
//! reproduces). The coverage-guided counterpart for long runs is `fuzz/` (cargo-fuzz).

use ctrcl_data::fuzzing::{mutate, Rng, TARGETS};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The seed files of a parser: files under `tests/data/` whose name ends in one of `exts`.
fn seeds(exts: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data"),
        &mut files,
    );
    files.sort();
    files
        .into_iter()
        .filter(|p| {
            let name = p.to_string_lossy().to_ascii_lowercase();
            exts.iter().any(|e| name.ends_with(&format!(".{e}")))
        })
        .filter_map(|p| {
            let bytes = std::fs::read(&p).ok()?;
            (bytes.len() <= 512 * 1024).then_some((p, bytes))
        })
        .collect()
}

#[test]
fn every_parser_survives_mutated_real_files() {
    let seconds: f64 = std::env::var("CTRCL_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let seed: u64 = std::env::var("CTRCL_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let failures_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures");
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for &(name, exts, parse) in TARGETS {
        let corpus = seeds(exts);
        // Every parser has real seeds (else it would be fuzzed on noise only).
        if corpus.is_empty() {
            failures.push(format!("{name}: no seed files under tests/data"));
            continue;
        }
        let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15 ^ (name.len() as u64 * 0x1000_0001));
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut rounds = 0u64;
        // The unmutated seeds first (they must parse or fail cleanly too), then mutations.
        while rounds < corpus.len() as u64 || Instant::now() < deadline {
            let (origin, seed_bytes) = &corpus[rounds as usize % corpus.len()];
            let mut input = seed_bytes.clone();
            if rounds >= corpus.len() as u64 {
                mutate(&mut rng, &mut input);
            }
            if std::panic::catch_unwind(|| parse(&input)).is_err() {
                std::fs::create_dir_all(&failures_dir).unwrap();
                let file = failures_dir.join(format!("{name}-seed{seed}-round{rounds}"));
                std::fs::write(&file, &input).unwrap();
                failures.push(format!(
                    "{name}: panicked on a mutation of {} (saved as {})",
                    origin.display(),
                    file.display()
                ));
                if failures.len() > 20 {
                    break;
                }
            }
            rounds += 1;
        }
        summary.push(format!(
            "{name}: {rounds} inputs from {} seeds",
            corpus.len()
        ));
    }
    std::panic::set_hook(quiet);
    eprintln!("fuzzed {}", summary.join("; "));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

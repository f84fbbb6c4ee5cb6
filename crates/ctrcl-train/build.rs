//! Records the git commit the crate is built from (`CTRCL_GIT_COMMIT`, "unknown" outside a git
//! checkout), so every run's `run.json` says which code trained it — tables filled over several
//! sittings (`ctrcl experiment`) can then name the commit of each run, not just of the last
//! invocation. A build from a tree whose sources differ from that commit (uncommitted changes
//! to tracked files under crates/, third_party/ or the workspace's Cargo files) says so:
//! "abc1234-dirty". Rerun when HEAD or the branch it points at moves, or a source changes.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let mut commit = git(&["rev-parse", "--short=7", "HEAD"]).unwrap_or_else(|| "unknown".into());
    // The workspace root, two levels above this crate; the paths whose changes alter the binary.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sources = ["crates", "third_party", "Cargo.toml", "Cargo.lock"].map(|p| root.join(p));
    let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
    let paths: Vec<String> = sources
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    status.extend(paths.iter().map(String::as_str));
    if commit != "unknown" && git(&status).is_some() {
        commit.push_str("-dirty");
    }
    println!("cargo:rustc-env=CTRCL_GIT_COMMIT={commit}");
    for p in &sources {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/packed-refs");
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={dir}/{branch}");
        }
    }
}

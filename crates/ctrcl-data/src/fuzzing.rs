//! One entry point per parser ctrcl wrote, for fuzzing: whatever the bytes, each returns a value
//! or an error — never a panic, an abort or an allocation the input merely claims. Two drivers
//! use these: `fuzz/` (cargo-fuzz with libFuzzer, coverage-guided, nightly) and
//! `tests/fuzz.rs` (a bounded, seeded mutation fuzzer on stable that CI runs on every change,
//! seeded with the real and malformed files under `tests/data/`).
//!
//! Parsers that read from a path (DICOM through dicom-rs, images, `.npz` archives) get the bytes
//! as a file of their own in the temporary folder, one per thread.

use std::path::{Path, PathBuf};

/// A parser's name, the file extensions its seeds carry, and its entry point.
pub type Target = (&'static str, &'static [&'static str], fn(&[u8]));

/// Every fuzzed parser.
pub const TARGETS: &[Target] = &[
    ("nifti", &["nii", "gz"], nifti),
    ("nrrd", &["nrrd", "nhdr"], nrrd),
    ("mrc", &["mrc"], mrc),
    ("npy", &["npy"], npy),
    ("npz", &["npz"], npz),
    ("hdf5", &["h5"], hdf5),
    ("dicom", &["dcm"], dicom),
    ("png", &["png"], png),
    ("tiff", &["tif", "tiff"], tiff),
    ("jpeg", &["jpg", "jpeg"], jpeg),
];

/// A `.nii` or `.nii.gz` file's bytes (gzip detected from the content, as `read_nifti` does).
pub fn nifti(bytes: &[u8]) {
    let path = Path::new("fuzz.nii.gz");
    if bytes.starts_with(&[0x1f, 0x8b]) {
        if let Ok(inflated) = crate::nifti_gz::gunzip_for_fuzzing(path, bytes) {
            let _ = crate::nifti::parse_nifti_bytes(path, &inflated);
        }
    } else {
        let _ = crate::nifti::parse_nifti_bytes(path, bytes);
    }
}

/// An NRRD file (header and attached data; detached data resolve inside a missing folder).
pub fn nrrd(bytes: &[u8]) {
    let _ = crate::nrrd::parse_nrrd(Path::new("/nonexistent/fuzz.nrrd"), bytes);
}

/// An MRC/CCP4 map.
pub fn mrc(bytes: &[u8]) {
    let _ = crate::mrc::parse_mrc(Path::new("fuzz.mrc"), bytes);
}

/// A NumPy `.npy` array.
pub fn npy(bytes: &[u8]) {
    let _ = crate::npy::parse_npy(Path::new("fuzz.npy"), bytes);
}

/// A NumPy `.npz` archive, described as `data inspect` does (every member parsed).
pub fn npz(bytes: &[u8]) {
    let _ = crate::inspect::inspect_file(&scratch_file("npz", bytes));
}

/// An HDF5 file: its dataset names, then every dataset read.
pub fn hdf5(bytes: &[u8]) {
    let Ok(file) = crate::hdf5::H5File::from_bytes(Path::new("fuzz.h5"), bytes.to_vec()) else {
        return;
    };
    if let Ok(names) = file.datasets() {
        for name in names {
            let _ = file.read(&name);
        }
    }
}

/// A DICOM file, read as a training image (pixel data decoded, geometry checked).
pub fn dicom(bytes: &[u8]) {
    let _ = crate::dicom::read_dicom(&scratch_file("dcm", bytes));
}

/// A PNG, read as a label map and as an image.
pub fn png(bytes: &[u8]) {
    let path = scratch_file("png", bytes);
    let _ = crate::labels::read_label_file(&path);
    let _ = crate::image2d::read_image_2d(&path);
}

/// A TIFF, read as a label map and described.
pub fn tiff(bytes: &[u8]) {
    let path = scratch_file("tif", bytes);
    let _ = crate::labels::read_label_file(&path);
    let _ = crate::inspect::inspect_file(&path);
}

/// A JPEG, read as an image (`predict`'s input) and as three colour planes.
pub fn jpeg(bytes: &[u8]) {
    let path = scratch_file("jpg", bytes);
    let _ = crate::image2d::read_image_2d(&path);
    let _ = crate::image2d::read_rgb_planes(&path);
}

/// xorshift64*: a small deterministic generator (the inputs depend on the seed only).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

/// Values that break size and offset arithmetic, as little-endian bytes.
const INTERESTING: &[u64] = &[
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0x8000,
    0xFFFF,
    0x7FFF_FFFF,
    0x8000_0000,
    0xFFFF_FFFF,
    u64::MAX,
    0x4000_0000_0000_0000,
];

/// A few random mutations of `input`: bit flips, interesting integers at random offsets,
/// truncation, duplicated and inserted runs.
pub fn mutate(rng: &mut Rng, input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let value = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                let width = [1, 2, 4, 8][rng.below(4)];
                let at = rng.below(len);
                for (k, b) in value[..width].iter().enumerate() {
                    if let Some(slot) = input.get_mut(at + k) {
                        *slot = *b;
                    }
                }
            }
            2 if len > 0 => input.truncate(rng.below(len)),
            3 if len > 0 => {
                let (a, n) = (rng.below(len), 1 + rng.below(64));
                let run: Vec<u8> = input[a..(a + n).min(len)].to_vec();
                let at = rng.below(len);
                input.splice(at..at, run);
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let run: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                input.splice(at..at, run);
            }
            _ if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next_u64() as u8;
            }
            _ => input.push(rng.next_u64() as u8),
        }
    }
}

/// `bytes` written to this thread's scratch file with extension `ext`.
fn scratch_file(ext: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "ctrcl-fuzz-{}-{:?}.{ext}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, bytes).expect("the temporary folder is writable");
    path
}

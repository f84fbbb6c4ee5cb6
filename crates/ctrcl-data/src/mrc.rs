//! MRC / CCP4 map reader (MRC2014, as written by `mrcfile`): a 1024-byte header of 4-byte words,
//! an optional extended header, then the voxels with columns fastest. Volumes come back as
//! [`NiftiVolume`]s with axes permuted to X, Y, Z (`mapc`, `mapr`, `maps`), voxel size from
//! `cella / m` and the origin as translation; files that leave the cell size at 0 get 1 mm and
//! [`MrcVolume::spacing_known`] = false.

use crate::error::{DataError, Result};
use crate::nifti::{decode_voxels, NiftiType, NiftiVolume};
use std::path::Path;

const HEADER: usize = 1024;

/// A volume read from an MRC file.
#[derive(Debug, Clone)]
pub struct MrcVolume {
    pub volume: NiftiVolume,
    /// NumPy name of the stored element type (`float16` is decoded but has no NIfTI type).
    pub dtype: &'static str,
    /// Whether the header gave a voxel size (`cella` and `mx/my/mz` positive).
    pub spacing_known: bool,
}

/// MRC `mode` → (element type, NumPy name).
fn element_type(mode: i32) -> Option<(Option<NiftiType>, &'static str)> {
    Some(match mode {
        0 => (Some(NiftiType::I8), "int8"),
        1 => (Some(NiftiType::I16), "int16"),
        2 => (Some(NiftiType::F32), "float32"),
        6 => (Some(NiftiType::U16), "uint16"),
        12 => (None, "float16"),
        _ => return None,
    })
}

/// Reads an `.mrc` / `.map` / `.ccp4` file.
pub fn read_mrc(path: &Path) -> Result<MrcVolume> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_mrc(path, &bytes)
}

/// [`read_mrc`] keeping NaN and infinite values (for `data inspect`, which counts them).
pub fn read_mrc_any(path: &Path) -> Result<MrcVolume> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_mrc_any(path, &bytes)
}

/// Parses an MRC map; a NaN or infinite value is an error naming it.
pub fn parse_mrc(path: &Path, bytes: &[u8]) -> Result<MrcVolume> {
    let m = parse_mrc_any(path, bytes)?;
    crate::error::check_finite(path, &m.volume.data)?;
    Ok(m)
}

fn parse_mrc_any(path: &Path, bytes: &[u8]) -> Result<MrcVolume> {
    let bad = |m: String| DataError::invalid(path, m);
    if bytes.len() < HEADER {
        return Err(bad(format!(
            "file is {} bytes, shorter than an MRC header (1024)",
            bytes.len()
        )));
    }
    // Byte order: the machine stamp (word 53) says 0x44 0x44 (little) or 0x11 0x11 (big); files
    // without a stamp are judged by which order gives a known mode.
    let stamp = &bytes[212..214];
    let word = |i: usize| -> [u8; 4] { bytes[4 * i..4 * i + 4].try_into().expect("4 bytes") };
    let big = match stamp {
        [0x44, 0x44] | [0x44, 0x41] => false,
        [0x11, 0x11] => true,
        _ => element_type(i32::from_le_bytes(word(3))).is_none(),
    };
    let int = |i: usize| {
        if big {
            i32::from_be_bytes(word(i))
        } else {
            i32::from_le_bytes(word(i))
        }
    };
    let float = |i: usize| {
        if big {
            f32::from_be_bytes(word(i))
        } else {
            f32::from_le_bytes(word(i))
        }
    };
    let mode = int(3);
    let (ntype, dtype) = element_type(mode).ok_or_else(|| {
        bad(format!(
            "MRC mode {mode} is not supported (0 int8, 1 int16, 2 float32, 6 uint16, 12 float16 are)"
        ))
    })?;
    let n = [int(0), int(1), int(2)];
    if n.iter().any(|&v| v < 1) {
        return Err(bad(format!("MRC grid {n:?} has a non-positive size")));
    }
    let n = n.map(|v| v as usize);
    let elem = if mode == 12 {
        2
    } else {
        ntype.expect("typed").size()
    };
    let count = n
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("MRC grid {n:?} overflows")))?;
    let nbytes = count
        .checked_mul(elem)
        .ok_or_else(|| bad(format!("MRC grid {n:?} overflows")))?;
    let extended = int(23);
    if extended < 0 {
        return Err(bad(format!(
            "MRC extended header size {extended} is negative"
        )));
    }
    let offset = HEADER + extended as usize;
    if offset
        .checked_add(nbytes)
        .is_none_or(|end| end > bytes.len())
    {
        return Err(bad(format!(
            "truncated: header says {nbytes} bytes of voxel data at offset {offset}, but the \
             file has {}",
            bytes.len()
        )));
    }
    let raw = &bytes[offset..offset + nbytes];
    let stored: Vec<f32> = match ntype {
        Some(t) => decode_voxels(raw, t, big, 1.0, 0.0),
        None => raw
            .chunks_exact(2)
            .map(|c| {
                let bits = if big {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from_le_bytes([c[0], c[1]])
                };
                crate::npy::half_to_f64(bits) as f32
            })
            .collect(),
    };
    // mapc/mapr/maps: which world axis (1 = X, 2 = Y, 3 = Z) columns, rows and sections run along.
    let map = [int(16), int(17), int(18)];
    let map = if map == [0, 0, 0] { [1, 2, 3] } else { map };
    let mut sorted = map;
    sorted.sort();
    if sorted != [1, 2, 3] {
        return Err(bad(format!(
            "MRC axis map (mapc, mapr, maps) = {map:?} is not a permutation of 1, 2, 3"
        )));
    }
    // File axis f (0 columns, 1 rows, 2 sections) runs along world axis map[f] - 1.
    let axis_of = map.map(|m| (m - 1) as usize);
    let mut dims = [0usize; 3];
    for f in 0..3 {
        dims[axis_of[f]] = n[f];
    }
    let data = if axis_of == [0, 1, 2] {
        stored
    } else {
        let mut out = vec![0.0f32; count];
        let mut i = 0;
        for s in 0..n[2] {
            for r in 0..n[1] {
                for c in 0..n[0] {
                    let mut xyz = [0usize; 3];
                    xyz[axis_of[0]] = c;
                    xyz[axis_of[1]] = r;
                    xyz[axis_of[2]] = s;
                    out[xyz[0] + dims[0] * (xyz[1] + dims[1] * xyz[2])] = stored[i];
                    i += 1;
                }
            }
        }
        out
    };
    let sampling = [int(7), int(8), int(9)];
    let cell = [float(10), float(11), float(12)];
    let spacing_known = (0..3).all(|i| sampling[i] > 0 && cell[i] > 0.0 && cell[i].is_finite());
    let spacing = if spacing_known {
        [0, 1, 2].map(|i| cell[i] / sampling[i] as f32)
    } else {
        [1.0; 3]
    };
    let origin = [float(49), float(50), float(51)].map(|v| if v.is_finite() { v } else { 0.0 });
    let mut affine = [[0.0f64; 4]; 3];
    for i in 0..3 {
        affine[i][i] = f64::from(spacing[i]);
        affine[i][3] = f64::from(origin[i]);
    }
    let volume =
        NiftiVolume::from_parts(dims, spacing, affine, data, ntype.unwrap_or(NiftiType::F32));
    Ok(MrcVolume {
        volume,
        dtype,
        spacing_known,
    })
}

/// Whether a path names an MRC/CCP4 map.
pub fn is_mrc(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| {
        ["mrc", "map", "ccp4", "mrcs", "rec"]
            .iter()
            .any(|x| e.eq_ignore_ascii_case(x))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{assert_matches, expected};

    #[test]
    fn reads_what_mrcfile_wrote() {
        let (dir, all) = expected("mrc");
        assert_eq!(all.len(), 4);
        for (name, e) in &all {
            let v = read_mrc(&dir.join(name)).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_matches(name, &v.volume, e);
        }
        assert!(read_mrc(&dir.join("float32.mrc")).unwrap().spacing_known);
        let labels = read_mrc(&dir.join("labels_be.mrc")).unwrap();
        assert!(!labels.spacing_known, "cella 0 means no voxel size");
        assert_eq!(labels.dtype, "uint16");
        assert_eq!(read_mrc(&dir.join("float16.mrc")).unwrap().dtype, "float16");
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let (dir, _) = expected("mrc");
        let original = std::fs::read(dir.join("float32.mrc")).unwrap();
        let p = Path::new("bad.mrc");
        let msg = |bytes: &[u8]| parse_mrc(p, bytes).unwrap_err().to_string();
        assert!(msg(&original[..original.len() - 1]).contains("truncated"));
        assert!(msg(&original[..500]).contains("shorter than an MRC header"));
        let mut mode = original.clone();
        mode[12..16].copy_from_slice(&3i32.to_le_bytes()); // complex int16
        assert!(msg(&mode).contains("mode 3"));
        let mut map = original.clone();
        map[64..68].copy_from_slice(&2i32.to_le_bytes()); // mapc = 2 twice
        assert!(msg(&map).contains("permutation"));
        let mut huge = original.clone();
        huge[0..4].copy_from_slice(&i32::MAX.to_le_bytes());
        assert!(msg(&huge).contains("truncated"));
        let mut nan = original.clone();
        nan[1024..1028].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(msg(&nan).contains("not finite"));
        assert!(msg(&nan).contains("bad.mrc"));
    }
}

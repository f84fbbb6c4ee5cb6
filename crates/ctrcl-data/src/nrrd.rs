//! NRRD reader (teem's format, as written by 3D Slicer, pynrrd and ITK): text header, then raw,
//! gzip or ASCII data attached or in a detached file. 3D volumes come back as [`NiftiVolume`]s in
//! the file's own axis order (the first NRRD axis is the fastest, like NIfTI's X) with the
//! geometry turned from the NRRD `space` into NIfTI's RAS world.

use crate::error::{DataError, Result};
use crate::nifti::{decode_voxels, NiftiType, NiftiVolume};
use flate2::read::MultiGzDecoder;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The parsed text header of an NRRD file.
#[derive(Debug, Clone)]
pub struct NrrdHeader {
    /// Fields (`name: value`), names lower-cased.
    pub fields: BTreeMap<String, String>,
    /// Key/value pairs (`key:=value`), e.g. Slicer's `Segment0_Name`.
    pub keys: BTreeMap<String, String>,
    /// Byte offset of the first byte after the header (after the blank line).
    pub data_start: usize,
}

impl NrrdHeader {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Parses the header of `bytes` (the whole file).
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<NrrdHeader> {
    if !bytes.starts_with(b"NRRD000") {
        return Err(DataError::invalid(
            path,
            "not an NRRD file (no \"NRRD000x\" magic on the first line)",
        ));
    }
    let mut fields = BTreeMap::new();
    let mut keys = BTreeMap::new();
    let mut at = 0;
    let mut first = true;
    loop {
        let Some(len) = bytes[at..].iter().position(|&b| b == b'\n') else {
            // A header that ends with the file has no attached data (a detached header).
            if first {
                return Err(DataError::invalid(path, "NRRD header has no line end"));
            }
            at = bytes.len();
            break;
        };
        let raw = &bytes[at..at + len];
        at += len + 1;
        let line = std::str::from_utf8(raw)
            .map_err(|_| DataError::invalid(path, "NRRD header line is not text"))?
            .trim_end_matches('\r');
        if first {
            first = false;
            continue;
        }
        if line.is_empty() {
            break;
        }
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once(":=") {
            keys.insert(k.to_string(), v.to_string());
        } else if let Some((k, v)) = line.split_once(": ") {
            fields.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        } else {
            return Err(DataError::invalid(
                path,
                format!("NRRD header line {line:?} is neither \"field: value\" nor \"key:=value\""),
            ));
        }
    }
    Ok(NrrdHeader {
        fields,
        keys,
        data_start: at,
    })
}

/// NRRD type names (all the spellings of the format's specification) → element type.
fn element_type(name: &str) -> Option<NiftiType> {
    Some(match name {
        "signed char" | "int8" | "int8_t" => NiftiType::I8,
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => NiftiType::U8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            NiftiType::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => {
            NiftiType::U16
        }
        "int" | "signed int" | "int32" | "int32_t" => NiftiType::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => NiftiType::U32,
        "longlong"
        | "long long"
        | "long long int"
        | "signed long long"
        | "signed long long int"
        | "int64"
        | "int64_t" => NiftiType::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            NiftiType::U64
        }
        "float" => NiftiType::F32,
        "double" => NiftiType::F64,
        _ => return None,
    })
}

/// A parsed `(x,y,z)` vector, or `None` for the word `none`.
fn parse_vector(text: &str) -> Option<Vec<f64>> {
    let t = text.trim();
    if t == "none" {
        return None;
    }
    let inner = t.strip_prefix('(')?.strip_suffix(')')?;
    inner.split(',').map(|v| v.trim().parse().ok()).collect()
}

/// Sign flips that take a vector in the named NRRD space to RAS.
fn space_to_ras(space: &str) -> Option<[f64; 3]> {
    Some(match space {
        "right-anterior-superior" | "RAS" | "scanner-xyz" | "3D-right-handed" => [1.0, 1.0, 1.0],
        "left-anterior-superior" | "LAS" => [-1.0, 1.0, 1.0],
        "left-posterior-superior" | "LPS" => [-1.0, -1.0, 1.0],
        _ => return None,
    })
}

/// Reads a 3D NRRD volume (`.nrrd` with attached data, or `.nhdr` + data file).
pub fn read_nrrd(path: &Path) -> Result<NiftiVolume> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_nrrd(path, &bytes)
}

/// [`read_nrrd`] keeping NaN and infinite values (for `data inspect`, which counts them).
pub fn read_nrrd_any(path: &Path) -> Result<NiftiVolume> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_nrrd_any(path, &bytes)
}

/// Parses NRRD bytes (`path` names the file in errors and locates a detached data file); a NaN
/// or infinite value is an error naming it.
pub fn parse_nrrd(path: &Path, bytes: &[u8]) -> Result<NiftiVolume> {
    let v = parse_nrrd_any(path, bytes)?;
    crate::error::check_finite(path, &v.data)?;
    Ok(v)
}

fn parse_nrrd_any(path: &Path, bytes: &[u8]) -> Result<NiftiVolume> {
    let header = parse_header(path, bytes)?;
    let bad = |m: String| DataError::invalid(path, m);
    let need = |name: &str| {
        header
            .field(name)
            .ok_or_else(|| bad(format!("NRRD header has no \"{name}\" field")))
    };
    let type_name = need("type")?;
    let dtype = element_type(type_name)
        .ok_or_else(|| bad(format!("unsupported NRRD type \"{type_name}\"")))?;
    let dimension: usize = need("dimension")?
        .parse()
        .map_err(|_| bad("NRRD \"dimension\" is not a number".into()))?;
    let sizes: Vec<usize> = need("sizes")?
        .split_whitespace()
        .map(|s| s.parse().ok().filter(|&n: &usize| n > 0))
        .collect::<Option<_>>()
        .ok_or_else(|| bad("NRRD \"sizes\" must be positive integers".into()))?;
    if sizes.len() != dimension {
        return Err(bad(format!(
            "NRRD \"sizes\" has {} values but \"dimension\" is {dimension}",
            sizes.len()
        )));
    }
    let dims: [usize; 3] = match sizes.as_slice() {
        [x, y] => [*x, *y, 1],
        [x, y, z] => [*x, *y, *z],
        [x, y, z, rest @ ..] if rest.iter().all(|&n| n == 1) => [*x, *y, *z],
        _ => {
            return Err(bad(format!(
                "NRRD sizes {sizes:?}: only 2D and 3D volumes are supported (a 4D file, e.g. \
                 a Slicer segmentation with overlapping layers, is not)"
            )))
        }
    };
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("NRRD sizes {sizes:?} overflow")))?;
    let nbytes = count
        .checked_mul(dtype.size())
        .ok_or_else(|| bad(format!("NRRD sizes {sizes:?} overflow")))?;
    let encoding = need("encoding")?;
    let big_endian = match header.field("endian") {
        Some("big") => true,
        Some("little") | None => false,
        Some(other) => {
            return Err(bad(format!(
                "NRRD endian \"{other}\" is neither little nor big"
            )))
        }
    };
    if header.field("endian").is_none()
        && dtype.size() > 1
        && !matches!(encoding, "ascii" | "text" | "txt")
    {
        return Err(bad(format!(
            "NRRD type \"{type_name}\" needs an \"endian\" field"
        )));
    }

    // The encoded data: attached after the header or in a detached file.
    let detached = header.field("data file").or(header.field("datafile"));
    let payload: Vec<u8> = match detached {
        Some(name) if name.starts_with("LIST") || name.contains('%') => {
            return Err(bad(format!(
                "NRRD data file \"{name}\": multi-file data lists are not supported"
            )))
        }
        Some(name) => {
            let data_path = path.parent().unwrap_or(Path::new(".")).join(name);
            std::fs::read(&data_path).map_err(|e| DataError::io(&data_path, e))?
        }
        None => bytes[header.data_start..].to_vec(),
    };
    let line_skip: usize = header
        .field("line skip")
        .or(header.field("lineskip"))
        .map_or(Ok(0), str::parse)
        .map_err(|_| bad("NRRD \"line skip\" is not a number".into()))?;
    let mut start = 0;
    for _ in 0..line_skip {
        let nl = payload[start..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad(format!("NRRD line skip {line_skip} runs past the data")))?;
        start += nl + 1;
    }
    let byte_skip: i64 = header
        .field("byte skip")
        .or(header.field("byteskip"))
        .map_or(Ok(0), str::parse)
        .map_err(|_| bad("NRRD \"byte skip\" is not a number".into()))?;
    let data = match encoding {
        "raw" => {
            let raw = skip_bytes(&payload[start..], byte_skip, nbytes, path)?;
            decode_voxels(raw, dtype, big_endian, 1.0, 0.0)
        }
        "gzip" | "gz" => {
            // No allocation from the header's claim: a corrupt size must not abort the process.
            let mut out = Vec::new();
            MultiGzDecoder::new(&payload[start..])
                .take(nbytes as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("corrupt gzip data: {e}")))?;
            let raw = skip_bytes(&out, byte_skip, nbytes, path)?;
            decode_voxels(raw, dtype, big_endian, 1.0, 0.0)
        }
        "ascii" | "text" | "txt" => {
            let text = std::str::from_utf8(&payload[start..])
                .map_err(|_| bad("NRRD ascii data is not text".into()))?;
            let values: Vec<f32> = text
                .split(|c: char| c.is_whitespace() || c == ',')
                .filter(|t| !t.is_empty())
                .take(count)
                .map(|t| t.parse::<f64>().map(|v| v as f32))
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| bad(format!("NRRD ascii data: {e}")))?;
            if values.len() < count {
                return Err(bad(format!(
                    "truncated: NRRD ascii data has {} values, sizes need {count}",
                    values.len()
                )));
            }
            values
        }
        other => {
            return Err(bad(format!(
                "NRRD encoding \"{other}\" is not supported (raw, gzip and ascii are)"
            )))
        }
    };
    let (spacing, affine) = geometry(&header, dims, path)?;
    Ok(NiftiVolume::from_parts(dims, spacing, affine, data, dtype))
}

/// `nbytes` of raw data after `byte skip` (−1: the data are the last `nbytes` of the payload).
fn skip_bytes<'a>(payload: &'a [u8], skip: i64, nbytes: usize, path: &Path) -> Result<&'a [u8]> {
    let start = if skip == -1 {
        payload.len().checked_sub(nbytes)
    } else if skip >= 0 {
        Some(skip as usize)
    } else {
        None
    };
    match start {
        Some(s)
            if s.checked_add(nbytes)
                .is_some_and(|end| end <= payload.len()) =>
        {
            Ok(&payload[s..s + nbytes])
        }
        _ => Err(DataError::invalid(
            path,
            format!(
                "truncated: the sizes need {nbytes} bytes of data (byte skip {skip}), the data \
                 hold {}",
                payload.len()
            ),
        )),
    }
}

/// Voxel size and voxel → RAS affine from `space directions` + `space origin` (or the older
/// per-axis `spacings`).
fn geometry(
    header: &NrrdHeader,
    dims: [usize; 3],
    path: &Path,
) -> Result<([f32; 3], [[f64; 4]; 3])> {
    let bad = |m: String| DataError::invalid(path, m);
    let mut affine = [[0.0; 4]; 3];
    let mut spacing = [1.0f32; 3];
    let flips = match header.field("space") {
        Some(space) => space_to_ras(space).ok_or_else(|| {
            bad(format!(
                "NRRD space \"{space}\" is not a 3D patient space ctrcl knows"
            ))
        })?,
        None => [1.0; 3],
    };
    if let Some(text) = header.field("space directions") {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let vectors: Vec<Option<Vec<f64>>> = parts.iter().map(|p| parse_vector(p)).collect();
        let axes: Vec<Vec<f64>> = vectors.into_iter().flatten().collect();
        let dims_used = if dims[2] == 1 && axes.len() == 2 {
            2
        } else {
            3
        };
        if axes.len() != dims_used || axes.iter().any(|a| a.len() != 3) {
            return Err(bad(format!(
                "NRRD space directions {text:?} do not give one 3-vector per spatial axis"
            )));
        }
        for (col, axis) in axes.iter().enumerate() {
            let norm = axis.iter().map(|v| v * v).sum::<f64>().sqrt();
            if !(norm > 0.0 && norm.is_finite()) {
                return Err(bad(format!("NRRD space direction {col} has zero length")));
            }
            spacing[col] = norm as f32;
            for row in 0..3 {
                affine[row][col] = axis[row] * flips[row];
            }
        }
        if dims_used == 2 {
            affine[2][2] = 1.0;
        }
    } else {
        if let Some(text) = header.field("spacings") {
            for (i, s) in text.split_whitespace().take(3).enumerate() {
                if let Ok(v) = s.parse::<f64>() {
                    if v.is_finite() && v > 0.0 {
                        spacing[i] = v as f32;
                    }
                }
            }
        }
        for i in 0..3 {
            affine[i][i] = f64::from(spacing[i]);
        }
    }
    if let Some(origin) = header.field("space origin").and_then(parse_vector) {
        if origin.len() == 3 {
            for row in 0..3 {
                affine[row][3] = origin[row] * flips[row];
            }
        }
    }
    Ok((spacing, affine))
}

/// Whether a path names an NRRD file (`.nrrd` or a detached `.nhdr` header).
pub fn is_nrrd(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".nrrd") || name.ends_with(".nhdr")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{assert_matches, expected};

    #[test]
    fn reads_what_pynrrd_wrote() {
        let (dir, all) = expected("nrrd");
        assert_eq!(all.len(), 4);
        for (name, e) in &all {
            let v = read_nrrd(&dir.join(name)).unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_matches(name, &v, e);
        }
    }

    #[test]
    fn damaged_files_are_clear_errors() {
        let (dir, _) = expected("nrrd");
        let tmp = tempfile::tempdir().unwrap();
        let original = std::fs::read(dir.join("float_be_raw.nrrd")).unwrap();
        let check = |bytes: &[u8], needle: &str| {
            let p = tmp.path().join("bad.nrrd");
            std::fs::write(&p, bytes).unwrap();
            let msg = read_nrrd(&p).unwrap_err().to_string();
            assert!(msg.contains("bad.nrrd") && msg.contains(needle), "{msg}");
        };
        check(&original[..original.len() - 5], "truncated");
        check(b"P5\n3 3\n", "not an NRRD file");
        let text = String::from_utf8_lossy(&original).into_owned();
        let header_end = text.find("\n\n").unwrap();
        let header = &text[..header_end];
        let swap = |pairs: &[(&str, &str)]| {
            let mut h = header.to_string();
            for (from, to) in pairs {
                h = h.replacen(from, to, 1);
            }
            let mut b = h.into_bytes();
            b.extend_from_slice(&original[header_end..]);
            b
        };
        check(
            &swap(&[("type: double", "type: quaternion")]),
            "unsupported NRRD type",
        );
        check(&swap(&[("sizes: 3 3 2", "sizes: 3 0 2")]), "positive");
        check(&swap(&[("sizes: 3 3 2", "sizes: 3 3")]), "dimension");
        check(&swap(&[("encoding: raw", "encoding: bzip2")]), "bzip2");
        check(
            &swap(&[("sizes: 3 3 2", "sizes: 3000 3000 2")]),
            "truncated",
        );
        check(
            &swap(&[("sizes: 3 3 2", "sizes: 9999999999 9999999999 99")]),
            "overflow",
        );
        // A 4D segmentation (Slicer's overlapping layers) is refused, not misread.
        check(
            &swap(&[
                ("dimension: 3", "dimension: 4"),
                ("sizes: 3 3 2", "sizes: 2 3 3 2"),
            ]),
            "4D",
        );
    }
}

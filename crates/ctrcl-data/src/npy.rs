//! NumPy `.npy` files: output (format 1.0, little-endian float32, C order) for probability maps
//! that users load with `numpy.load`, and input of numeric arrays of any NumPy dtype, C or
//! Fortran order, format 1.0–3.0.

use crate::error::{write_atomic, DataError, Result};
use std::path::Path;

/// An array read from a `.npy` file, values converted to f64 in C (row-major) order.
#[derive(Debug, Clone)]
pub struct NpyArray {
    /// Shape as stored (NumPy order).
    pub shape: Vec<usize>,
    /// NumPy's name of the stored type: `uint8`, `int16`, `float32`, `bool`, ….
    pub dtype: String,
    pub data: Vec<f64>,
}

/// Parses `.npy` bytes (`path` only names the file in errors).
pub fn parse_npy(path: &Path, bytes: &[u8]) -> Result<NpyArray> {
    let bad = |m: String| DataError::invalid(path, m);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize,
            12,
        ),
        v => return Err(bad(format!("unsupported .npy format version {v}"))),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated or non-text .npy header".into()))?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}'"))? + key.len() + 2;
        Some(header[at..].trim_start().strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|v| v.strip_prefix('\''))
        .and_then(|v| v.split('\'').next())
        .ok_or_else(|| bad(format!("no descr in header {header:?}")))?;
    let fortran = field("fortran_order")
        .ok_or_else(|| bad(format!("no fortran_order in header {header:?}")))?
        .starts_with("True");
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.split(')').next())
        .ok_or_else(|| bad(format!("no shape in header {header:?}")))?;
    let shape: Vec<usize> = shape_text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .map_err(|_| bad(format!("bad shape ({shape_text})")))
        })
        .collect::<Result<_>>()?;
    let (big, kind, size) = {
        let b = descr.as_bytes();
        if b.len() < 3 {
            return Err(bad(format!("unsupported dtype '{descr}'")));
        }
        // By bytes: a multi-byte character at index 1 must be an error, not a panic (found by
        // tests/fuzz.rs).
        let size: usize = std::str::from_utf8(&b[2..])
            .ok()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| bad(format!("unsupported dtype '{descr}'")))?;
        (b[0] == b'>', b[1], size)
    };
    let dtype = match (kind, size) {
        (b'b', 1) => "bool".to_string(),
        (b'u', n) if [1, 2, 4, 8].contains(&n) => format!("uint{}", 8 * n),
        (b'i', n) if [1, 2, 4, 8].contains(&n) => format!("int{}", 8 * n),
        (b'f', n) if [2, 4, 8].contains(&n) => format!("float{}", 8 * n),
        _ => {
            return Err(bad(format!(
                "unsupported dtype '{descr}' (numeric arrays only)"
            )))
        }
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|c| c.checked_mul(size).is_some())
        .ok_or_else(|| bad(format!("shape ({shape_text}) is too large")))?;
    let body = &bytes[start + header_len..];
    if body.len() < count * size {
        return Err(bad(format!(
            "data holds {} bytes, the header promises {} ({count} × {size})",
            body.len(),
            count * size
        )));
    }
    let value = |chunk: &[u8]| -> f64 {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(chunk);
        if big {
            b[..size].reverse();
        }
        match (kind, size) {
            (b'b' | b'u', 1) => b[0] as f64,
            (b'i', 1) => b[0] as i8 as f64,
            (b'u', 2) => u16::from_le_bytes([b[0], b[1]]) as f64,
            (b'i', 2) => i16::from_le_bytes([b[0], b[1]]) as f64,
            (b'u', 4) => u32::from_le_bytes(b[..4].try_into().expect("4")) as f64,
            (b'i', 4) => i32::from_le_bytes(b[..4].try_into().expect("4")) as f64,
            (b'u', 8) => u64::from_le_bytes(b) as f64,
            (b'i', 8) => i64::from_le_bytes(b) as f64,
            (b'f', 2) => half_to_f64(u16::from_le_bytes([b[0], b[1]])),
            (b'f', 4) => f32::from_le_bytes(b[..4].try_into().expect("4")) as f64,
            _ => f64::from_le_bytes(b),
        }
    };
    let stored: Vec<f64> = body[..count * size].chunks_exact(size).map(value).collect();
    let data = if fortran && shape.len() > 1 {
        fortran_to_c(&stored, &shape)
    } else {
        stored
    };
    Ok(NpyArray { shape, dtype, data })
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_npy(path, &bytes)
}

pub(crate) fn half_to_f64(h: u16) -> f64 {
    let sign = if h >> 15 == 1 { -1.0 } else { 1.0 };
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Column-major (first index fastest) values → row-major order of the same shape.
fn fortran_to_c(values: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = shape.len();
    let mut out = vec![0.0; values.len()];
    let mut idx = vec![0usize; n];
    for v in values {
        let c: usize = idx.iter().zip(shape).fold(0, |acc, (i, d)| acc * d + i);
        out[c] = *v;
        for a in 0..n {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    out
}

/// Writes `data` with `shape` (C order) to `path` atomically.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    write_atomic(path, &npy_f32_bytes(shape, data))
}

/// The bytes of a little-endian float32 `.npy` file in C order.
pub fn npy_f32_bytes(shape: &[usize], data: &[f32]) -> Vec<u8> {
    assert_eq!(
        shape.iter().product::<usize>(),
        data.len(),
        "shape and data disagree"
    );
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let tuple = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {tuple}, }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the parser fuzzer (tests/fuzz.rs): a dtype whose second character is multi-byte
    /// sliced inside it and panicked.
    #[test]
    fn a_dtype_with_a_multibyte_character_is_an_error() {
        let header = "{'descr': '|\u{ca50};z9', 'fortran_order': False, 'shape': (2,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        let padded = format!("{header:<117}\n");
        bytes.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        bytes.extend_from_slice(padded.as_bytes());
        bytes.extend_from_slice(&[0; 2]);
        let msg = parse_npy(Path::new("x.npy"), &bytes)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("unsupported dtype"), "{msg}");
    }

    #[test]
    fn reads_what_numpy_writes() {
        // scripts/reference/npy_fixtures.py wrote these with numpy; values in C order below (the
        // last float16 is the largest subnormal, 1023·2⁻²⁴).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/npy");
        let f = read_npy(&dir.join("int16_fortran_2x3.npy")).unwrap();
        assert_eq!((f.shape.clone(), f.dtype.as_str()), (vec![2, 3], "int16"));
        assert_eq!(f.data, vec![-3.0, 0.0, 7.0, 1000.0, -32768.0, 5.0]);
        let b = read_npy(&dir.join("float64_be_3.npy")).unwrap();
        assert_eq!((b.shape.clone(), b.dtype.as_str()), (vec![3], "float64"));
        assert_eq!(b.data, vec![0.5, -2.25, 1e300]);
        let u = read_npy(&dir.join("uint8_2x2x2.npy")).unwrap();
        assert_eq!(u.data, (0..8).map(|v| v as f64 * 30.0).collect::<Vec<_>>());
        let h = read_npy(&dir.join("float16_4.npy")).unwrap();
        assert_eq!(h.data, vec![1.0, -0.5, 65504.0, 1023.0 * 2f64.powi(-24)]);
        // Our own writer's output reads back.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("p.npy");
        write_npy_f32(&path, &[2, 1, 2], &[1.0, 2.0, 3.0, 4.5]).unwrap();
        let back = read_npy(&path).unwrap();
        assert_eq!(
            (back.shape, back.data),
            (vec![2, 1, 2], vec![1.0, 2.0, 3.0, 4.5])
        );
        // An absurd shape is an error, not an overflow.
        let huge = b"\x93NUMPY\x01\x00\x51\x00{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }";
        let err = parse_npy(Path::new("huge.npy"), huge)
            .unwrap_err()
            .to_string();
        assert!(err.contains("too large"), "{err}");
        // Truncated data is an error naming the file.
        let bytes = std::fs::read(dir.join("int16_fortran_2x3.npy")).unwrap();
        let err = parse_npy(Path::new("cut.npy"), &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("cut.npy") && err.to_string().contains("promises"));
    }

    #[test]
    fn header_is_what_numpy_writes() {
        // np.save(f, np.zeros((2, 3), np.float32)) writes this 128-byte file: a 118-byte
        // header dict padded with spaces, then 6 little-endian zeros.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        write_npy_f32(&path, &[2, 3], &[0.0; 6]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 128 + 24);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 118);
        let header = std::str::from_utf8(&bytes[10..128]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with(" \n"));
    }
}

//! NIfTI-1 single-file (`.nii`, `.nii.gz`) reading and writing, written by hand because the
//! `nifti` crate silently misreads files whose `vox_offset` is 0 with data at the end.
//!
//! Voxels are kept in file order (x fastest, then y, then z) as `f32` after applying
//! `scl_slope`/`scl_inter` (a slope of 0 or NaN means 1, as the standard says). The 348-byte header
//! is kept so that predictions can be written with the input's exact geometry.
//!
//! Why ~1,000 lines: ~700 are one format's reading and writing (header, orientation from
//! qform/sform, scaling, gzip) that share the header model; the rest are its tests against
//! nibabel-written files, kept beside the code they check.

use crate::error::{DataError, Result};
use crate::nifti_gz::{gunzip_nifti, NIFTI1_HEADER_SIZE as HEADER_SIZE};
use std::path::Path;

const DATA_OFFSET: usize = 352;

/// Element types ctrcl reads and writes (NIfTI `datatype` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NiftiType {
    U8,
    I16,
    I32,
    F32,
    F64,
    I8,
    U16,
    U32,
    I64,
    U64,
}

impl NiftiType {
    fn from_code(code: i16) -> Option<Self> {
        Some(match code {
            2 => Self::U8,
            4 => Self::I16,
            8 => Self::I32,
            16 => Self::F32,
            64 => Self::F64,
            256 => Self::I8,
            512 => Self::U16,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            _ => return None,
        })
    }

    fn code(self) -> i16 {
        match self {
            Self::U8 => 2,
            Self::I16 => 4,
            Self::I32 => 8,
            Self::F32 => 16,
            Self::F64 => 64,
            Self::I8 => 256,
            Self::U16 => 512,
            Self::U32 => 768,
            Self::I64 => 1024,
            Self::U64 => 1280,
        }
    }

    pub(crate) fn size(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::F64 | Self::I64 | Self::U64 => 8,
        }
    }

    /// Whether the stored values are integers (labels must be).
    pub fn is_integer(self) -> bool {
        !matches!(self, Self::F32 | Self::F64)
    }
}

/// A 3D NIfTI volume.
#[derive(Debug, Clone)]
pub struct NiftiVolume {
    /// Grid size in header order (X, Y, Z); a 2D image has Z = 1.
    pub dims: [usize; 3],
    /// Voxel size in mm (pixdim[1..=3]).
    pub spacing: [f32; 3],
    /// Voxel → world (RAS mm) affine, rows of a 3×4 matrix: sform if set, else qform, else pixdim.
    pub affine: [[f64; 4]; 3],
    /// Scaled voxel values, x fastest.
    pub data: Vec<f32>,
    /// The stored element type.
    pub dtype: NiftiType,
    /// The original header, for writing outputs with identical geometry.
    pub header: Vec<u8>,
}

impl NiftiVolume {
    /// A volume read from another format (NRRD, MRC, …), given a fresh NIfTI header that
    /// carries its geometry, so it is written out like any NIfTI input.
    pub fn from_parts(
        dims: [usize; 3],
        spacing: [f32; 3],
        affine: [[f64; 4]; 3],
        data: Vec<f32>,
        dtype: NiftiType,
    ) -> Self {
        // Several channels may follow each other (`Case` keeps RGB that way).
        debug_assert_eq!(data.len() % dims.iter().product::<usize>().max(1), 0);
        let mut header = fresh_header(spacing, affine);
        header[40..42].copy_from_slice(&3i16.to_le_bytes());
        for (i, d) in dims.iter().enumerate() {
            header[42 + 2 * i..44 + 2 * i].copy_from_slice(&(*d as i16).to_le_bytes());
        }
        NiftiVolume {
            dims,
            spacing,
            affine,
            data,
            dtype,
            header,
        }
    }

    /// Number of voxels in one axial (z) slice.
    pub fn slice_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }
}

/// The case id of a NIfTI file: its name without `.nii.gz` or `.nii`; `None` for other files.
pub fn nifti_stem(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy();
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))?;
    Some(stem.to_string())
}

/// Two lengths in mm that a header round trip keeps apart by float noise only (1e-3 mm, or 1e-4
/// relative for large values).
pub fn close_mm(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3f64.max(1e-4 * a.abs().max(b.abs()))
}

/// How voxel → world affine `a` differs from `b` (origin, or axes: voxel size and orientation),
/// in words naming `b` as `other`; `None` when they agree within [`close_mm`].
pub fn affine_mismatch(a: &[[f64; 4]; 3], b: &[[f64; 4]; 3], other: &str) -> Option<String> {
    let origin = |m: &[[f64; 4]; 3]| [m[0][3], m[1][3], m[2][3]];
    if !origin(a)
        .iter()
        .zip(origin(b))
        .all(|(&x, y)| close_mm(x, y))
    {
        return Some(format!(
            "origin {:?} mm differs from {other} {:?} mm",
            origin(a),
            origin(b)
        ));
    }
    if !(0..3).all(|r| (0..3).all(|c| close_mm(a[r][c], b[r][c]))) {
        return Some(format!(
            "voxel axes (size and orientation) {:?} differ from {other} {:?}",
            a.map(|row| [row[0], row[1], row[2]]),
            b.map(|row| [row[0], row[1], row[2]])
        ));
    }
    None
}

/// Reads a `.nii` or `.nii.gz` file (gzip detected from the content, not the name). A NaN or
/// infinite intensity is an error (it would poison training and metrics).
pub fn read_nifti(path: &Path) -> Result<NiftiVolume> {
    let v = read_nifti_any(path)?;
    crate::error::check_finite(path, &v.data)?;
    Ok(v)
}

/// The header of a NIfTI file (its volume with `data` empty), each voxel value passed to
/// `visit` in file order: `data inspect`'s statistics without a decoded copy of the volume.
/// NaN and infinite values are passed on, not refused.
///
/// 4D and larger files are accepted here (a probabilistic atlas, an fMRI or diffusion series, a
/// multi-channel volume): the values come volume after volume, and the sizes of the axes beyond
/// the third (`dim[4..]`) are returned beside the first volume's geometry. `visit` gets each
/// value with the index of the 3D volume it belongs to (0 for a 3D file).
pub fn visit_nifti(
    path: &Path,
    visit: &mut dyn FnMut(usize, f32),
) -> Result<(NiftiVolume, Vec<usize>)> {
    let bytes = read_nifti_bytes(path)?;
    parse_nifti_with(path, &bytes, Some(visit))
}

/// The (inflated) bytes of a `.nii` or `.nii.gz`; the compressed ones are freed before return.
fn read_nifti_bytes(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip_nifti(path, &raw)
    } else {
        Ok(raw)
    }
}

/// [`read_nifti`] keeping NaN and infinite intensities.
pub fn read_nifti_any(path: &Path) -> Result<NiftiVolume> {
    let bytes = read_nifti_bytes(path)?;
    parse_nifti(path, &bytes)
}

/// Parses the bytes of an uncompressed `.nii` (`path` only names the file in errors).
pub fn parse_nifti_bytes(path: &Path, bytes: &[u8]) -> Result<NiftiVolume> {
    parse_nifti(path, bytes)
}

/// Reads little- or big-endian header fields.
struct Fields<'a> {
    bytes: &'a [u8],
    swap: bool,
}

impl Fields<'_> {
    fn i16(&self, at: usize) -> i16 {
        let b = [self.bytes[at], self.bytes[at + 1]];
        if self.swap {
            i16::from_be_bytes(b)
        } else {
            i16::from_le_bytes(b)
        }
    }
    fn f32(&self, at: usize) -> f32 {
        let b: [u8; 4] = self.bytes[at..at + 4].try_into().expect("4 bytes");
        if self.swap {
            f32::from_be_bytes(b)
        } else {
            f32::from_le_bytes(b)
        }
    }
}

fn parse_nifti(path: &Path, bytes: &[u8]) -> Result<NiftiVolume> {
    parse_nifti_with(path, bytes, None).map(|(v, _)| v)
}

/// Parses a NIfTI file; with `visit`, each voxel value goes to it in file order instead of into
/// the returned volume's `data` (left empty), so statistics need no decoded copy of the volume,
/// and axes beyond the third are allowed (their sizes are returned; without `visit` they are
/// refused, as training and prediction read 3D volumes).
fn parse_nifti_with(
    path: &Path,
    bytes: &[u8],
    visit: Option<&mut dyn FnMut(usize, f32)>,
) -> Result<(NiftiVolume, Vec<usize>)> {
    if bytes.len() < HEADER_SIZE {
        return Err(DataError::invalid(
            path,
            format!(
                "file is {} bytes, shorter than a NIfTI-1 header (348)",
                bytes.len()
            ),
        ));
    }
    let size_le = i32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let size_be = i32::from_be_bytes(bytes[0..4].try_into().expect("4 bytes"));
    let swap = match (size_le, size_be) {
        (348, _) => false,
        (_, 348) => true,
        (540, _) | (_, 540) => {
            let as_one = nifti2_as_nifti1(path, bytes, size_be == 540)?;
            return parse_nifti_with(path, &as_one, visit);
        }
        _ => {
            return Err(DataError::invalid(
                path,
                format!("not a NIfTI file: sizeof_hdr is {size_le}, expected 348"),
            ))
        }
    };
    let f = Fields { bytes, swap };
    let magic = &bytes[344..348];
    if magic == b"ni1\0" {
        return Err(DataError::invalid(
            path,
            "is a header of a .hdr/.img pair; ctrcl reads single-file NIfTI (.nii, .nii.gz)",
        ));
    }
    if magic != b"n+1\0" {
        return Err(DataError::invalid(
            path,
            "bad NIfTI magic (expected \"n+1\")",
        ));
    }
    let ndim = f.i16(40);
    if !(1..=7).contains(&ndim) {
        return Err(DataError::invalid(
            path,
            format!("dim[0] = {ndim} is not in 1..=7"),
        ));
    }
    let mut dims = [1usize; 3];
    for (axis, dim) in dims.iter_mut().enumerate().take(ndim.min(3) as usize) {
        let d = f.i16(42 + 2 * axis);
        if d < 1 {
            return Err(DataError::invalid(
                path,
                format!("dim[{}] = {d} is not positive", axis + 1),
            ));
        }
        *dim = d as usize;
    }
    let mut extra = Vec::new();
    for axis in 3..ndim as usize {
        let d = f.i16(42 + 2 * axis);
        if visit.is_some() {
            if d < 1 {
                return Err(DataError::invalid(
                    path,
                    format!("dim[{}] = {d} is not positive", axis + 1),
                ));
            }
            extra.push(d as usize);
        } else if d > 1 {
            return Err(DataError::invalid(
                path,
                format!(
                    "dim[{}] = {d}: only 3D volumes are supported (4D and more are not)",
                    axis + 1
                ),
            ));
        }
    }
    let code = f.i16(70);
    let dtype = NiftiType::from_code(code).ok_or_else(|| {
        DataError::invalid(path, format!("unsupported NIfTI datatype code {code}"))
    })?;
    let bitpix = f.i16(72);
    if bitpix as usize != dtype.size() * 8 {
        return Err(DataError::invalid(
            path,
            format!("bitpix {bitpix} disagrees with datatype {dtype:?}"),
        ));
    }
    // At most 7 axes of at most 32767: the product fits in u128, and is checked against usize.
    let count = dims
        .iter()
        .chain(&extra)
        .map(|&d| d as u128)
        .product::<u128>()
        * dtype.size() as u128;
    let Ok(nbytes) = usize::try_from(count) else {
        return Err(DataError::invalid(
            path,
            format!("dims {dims:?} × {extra:?} are too large"),
        ));
    };
    let vox_offset = f.f32(108);
    let offset = if vox_offset.is_finite() && vox_offset >= DATA_OFFSET as f32 {
        vox_offset as usize
    } else if vox_offset == 0.0 && bytes.len() >= nbytes + HEADER_SIZE {
        // Known quirk: single-file images with vox_offset 0 whose data sit at the end of the file.
        bytes.len() - nbytes
    } else {
        return Err(DataError::invalid(
            path,
            format!("vox_offset {vox_offset} is invalid (must be >= 352)"),
        ));
    };
    // A huge vox_offset saturates to usize::MAX: the sum must not wrap (found by cargo fuzz).
    if offset
        .checked_add(nbytes)
        .is_none_or(|end| end > bytes.len())
    {
        return Err(DataError::invalid(
            path,
            format!(
                "truncated: header says {nbytes} bytes of voxel data at offset {offset}, but the file has {} bytes",
                bytes.len()
            ),
        ));
    }
    let mut slope = f.f32(112);
    let inter = f.f32(116);
    if slope == 0.0 || !slope.is_finite() {
        slope = 1.0;
    }
    let inter = if inter.is_finite() { inter } else { 0.0 };
    let raw = &bytes[offset..offset + nbytes];
    let data = match visit {
        Some(visit) => {
            let volume_len = dims.iter().product::<usize>().max(1);
            voxel_values(raw, dtype, swap, slope, inter)
                .enumerate()
                .for_each(|(i, x)| visit(i / volume_len, x));
            Vec::new()
        }
        None => voxel_values(raw, dtype, swap, slope, inter).collect(),
    };
    let pixdim = |i: usize| f.f32(76 + 4 * i).abs();
    // A NaN or infinite voxel size is an error: read as 1 mm it would score distances silently
    // wrong. Zero stays the common "unused axis" convention and reads as 1.
    if let Some(i) = (1..=3).find(|&i| !pixdim(i).is_finite()) {
        return Err(DataError::invalid(
            path,
            format!("pixdim[{i}] = {} is not a voxel size", pixdim(i)),
        ));
    }
    let spacing = [pixdim(1), pixdim(2), pixdim(3)].map(|s| if s > 0.0 { s } else { 1.0 });
    let affine = header_affine(&f, spacing);
    let volume = NiftiVolume {
        dims,
        spacing,
        affine,
        data,
        dtype,
        header: bytes[..HEADER_SIZE].to_vec(),
    };
    Ok((volume, extra))
}

/// NIfTI-2 (540-byte header, 64-bit dims and offsets, f64 pixdim and affine) rewritten as the
/// equivalent NIfTI-1 file in the same byte order — header, 4 extension bytes, the voxel data
/// unchanged — so that one parser serves both. Dims above 32767 do not fit NIfTI-1 and are
/// refused; f64 geometry is kept to f32 precision.
fn nifti2_as_nifti1(path: &Path, bytes: &[u8], big_endian: bool) -> Result<Vec<u8>> {
    const HEADER2: usize = 540;
    if bytes.len() < HEADER2 {
        return Err(DataError::invalid(
            path,
            format!(
                "file is {} bytes, shorter than a NIfTI-2 header (540)",
                bytes.len()
            ),
        ));
    }
    if &bytes[4..8] != b"n+2\0" {
        return Err(DataError::invalid(
            path,
            "bad NIfTI-2 magic (expected \"n+2\")",
        ));
    }
    let rd = |at: usize, n: usize| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..n].copy_from_slice(&bytes[at..at + n]);
        if big_endian {
            b[..n].reverse();
        }
        b
    };
    let i16_at = |at: usize| i16::from_le_bytes(rd(at, 2)[..2].try_into().expect("2"));
    let i32_at = |at: usize| i32::from_le_bytes(rd(at, 4)[..4].try_into().expect("4"));
    let i64_at = |at: usize| i64::from_le_bytes(rd(at, 8));
    let f64_at = |at: usize| f64::from_le_bytes(rd(at, 8));
    let mut h = vec![0u8; HEADER_SIZE];
    let mut put = |at: usize, v: &[u8]| {
        let mut b = v.to_vec();
        if big_endian {
            b.reverse();
        }
        h[at..at + b.len()].copy_from_slice(&b);
    };
    put(0, &348i32.to_le_bytes());
    for i in 0..8 {
        let d = i64_at(16 + 8 * i);
        let d = i16::try_from(d).map_err(|_| {
            DataError::invalid(
                path,
                format!("dim[{i}] = {d} is too large for ctrcl (max 32767)"),
            )
        })?;
        put(40 + 2 * i, &d.to_le_bytes());
        put(76 + 4 * i, &(f64_at(104 + 8 * i) as f32).to_le_bytes());
    }
    put(70, &i16_at(12).to_le_bytes());
    put(72, &i16_at(14).to_le_bytes());
    let vox_offset = i64_at(168);
    let data_start = usize::try_from(vox_offset)
        .ok()
        .filter(|&o| o >= HEADER2 && o <= bytes.len())
        .ok_or_else(|| {
            DataError::invalid(
                path,
                format!("vox_offset {vox_offset} is invalid (must be >= 544)"),
            )
        })?;
    put(108, &(DATA_OFFSET as f32).to_le_bytes());
    put(112, &(f64_at(176) as f32).to_le_bytes());
    put(116, &(f64_at(184) as f32).to_le_bytes());
    put(252, &(i32_at(344) as i16).to_le_bytes());
    put(254, &(i32_at(348) as i16).to_le_bytes());
    for (k, at) in [352, 360, 368, 376, 384, 392].into_iter().enumerate() {
        put(256 + 4 * k, &(f64_at(at) as f32).to_le_bytes());
    }
    for k in 0..12 {
        put(280 + 4 * k, &(f64_at(400 + 8 * k) as f32).to_le_bytes());
    }
    h[123] = bytes[500 + if big_endian { 3 } else { 0 }]; // xyzt_units (low byte of the i32)
    h[344..348].copy_from_slice(b"n+1\0");
    h.extend_from_slice(&[0u8; 4]);
    h.extend_from_slice(&bytes[data_start..]);
    Ok(h)
}

pub(crate) fn decode_voxels(
    raw: &[u8],
    dtype: NiftiType,
    swap: bool,
    slope: f32,
    inter: f32,
) -> Vec<f32> {
    voxel_values(raw, dtype, swap, slope, inter).collect()
}

/// The scaled values of stored voxels, one at a time.
fn voxel_values(
    raw: &[u8],
    dtype: NiftiType,
    swap: bool,
    slope: f32,
    inter: f32,
) -> impl Iterator<Item = f32> + '_ {
    let size = dtype.size();
    raw.chunks_exact(size).map(move |chunk| {
        let mut buf = [0u8; 8];
        buf[..size].copy_from_slice(chunk);
        if swap {
            buf[..size].reverse();
        }
        let v = match dtype {
            NiftiType::U8 => buf[0] as f64,
            NiftiType::I8 => buf[0] as i8 as f64,
            NiftiType::I16 => i16::from_le_bytes([buf[0], buf[1]]) as f64,
            NiftiType::U16 => u16::from_le_bytes([buf[0], buf[1]]) as f64,
            NiftiType::I32 => i32::from_le_bytes(buf[..4].try_into().unwrap()) as f64,
            NiftiType::U32 => u32::from_le_bytes(buf[..4].try_into().unwrap()) as f64,
            NiftiType::F32 => f32::from_le_bytes(buf[..4].try_into().unwrap()) as f64,
            NiftiType::F64 => f64::from_le_bytes(buf),
            NiftiType::I64 => i64::from_le_bytes(buf) as f64,
            NiftiType::U64 => u64::from_le_bytes(buf) as f64,
        };
        (v * slope as f64 + inter as f64) as f32
    })
}

fn header_affine(f: &Fields, spacing: [f32; 3]) -> [[f64; 4]; 3] {
    let qform_code = f.i16(252);
    let sform_code = f.i16(254);
    if sform_code > 0 {
        let mut a = [[0.0; 4]; 3];
        for (r, row) in a.iter_mut().enumerate() {
            for (c, v) in row.iter_mut().enumerate() {
                *v = f.f32(280 + 16 * r + 4 * c) as f64;
            }
        }
        return a;
    }
    let [dx, dy, dz] = spacing.map(|s| s as f64);
    if qform_code > 0 {
        let (b, c, d) = (f.f32(256) as f64, f.f32(260) as f64, f.f32(264) as f64);
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if f.f32(76) < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let offs = [f.f32(268) as f64, f.f32(272) as f64, f.f32(276) as f64];
        let mut m = [[0.0; 4]; 3];
        for i in 0..3 {
            m[i] = [r[i][0] * dx, r[i][1] * dy, r[i][2] * dz * qfac, offs[i]];
        }
        return m;
    }
    [
        [dx, 0.0, 0.0, 0.0],
        [0.0, dy, 0.0, 0.0],
        [0.0, 0.0, dz, 0.0],
    ]
}

/// Writes a gzip-compressed (if `path` ends in `.gz`) NIfTI-1 file atomically.
///
/// `template` supplies the geometry (dims are overwritten from `dims`, everything else — pixdim,
/// qform, sform, orientation codes — is copied); without one, a header with unit-free `spacing`
/// and the given `affine` as sform is made. Values are stored as uint8 when `labels` is true,
/// otherwise as float32, with slope 1 and intercept 0.
pub fn write_nifti(
    path: &Path,
    dims: [usize; 3],
    data: &[f32],
    labels: bool,
    template: Option<&NiftiVolume>,
    spacing: [f32; 3],
    affine: [[f64; 4]; 3],
) -> Result<()> {
    write_nifti_channels(path, dims, 1, data, labels, template, spacing, affine)
}

/// Like [`write_nifti`], with `channels` volumes stacked along a 4th axis (`dim[4]`), e.g. one
/// probability map per class. `data` is x-fastest, then y, z, channel.
#[allow(clippy::too_many_arguments)]
pub fn write_nifti_channels(
    path: &Path,
    dims: [usize; 3],
    channels: usize,
    data: &[f32],
    labels: bool,
    template: Option<&NiftiVolume>,
    spacing: [f32; 3],
    affine: [[f64; 4]; 3],
) -> Result<()> {
    use std::io::Write;
    assert_eq!(
        dims.iter().product::<usize>() * channels,
        data.len(),
        "dims and data disagree"
    );
    let mut h = match template {
        Some(t) if !needs_swap(&t.header) => t.header.clone(),
        _ => fresh_header(spacing, affine),
    };
    let put_i16 =
        |h: &mut Vec<u8>, at: usize, v: i16| h[at..at + 2].copy_from_slice(&v.to_le_bytes());
    let put_f32 =
        |h: &mut Vec<u8>, at: usize, v: f32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let dtype = if labels {
        NiftiType::U8
    } else {
        NiftiType::F32
    };
    put_i16(&mut h, 40, if channels > 1 { 4 } else { 3 });
    for (i, d) in dims.iter().enumerate() {
        put_i16(&mut h, 42 + 2 * i, *d as i16);
    }
    // dim[4..=7] live at bytes 48..56.
    for axis in 4..=7 {
        put_i16(&mut h, 40 + 2 * axis, 1);
    }
    put_i16(&mut h, 48, channels as i16);
    put_f32(&mut h, 92, 1.0); // pixdim[4]: the channel axis has no physical step
    put_i16(&mut h, 70, dtype.code());
    put_i16(&mut h, 72, (dtype.size() * 8) as i16);
    put_f32(&mut h, 108, DATA_OFFSET as f32);
    put_f32(&mut h, 112, 1.0);
    put_f32(&mut h, 116, 0.0);
    h[344..348].copy_from_slice(b"n+1\0");
    let mut body = h;
    body.extend_from_slice(&[0u8; 4]);
    if labels {
        body.extend(data.iter().map(|v| v.round().clamp(0.0, 255.0) as u8));
    } else {
        for v in data {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    let bytes = if path.to_string_lossy().ends_with(".gz") {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&body).map_err(|e| DataError::io(path, e))?;
        enc.finish().map_err(|e| DataError::io(path, e))?
    } else {
        body
    };
    crate::error::write_atomic(path, &bytes)
}

fn needs_swap(header: &[u8]) -> bool {
    i32::from_le_bytes(header[0..4].try_into().expect("4 bytes")) != 348
}

fn fresh_header(spacing: [f32; 3], affine: [[f64; 4]; 3]) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(&348i32.to_le_bytes());
    let pix = [
        1.0f32, spacing[0], spacing[1], spacing[2], 1.0, 1.0, 1.0, 1.0,
    ];
    for (i, p) in pix.iter().enumerate() {
        h[76 + 4 * i..80 + 4 * i].copy_from_slice(&p.to_le_bytes());
    }
    h[123] = 10; // xyzt_units: mm + s
    h[254..256].copy_from_slice(&1i16.to_le_bytes()); // sform_code: scanner
    for (r, row) in affine.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            let at = 280 + 16 * r + 4 * c;
            h[at..at + 4].copy_from_slice(&(*v as f32).to_le_bytes());
        }
    }
    h
}

/// The identity voxel → world affine.
pub const IDENTITY: [[f64; 4]; 3] = [
    [1.0, 0.0, 0.0, 0.0],
    [0.0, 1.0, 0.0, 0.0],
    [0.0, 0.0, 1.0, 0.0],
];

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dims: [usize; 3]) -> Vec<f32> {
        (0..dims.iter().product::<usize>())
            .map(|i| (i % 7) as f32)
            .collect()
    }

    #[test]
    fn write_then_read_round_trips_values_and_geometry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nii.gz");
        let dims = [4, 3, 2];
        let affine = [
            [2.0, 0.0, 0.0, -10.0],
            [0.0, 1.5, 0.0, 5.0],
            [0.0, 0.0, 3.0, 1.0],
        ];
        write_nifti(
            &path,
            dims,
            &sample(dims),
            true,
            None,
            [2.0, 1.5, 3.0],
            affine,
        )
        .unwrap();
        let v = read_nifti(&path).unwrap();
        assert_eq!(v.dims, dims);
        assert_eq!(v.data, sample(dims));
        assert_eq!(v.spacing, [2.0, 1.5, 3.0]);
        assert_eq!(v.affine, affine);
        assert_eq!(v.dtype, NiftiType::U8);
    }

    /// cargo fuzz's first find: vox_offset 1e30 saturated to usize::MAX and the offset + length
    /// check wrapped around into an out-of-range slice.
    #[test]
    fn a_huge_vox_offset_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nii");
        write_nifti(&path, [2, 2, 1], &[1.0; 4], false, None, [1.0; 3], IDENTITY).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[108..112].copy_from_slice(&1.0e30f32.to_le_bytes());
        let msg = parse_nifti_bytes(&path, &bytes).unwrap_err().to_string();
        assert!(msg.contains("truncated"), "{msg}");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// Found by the hostile-input probe (issue #21): a multi-member gzip (bgzip, `cat a.gz b.gz`)
    /// was refused as truncated.
    #[test]
    fn a_multi_member_gzip_reads_as_one_stream() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("v.nii");
        let dims = [4, 3, 2];
        write_nifti(&plain, dims, &sample(dims), false, None, [1.0; 3], IDENTITY).unwrap();
        let bytes = std::fs::read(&plain).unwrap();
        let (a, b) = bytes.split_at(200);
        let mut members = gzip(a);
        members.extend(gzip(b));
        let path = dir.path().join("members.nii.gz");
        std::fs::write(&path, members).unwrap();
        let v = read_nifti(&path).unwrap();
        assert_eq!(v.data, sample(dims));
    }

    /// Found by the probe: a 2 MB file inflating 2 GB of padding took 2.18 GB of memory. Only
    /// what the header declares is inflated; the padding is ignored (as nibabel does).
    #[test]
    fn inflation_stops_at_the_size_the_header_declares() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("v.nii");
        let dims = [4, 3, 2];
        write_nifti(&plain, dims, &sample(dims), false, None, [1.0; 3], IDENTITY).unwrap();
        let mut bytes = std::fs::read(&plain).unwrap();
        let declared = bytes.len();
        bytes.resize(declared + (64 << 20), 0); // 64 MiB of padding
        let packed = gzip(&bytes);
        assert!(packed.len() < 1 << 20);
        let path = dir.path().join("padded.nii.gz");
        std::fs::write(&path, &packed).unwrap();
        let inflated = gunzip_nifti(&path, &packed).unwrap();
        assert_eq!(inflated.len(), declared, "the padding is not inflated");
        assert_eq!(read_nifti(&path).unwrap().data, sample(dims));
    }

    /// Found by the probe: a NaN pixdim read as 1 mm.
    #[test]
    fn a_non_finite_voxel_size_is_an_error_naming_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nii");
        write_nifti(&path, [2, 2, 2], &[1.0; 8], false, None, [1.0; 3], IDENTITY).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[80..84].copy_from_slice(&f32::NAN.to_le_bytes()); // pixdim[1]
        let msg = parse_nifti_bytes(&path, &bytes).unwrap_err().to_string();
        assert!(msg.contains("pixdim[1] = NaN"), "{msg}");
    }

    #[test]
    fn header_dims_are_in_their_fields_and_channels_go_to_dim4() {
        // dim[] is 8 int16 at bytes 40..56, intent_p1 a float at 56 (NIfTI-1 standard).
        let dir = tempfile::tempdir().unwrap();
        let field = |bytes: &[u8], at: usize| i16::from_le_bytes([bytes[at], bytes[at + 1]]);
        let path = dir.path().join("v.nii");
        write_nifti(
            &path,
            [3, 2, 2],
            &sample([3, 2, 2]),
            true,
            None,
            [1.0; 3],
            IDENTITY,
        )
        .unwrap();
        let b = std::fs::read(&path).unwrap();
        let dim: Vec<i16> = (0..8).map(|i| field(&b, 40 + 2 * i)).collect();
        assert_eq!(dim, [3, 3, 2, 2, 1, 1, 1, 1]);
        assert_eq!(&b[56..60], &[0; 4], "intent_p1 untouched");

        let path = dir.path().join("p.nii");
        let data: Vec<f32> = (0..24).map(|i| i as f32 / 24.0).collect();
        write_nifti_channels(&path, [3, 2, 2], 2, &data, false, None, [1.0; 3], IDENTITY).unwrap();
        let b = std::fs::read(&path).unwrap();
        let dim: Vec<i16> = (0..8).map(|i| field(&b, 40 + 2 * i)).collect();
        assert_eq!(dim, [4, 3, 2, 2, 2, 1, 1, 1]);
        let body: Vec<f32> = b[352..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(body, data);
        // ctrcl reads 3D volumes only, and says so.
        let err = read_nifti(&path).unwrap_err().to_string();
        assert!(err.contains("p.nii") && err.contains("dim[4] = 2"), "{err}");
    }

    #[test]
    fn zero_vox_offset_with_data_at_the_end_is_read_from_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.nii");
        let dims = [3, 2, 2];
        write_nifti(&path, dims, &sample(dims), true, None, [1.0; 3], IDENTITY).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[108..112].copy_from_slice(&0f32.to_le_bytes());
        // Pad 16 extension bytes between header and data: only "data at the end" finds them.
        let data = bytes.split_off(352);
        bytes.extend_from_slice(&[0u8; 16]);
        bytes.extend_from_slice(&data);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_nifti(&path).unwrap().data, sample(dims));
    }

    #[test]
    fn nifti2_files_read_as_nibabel_reads_them() {
        // scripts/reference/nifti2_fixtures.py: nibabel 5.4.2 wrote both files (int16 with its own
        // slope and intercept, an oblique sform; little- and big-endian) and recorded what it
        // reads back. Values compare within f32 rounding of slope·x + intercept.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nifti2");
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        for order in ["le", "be"] {
            let e = &expected[order];
            let v = read_nifti(&dir.join(format!("int16_{order}.nii.gz"))).unwrap();
            let dims: Vec<usize> = e["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(v.dims.to_vec(), dims, "{order}");
            assert_eq!(v.dtype, NiftiType::I16);
            let data: Vec<f32> = e["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_f64().unwrap() as f32)
                .collect();
            for (g, w) in v.data.iter().zip(&data) {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{order}: {g} vs {w}"
                );
            }
            for (got, want) in v.spacing.iter().zip(e["spacing"].as_array().unwrap()) {
                assert!(
                    (*got as f64 - want.as_f64().unwrap()).abs() < 1e-6,
                    "{order}"
                );
            }
            // f64 geometry kept to f32 precision.
            for (row, want) in v.affine.iter().zip(e["affine"].as_array().unwrap()) {
                for (g, w) in row.iter().zip(want.as_array().unwrap()) {
                    assert!(
                        (g - w.as_f64().unwrap()).abs() < 1e-5,
                        "{order}: {:?}",
                        v.affine
                    );
                }
            }
        }
        // A truncated NIfTI-2 file names itself.
        let bytes = {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(std::fs::File::open(dir.join("int16_le.nii.gz")).unwrap())
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let tmp = tempfile::tempdir().unwrap();
        let cut = tmp.path().join("cut2.nii");
        std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
        let err = read_nifti(&cut).unwrap_err().to_string();
        assert!(
            err.contains("cut2.nii") && err.contains("truncated"),
            "{err}"
        );
    }

    #[test]
    fn truncated_file_is_a_clear_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cut.nii");
        let dims = [8, 8, 8];
        write_nifti(&path, dims, &sample(dims), false, None, [1.0; 3], IDENTITY).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..1000]).unwrap();
        let msg = read_nifti(&path).unwrap_err().to_string();
        assert!(
            msg.contains("cut.nii") && msg.contains("truncated"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_and_missing_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.nii.gz");
        std::fs::write(&path, [0x1f, 0x8b, 1, 2, 3]).unwrap();
        assert!(read_nifti(&path).unwrap_err().to_string().contains("gzip"));
        let missing = dir.path().join("none.nii");
        assert!(read_nifti(&missing)
            .unwrap_err()
            .to_string()
            .contains("none.nii"));
    }

    #[test]
    fn zero_slope_means_one_and_intercept_applies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.nii");
        let dims = [2, 2, 1];
        write_nifti(
            &path,
            dims,
            &[1.0, 2.0, 3.0, 4.0],
            false,
            None,
            [1.0; 3],
            IDENTITY,
        )
        .unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[112..116].copy_from_slice(&0f32.to_le_bytes());
        bytes[116..120].copy_from_slice(&10f32.to_le_bytes());
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(
            read_nifti(&path).unwrap().data,
            vec![11.0, 12.0, 13.0, 14.0]
        );
    }
}

//! Inflating `.nii.gz` files: every gzip member, and no more than the NIfTI header declares.

use crate::error::{DataError, Result};
use flate2::read::MultiGzDecoder;
use std::io::Read;
use std::path::Path;

/// Bytes a data-at-the-end file (`vox_offset` 0, see `parse_nifti`) may hold between its header
/// and its voxels (extensions), beyond what the header declares.
const EXTENSION_ALLOWANCE: usize = 1 << 20;

/// Inflates a `.nii.gz`: every gzip member (bgzip and `cat a.gz b.gz` write several), and no
/// more than the header declares — a small file that inflates to gigabytes of padding costs
/// the declared size, not the padding (trailing bytes are ignored, as nibabel does).
pub(crate) fn gunzip_nifti(path: &Path, raw: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |e: std::io::Error| DataError::invalid(path, format!("corrupt gzip stream: {e}"));
    let mut decoder = MultiGzDecoder::new(raw);
    let mut out = Vec::new();
    (&mut decoder)
        .take(NIFTI2_HEADER_SIZE as u64)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    // An unreadable header is left to the parser, which names what is wrong with it.
    let Some((declared_end, data_at_end)) = declared_size(&out) else {
        return Ok(out);
    };
    let limit = if data_at_end {
        declared_end.saturating_add(EXTENSION_ALLOWANCE)
    } else {
        declared_end
    };
    let more = (limit.saturating_sub(out.len()) as u64).saturating_add(1);
    (&mut decoder)
        .take(more)
        .read_to_end(&mut out)
        .map_err(corrupt)?;
    if out.len() > limit {
        if data_at_end {
            return Err(DataError::invalid(
                path,
                format!("inflates to more than the {limit} bytes its header declares (vox_offset 0 with data at the end)"),
            ));
        }
        out.truncate(limit);
    }
    Ok(out)
}

/// [`gunzip_nifti`] for the fuzzers (`crate::fuzzing`).
#[doc(hidden)]
pub(crate) fn gunzip_for_fuzzing(path: &Path, raw: &[u8]) -> Result<Vec<u8>> {
    gunzip_nifti(path, raw)
}

/// Size of a NIfTI-2 header.
const NIFTI2_HEADER_SIZE: usize = 540;
/// A NIfTI-1 header's size in bytes (the reader, `crate::nifti`, takes it from here).
pub(crate) const NIFTI1_HEADER_SIZE: usize = 348;

/// The file size a NIfTI-1/2 header declares (`vox_offset` + voxel bytes over all dims), and
/// whether its data sit at the end instead (`vox_offset` 0); `None` when the header is not
/// readable (too short, a bad `sizeof_hdr`, negative sizes).
fn declared_size(head: &[u8]) -> Option<(usize, bool)> {
    let le4 = i32::from_le_bytes(head.get(0..4)?.try_into().ok()?);
    let be4 = i32::from_be_bytes(head.get(0..4)?.try_into().ok()?);
    let (two, big) = match (le4, be4) {
        (348, _) => (false, false),
        (_, 348) => (false, true),
        (540, _) => (true, false),
        (_, 540) => (true, true),
        _ => return None,
    };
    let int = |at: usize, n: usize| -> Option<i64> {
        let mut b = head.get(at..at + n)?.to_vec();
        if big {
            b.reverse();
        }
        Some(match n {
            2 => i64::from(i16::from_le_bytes(b.try_into().ok()?)),
            _ => i64::from_le_bytes(b.try_into().ok()?),
        })
    };
    let (ndim, dim, bitpix, offset, header) = if two {
        let dim = |i: usize| int(16 + 8 * i, 8);
        (
            dim(0)?,
            (1..8).map(dim).collect::<Option<Vec<_>>>()?,
            int(14, 2)?,
            int(168, 8)? as f64,
            NIFTI2_HEADER_SIZE,
        )
    } else {
        let dim = |i: usize| int(40 + 2 * i, 2);
        let mut f = head.get(108..112)?.to_vec();
        if big {
            f.reverse();
        }
        let offset = f64::from(f32::from_le_bytes(f.try_into().ok()?));
        (
            dim(0)?,
            (1..8).map(dim).collect::<Option<Vec<_>>>()?,
            int(72, 2)?,
            offset,
            NIFTI1_HEADER_SIZE,
        )
    };
    if !(1..=7).contains(&ndim) || bitpix <= 0 || !offset.is_finite() || offset < 0.0 {
        return None;
    }
    let mut bits = bitpix as u128;
    for &d in &dim[..ndim as usize] {
        bits = bits.checked_mul(u128::try_from(d).ok()?)?;
    }
    let voxels = usize::try_from(bits.div_ceil(8)).ok()?;
    let data_at_end = (offset as usize) < header;
    let start = if data_at_end {
        header + 4
    } else {
        offset as usize
    };
    Some((start.checked_add(voxels)?, data_at_end))
}

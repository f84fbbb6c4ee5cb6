//! 2D image files: PNG/JPEG photographs and slices read as intensities for the network, PNG label
//! maps read as stored (grey values or palette indices, never colour-converted), and PNG output
//! (label maps, RGB overlays) written atomically.

use crate::error::{write_atomic, DataError, Result};
use std::path::Path;

/// Extensions read as 2D images (lower case).
const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

/// A decoded 2D image as single-channel intensities.
#[derive(Debug, Clone)]
pub struct Image2d {
    pub h: usize,
    pub w: usize,
    /// Colour channels stored in the file (1 grey, 3 RGB; alpha not counted).
    pub stored_channels: usize,
    /// Row-major `h × w` intensities in [0, 1]: the grey value, or the luma of a colour image
    /// (ITU-R BT.601 weights, as PIL's `convert("L")`).
    pub data: Vec<f32>,
}

/// The case id of a 2D image file (name without its extension), or `None` if it is not one.
pub fn image_stem(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    if !IMAGE_EXTENSIONS.contains(&ext.as_str()) {
        return None;
    }
    Some(path.file_stem()?.to_string_lossy().into_owned())
}

/// Whether `path` names a TIFF file.
pub fn is_tiff(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tif") || e.eq_ignore_ascii_case("tiff"))
}

/// A 2D TIFF as stored: grey or RGB samples of 8 or 16 bits (or 32-bit float RGB).
#[derive(Debug, Clone)]
pub struct TiffSamples {
    pub h: usize,
    pub w: usize,
    pub channels: usize,
    /// NumPy name of the stored sample type.
    pub dtype: &'static str,
    /// Row-major `h × w × channels`.
    pub values: Vec<f64>,
}

/// Reads a TIFF's first image without colour transformation (`image`'s pure-Rust TIFF decoder).
pub fn read_tiff_samples(path: &Path) -> Result<TiffSamples> {
    use image::DynamicImage as D;
    let img = decode_image(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    fn samples<T: Into<f64>>(raw: Vec<T>) -> Vec<f64> {
        raw.into_iter().map(Into::into).collect()
    }
    let (channels, dtype, values): (usize, &'static str, Vec<f64>) = match img {
        D::ImageLuma8(b) => (1, "uint8", samples(b.into_raw())),
        D::ImageLuma16(b) => (1, "uint16", samples(b.into_raw())),
        D::ImageRgb8(b) => (3, "uint8", samples(b.into_raw())),
        D::ImageRgb16(b) => (3, "uint16", samples(b.into_raw())),
        D::ImageRgb32F(b) => (3, "float32", samples(b.into_raw())),
        other => {
            return Err(DataError::invalid(
                path,
                format!(
                    "TIFF colour type {:?} is not supported (grey or RGB)",
                    other.color()
                ),
            ))
        }
    };
    Ok(TiffSamples {
        h,
        w,
        channels,
        dtype,
        values,
    })
}

/// Whether `path` names a PNG file.
pub fn is_png(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Whether the file starts with `magic`.
fn file_starts_with(path: &Path, magic: &[u8]) -> bool {
    use std::io::Read;
    let mut head = vec![0u8; magic.len()];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && head == magic
}

/// Whether the file's content is PNG (its 8-byte signature), whatever its name.
pub fn has_png_signature(path: &Path) -> bool {
    file_starts_with(path, b"\x89PNG\r\n\x1a\n")
}

/// Reads a PNG/JPEG image as intensities.
pub fn read_image_2d(path: &Path) -> Result<Image2d> {
    let img = decode_image(path)?;
    let color = img.color();
    let stored_channels = color.channel_count() as usize - usize::from(color.has_alpha());
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(DataError::invalid(path, "image has no pixels"));
    }
    // BT.601 weights by hand: `image`'s own luma uses Rec. 709, PIL and torchvision use 601.
    let data = img
        .to_rgb32f()
        .into_raw()
        .chunks_exact(3)
        .map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2])
        .collect();
    Ok(Image2d {
        h,
        w,
        stored_channels,
        data,
    })
}

/// Decodes a PNG/JPEG file (format guessed from the content).
pub fn decode_image(path: &Path) -> Result<image::DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| DataError::io(path, e))?
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?
        .decode()
        .map_err(|e| DataError::invalid(path, format!("cannot decode image: {e}")))
}

/// Reads a PNG/JPEG image as three channel planes (R, G, B in [0, 1]), channel-major:
/// `[3, h, w]`; grey images repeat their value in the three planes.
pub fn read_rgb_planes(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let img = decode_image(path)?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(DataError::invalid(path, "image has no pixels"));
    }
    let rgb = img.to_rgb32f().into_raw();
    let mut planes = vec![0.0f32; 3 * h * w];
    for (i, p) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planes[c * h * w + i] = p[c];
        }
    }
    Ok((h, w, planes))
}

/// A PNG label map.
#[derive(Debug, Clone)]
pub struct LabelPng {
    pub h: usize,
    pub w: usize,
    /// Row-major `h × w` labels.
    pub labels: Vec<u8>,
    /// The file held only 0 and 255 (a binary mask as image editors save it), read as 0 and 1.
    pub binary_255: bool,
}

/// The samples of a PNG exactly as stored (palette indices, not colours; 1–16-bit values).
#[derive(Debug, Clone)]
pub struct PngSamples {
    pub h: usize,
    pub w: usize,
    /// Samples per pixel (1 grey or palette, 2 grey + alpha, 3 RGB, 4 RGBA).
    pub channels: usize,
    pub bit_depth: usize,
    pub indexed: bool,
    /// Row-major `h × w × channels`.
    pub values: Vec<u16>,
}

/// Reads a PNG without any colour transformation.
pub fn read_png_samples(path: &Path) -> Result<PngSamples> {
    if !has_png_signature(path) && path.is_file() {
        // A JPEG saved under a .png name is decoded by `predict` (by content) but cannot be a
        // label map: JPEG's compression changes values.
        let what = if file_starts_with(path, &[0xFF, 0xD8, 0xFF]) {
            "a JPEG file"
        } else {
            "not a PNG file"
        };
        return Err(DataError::invalid(
            path,
            format!("is {what} despite its .png name; label maps must be real (lossless) PNG files: convert it, or rename it to its real extension"),
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let bad = |e: png::DecodingError| DataError::invalid(path, format!("not a valid PNG: {e}"));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(bad)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DataError::invalid(path, "PNG too large"))?;
    let mut buf = vec![0; size];
    let frame = reader.next_frame(&mut buf).map_err(bad)?;
    let (w, h) = (frame.width as usize, frame.height as usize);
    let bits = frame.bit_depth as usize;
    let channels = frame.color_type.samples();
    let mut values: Vec<u16> = Vec::with_capacity(w * h * channels);
    for row in buf[..frame.line_size * h].chunks(frame.line_size) {
        for i in 0..w * channels {
            values.push(match bits {
                16 => u16::from_be_bytes([row[2 * i], row[2 * i + 1]]),
                8 => u16::from(row[i]),
                _ => {
                    let per_byte = 8 / bits;
                    let shift = 8 - bits * (i % per_byte + 1);
                    u16::from((row[i / per_byte] >> shift) & ((1 << bits) - 1) as u8)
                }
            });
        }
    }
    Ok(PngSamples {
        h,
        w,
        channels,
        bit_depth: bits,
        indexed: frame.color_type == png::ColorType::Indexed,
        values,
    })
}

/// Reads a PNG label map: 1–16-bit grey values or palette indices as stored; an RGB(A) file only
/// if it is grey (R = G = B). Values above 255 are an error; a 0/255 mask becomes 0/1.
pub fn read_label_png(path: &Path) -> Result<LabelPng> {
    let png = read_png_samples(path)?;
    let (h, w, c) = (png.h, png.w, png.channels);
    let mut values: Vec<u16> = Vec::with_capacity(w * h);
    for (i, px) in png.values.chunks(c).enumerate() {
        // Grey (+ alpha) or palette: the first sample; RGB(A): only when grey.
        if c >= 3 && (px[0] != px[1] || px[1] != px[2]) {
            return Err(DataError::invalid(
                path,
                format!(
                    "colour label map: pixel ({}, {}) is RGB ({}, {}, {}); \
                     save class indices as a grey or palette PNG",
                    i % w,
                    i / w,
                    px[0],
                    px[1],
                    px[2]
                ),
            ));
        }
        values.push(px[0]);
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, &v)| v > 255) {
        return Err(DataError::invalid(
            path,
            format!(
                "pixel ({}, {}) holds label {v}; ctrcl supports labels 0..255",
                i % w,
                i / w
            ),
        ));
    }
    let binary_255 = values.contains(&255) && values.iter().all(|&v| v == 0 || v == 255);
    let labels = values
        .into_iter()
        .map(|v| {
            if binary_255 {
                u8::from(v == 255)
            } else {
                v as u8
            }
        })
        .collect();
    Ok(LabelPng {
        h,
        w,
        labels,
        binary_255,
    })
}

fn encode_png(path: &Path, pixels: &[u8], h: usize, w: usize, color: png::ColorType) -> Result<()> {
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w as u32, h as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let err = |e: png::EncodingError| DataError::invalid(path, format!("PNG encoding: {e}"));
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(pixels).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    write_atomic(path, &bytes)
}

/// Writes a row-major `h × w` label map as an 8-bit grey PNG (values = class indices), atomically.
pub fn write_label_png(path: &Path, labels: &[u8], h: usize, w: usize) -> Result<()> {
    assert_eq!(labels.len(), h * w, "label map and shape disagree");
    encode_png(path, labels, h, w, png::ColorType::Grayscale)
}

/// Writes a row-major `h × w` RGB image (`3·h·w` bytes) as PNG, atomically.
pub fn write_rgb_png(path: &Path, rgb: &[u8], h: usize, w: usize) -> Result<()> {
    assert_eq!(rgb.len(), 3 * h * w, "RGB buffer and shape disagree");
    encode_png(path, rgb, h, w, png::ColorType::Rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(
        path: &Path,
        data: &[u8],
        w: u32,
        h: u32,
        color: png::ColorType,
        depth: png::BitDepth,
    ) {
        let file = std::fs::File::create(path).unwrap();
        let mut enc = png::Encoder::new(file, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        if color == png::ColorType::Indexed {
            // A palette whose colours say nothing about the indices: indices must win.
            enc.set_palette(vec![255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9]);
        }
        let mut writer = enc.write_header().unwrap();
        writer.write_image_data(data).unwrap();
    }

    #[test]
    fn label_maps_round_trip_and_palette_indices_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let labels: Vec<u8> = (0..12).map(|i| (i % 4) as u8).collect();
        let grey = dir.path().join("grey.png");
        write_label_png(&grey, &labels, 3, 4).unwrap();
        let back = read_label_png(&grey).unwrap();
        assert_eq!((back.h, back.w, &back.labels), (3, 4, &labels));
        assert!(!back.binary_255);

        // 2-bit palette: four indices packed per byte, rows padded to whole bytes.
        let packed = [0b00_01_10_11u8, 0b11_10_01_00, 0b01_01_01_01];
        let pal = dir.path().join("pal.png");
        encode(
            &pal,
            &packed,
            4,
            3,
            png::ColorType::Indexed,
            png::BitDepth::Two,
        );
        let back = read_label_png(&pal).unwrap();
        assert_eq!(back.labels, vec![0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 1, 1]);

        // 16-bit grey, big-endian samples.
        let wide = dir.path().join("wide.png");
        encode(
            &wide,
            &[0, 7, 0, 200],
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
        );
        assert_eq!(read_label_png(&wide).unwrap().labels, vec![7, 200]);
    }

    #[test]
    fn binary_255_masks_read_as_0_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mask.png");
        write_label_png(&path, &[0, 255, 255, 0], 2, 2).unwrap();
        let back = read_label_png(&path).unwrap();
        assert!(back.binary_255);
        assert_eq!(back.labels, vec![0, 1, 1, 0]);
    }

    #[test]
    fn bad_label_pngs_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let colour = dir.path().join("colour.png");
        encode(
            &colour,
            &[10, 20, 30, 5, 5, 5],
            2,
            1,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
        );
        let err = read_label_png(&colour).unwrap_err().to_string();
        assert!(
            err.contains("colour.png") && err.contains("RGB (10, 20, 30)"),
            "{err}"
        );

        let big = dir.path().join("big.png");
        encode(
            &big,
            &[1, 44, 0, 1],
            2,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Sixteen,
        );
        let err = read_label_png(&big).unwrap_err().to_string();
        assert!(err.contains("big.png") && err.contains("300"), "{err}");

        let truncated = dir.path().join("truncated.png");
        write_label_png(&truncated, &[3; 64], 8, 8).unwrap();
        let bytes = std::fs::read(&truncated).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = read_label_png(&truncated).unwrap_err().to_string();
        assert!(err.contains("truncated.png"), "{err}");
    }

    #[test]
    fn colour_images_become_luma() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rgb.png");
        // Pure red and pure white.
        write_rgb_png(&path, &[255, 0, 0, 255, 255, 255], 1, 2).unwrap();
        let img = read_image_2d(&path).unwrap();
        assert_eq!((img.h, img.w, img.stored_channels), (1, 2, 3));
        // BT.601 luma of red is 0.299 (PIL: 76/255 = 0.298); white is 1.
        assert!((img.data[0] - 0.299).abs() < 0.01, "{:?}", img.data);
        assert!((img.data[1] - 1.0).abs() < 1e-6, "{:?}", img.data);
        let err = read_image_2d(&dir.path().join("missing.png"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.png"), "{err}");
    }
}

#[cfg(test)]
mod tiff_tests {
    use super::*;

    /// TIFFs written by tifffile (`scripts/reference/tiff_fixtures.py`): grey 16-bit (plain, and
    /// deflate big-endian), 8-bit labels, RGB — every sample exact.
    #[test]
    fn reads_what_tifffile_wrote() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiff");
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        for (name, e) in expected.as_object().unwrap() {
            let t = read_tiff_samples(&dir.join(name)).unwrap_or_else(|err| panic!("{err}"));
            let mut shape = vec![t.h, t.w];
            if t.channels > 1 {
                shape.push(t.channels);
            }
            assert_eq!(serde_json::json!(shape), e["shape"], "{name}");
            assert_eq!(t.dtype, e["dtype"].as_str().unwrap(), "{name}");
            let want: Vec<f64> = serde_json::from_value(e["values"].clone()).unwrap();
            assert_eq!(t.values, want, "{name}");
        }
        // The 8-bit label TIFF reads as a label map; a 16-bit one with values > 255 does not.
        let l = crate::labels::read_label_file(&dir.join("labels8.tif")).unwrap();
        assert_eq!(l.shape, vec![5, 6]);
        let msg = crate::labels::read_label_file(&dir.join("grey16.tif"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("grey16.tif") && msg.contains("not a label"),
            "{msg}"
        );
    }
}

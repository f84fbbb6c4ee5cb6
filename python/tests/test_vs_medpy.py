"""ctrcl_metrics against medpy 0.5 on a real label map (ICBM152's CSF/GM/WM, from `ctrcl data
prepare --source icbm152`): every binary metric of every class, and `evaluate`'s strict and
TransUNet conventions, on a prediction made by shifting the truth and blanking a block, with
anisotropic voxels. Agreement to 1e-9 relative (both compute in float64 from the same surface
voxels and exact Euclidean distance transforms; only summation order differs).

    pip install ./python medpy
    python python/tests/test_vs_medpy.py PREPARED/labelsTr/icbm152.nii.gz
"""
import math
import sys

import numpy as np
import SimpleITK as sitk
from medpy.metric import binary as medpy

import ctrcl_metrics as cm

truth = sitk.GetArrayFromImage(sitk.ReadImage(sys.argv[1])).astype(np.uint8)  # [z, y, x]
truth = truth[70:110]  # 40 axial slices through the ventricles: every class present
pred = np.roll(truth, (1, -2, 3), axis=(0, 1, 2))
pred[10:20, 60:120, 40:90] = 0
spacing = (2.5, 1.2, 0.9)
assert set(np.unique(truth)) == {0, 1, 2, 3}, np.unique(truth)


def close(a, b, what):
    assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), f"{what}: ctrcl {a} vs medpy {b}"


checked = 0
for c in (1, 2, 3):
    r, t = pred == c, truth == c
    close(cm.dc(r, t), medpy.dc(r, t), f"dc class {c}")
    close(cm.jc(r, t), medpy.jc(r, t), f"jc class {c}")
    for name in ("hd", "hd95", "asd", "assd"):
        ours = getattr(cm, name)(r, t, voxelspacing=spacing)
        theirs = getattr(medpy, name)(r, t, voxelspacing=spacing)
        close(ours, theirs, f"{name} class {c}")
        checked += 1

strict = cm.evaluate(pred, truth, num_classes=4, spacing=spacing, mode="strict")
for c in (1, 2, 3):
    r, t = pred == c, truth == c
    close(strict[c]["dice"], medpy.dc(r, t), f"evaluate dice {c}")
    close(strict[c]["jaccard"], medpy.jc(r, t), f"evaluate jaccard {c}")
    close(strict[c]["hd95"], medpy.hd95(r, t, voxelspacing=spacing), f"evaluate hd95 {c}")
    close(strict[c]["asd"], medpy.asd(r, t, voxelspacing=spacing), f"evaluate asd {c}")

# TransUNet's convention where a class is missing: empty prediction → 0, empty truth → 1 / 0.
empty = cm.evaluate(np.where(pred == 3, 0, pred), truth, num_classes=4)
assert empty[3] == {"dice": 0.0, "jaccard": 0.0, "hd95": 0.0, "asd": 0.0}, empty[3]
only_pred = cm.evaluate(pred, np.where(truth == 3, 0, truth), num_classes=4)
assert only_pred[3]["dice"] == 1.0 and only_pred[3]["hd95"] == 0.0, only_pred[3]
assert math.isnan(cm.evaluate(pred, np.where(truth == 3, 0, truth), 4, mode="strict")[3]["hd95"])

# Bad input is a clear error, as medpy's for empty masks.
for bad, error in (
    (lambda: cm.hd95(pred == 9, truth == 1), RuntimeError),
    (lambda: cm.hd95(pred == 1, truth == 1, voxelspacing=(1, 0, 1)), ValueError),
    (lambda: cm.hd95(pred == 1, truth[:5] == 1), ValueError),
    (lambda: cm.evaluate(pred, truth, num_classes=3), ValueError),
):
    try:
        bad()
    except error:
        pass
    else:
        raise AssertionError(f"no {error.__name__}")
print(f"ctrcl_metrics agrees with medpy: {checked} distance metrics, 3 classes, evaluate strict and transunet")

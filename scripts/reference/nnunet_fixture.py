"""A tiny two-channel nnU-Net raw dataset (channel 0 "CT", channel 1 "T2") written with nibabel
5.4.2, and the intensities nnU-Net's normalisation gives (CTNormalization with the fingerprint of
the training cases' foreground: clip to the 0.5/99.5 percentiles, z-score with its mean and std;
ZScoreNormalization per image for T2), computed here with numpy:
crates/ctrcl-data/tests/data/layouts/nnunet/ + expected_normalised.json
({case: [[first 6 values of channel 0], [first 6 of channel 1]]}, x-fastest order).

    /tmp/fx/bin/python scripts/reference/nnunet_fixture.py
"""
import json
import os

import nibabel as nib
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data",
                   "layouts", "nnunet")
rng = np.random.default_rng(21)
SHAPE = (6, 5, 3)  # X, Y, Z
AFFINE = np.diag([0.8, 0.8, 2.5, 1.0])


def save(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)


def main():
    cases = {"case_000": "Tr", "case_001": "Tr", "case_002": "Ts"}
    data = {}
    for case, part in cases.items():
        ct = rng.normal(40, 300, size=SHAPE).astype(np.float32)
        t2 = rng.normal(500, 80, size=SHAPE).astype(np.float32)
        lab = (rng.random(SHAPE) > 0.6).astype(np.uint8) * rng.integers(1, 3, size=SHAPE).astype(np.uint8)
        save(os.path.join(OUT, f"images{part}", f"{case}_0000.nii.gz"), ct)
        save(os.path.join(OUT, f"images{part}", f"{case}_0001.nii.gz"), t2)
        save(os.path.join(OUT, f"labels{part}", f"{case}.nii.gz"), lab)
        data[case] = (ct, t2, lab)
    with open(os.path.join(OUT, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT", "1": "T2"},
                   "labels": {"background": 0, "organ": 1, "lesion": 2},
                   "numTraining": 2, "file_ending": ".nii.gz"}, f, indent=1)
    with open(os.path.join(OUT, "ctrcl_split.json"), "w") as f:
        json.dump({"train": ["case_000"], "val": ["case_001"], "test": ["case_002"]}, f)
    # nnU-Net's CT fingerprint: foreground voxels of the training cases only.
    fg = np.concatenate([data[c][0][data[c][2] > 0] for c in ["case_000"]]).astype(np.float64)
    lo, hi = np.percentile(fg, 0.5), np.percentile(fg, 99.5)
    mean, std = fg.mean(), fg.std()
    expected = {}
    for case, (ct, t2, _) in data.items():
        ct_n = (np.clip(ct.astype(np.float64), lo, hi) - mean) / max(std, 1e-8)
        t2_n = (t2 - t2.astype(np.float64).mean()) / t2.astype(np.float64).std()
        expected[case] = [ct_n.ravel(order="F")[:6].tolist(), t2_n.ravel(order="F")[:6].tolist()]
    with open(os.path.join(OUT, "..", "expected_normalised.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    main()

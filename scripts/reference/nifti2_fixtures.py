#!/usr/bin/env python3
"""NIfTI-2 files written by nibabel (float data stored as int16 with a slope and intercept, an
oblique sform, little- and big-endian), with the values nibabel reads back, for ctrcl-data's reader
test (crates/ctrcl-data/tests/data/nifti2/). Run from the repository root:

    pip install numpy nibabel==5.4.2 && python3 scripts/reference/nifti2_fixtures.py
"""
import json
import os

import nibabel as nib
import numpy as np

out = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-data/tests/data/nifti2")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
# Float values stored as int16: nibabel picks a slope and intercept to scale them.
data = rng.normal(30.0, 80.0, size=(5, 4, 3))  # (X, Y, Z)
affine = np.array([[-0.8, 0.0, 0.1, 12.5], [0.0, 0.9, 0.0, -40.0], [0.05, 0.0, 2.5, 7.0], [0, 0, 0, 1]])
expected = {}
for name, byteorder in (("le", "<"), ("be", ">")):
    header = nib.Nifti2Header().as_byteswapped(byteorder) if byteorder == ">" else nib.Nifti2Header()
    img = nib.Nifti2Image(data, affine, header=header)
    img.set_data_dtype(np.int16)
    img.header.set_zooms((0.8, 0.9, 2.5))
    img.set_sform(affine, code=2)
    path = os.path.join(out, f"int16_{name}.nii.gz")
    nib.save(img, path)
    back = nib.load(path)
    assert back.header.sizeof_hdr == 540
    slope, inter = back.dataobj.slope, back.dataobj.inter
    assert slope != 1.0, "the fixture must exercise scaling"
    print(name, "slope", slope, "inter", inter)
    expected[name] = {
        "dims": list(back.shape),
        "spacing": [float(z) for z in back.header.get_zooms()],
        "affine": back.affine[:3].tolist(),
        # x fastest, as NIfTI stores voxels.
        "data": back.get_fdata().ravel(order="F").tolist(),
        "byteorder": back.header.endianness,
    }
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f)
print("wrote", sorted(os.listdir(out)))

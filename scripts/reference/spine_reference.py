"""Reference values for `ctrcl data fetch --source spine` (TPTBox 1.1.0's sample CT and MR spine
crops with vertebra and sub-region labels), read with nibabel:
crates/ctrcl-data/tests/data/spine/expected.json — grid, voxel size, axis codes (aff2axcodes),
stored dtype, image min/max, and the voxel count of every label value.

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install numpy nibabel==5.4.2
    ctrcl data fetch --source spine
    /tmp/fx/bin/python scripts/reference/spine_reference.py ~/.cache/ctrcl/spine
"""
import glob
import json
import os
import sys

import nibabel as nib
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data",
                   "spine", "expected.json")


def main(root):
    out = {}
    for f in sorted(glob.glob(os.path.join(root, "*.nii.gz"))):
        img = nib.load(f)
        d = np.asanyarray(img.dataobj)
        e = {
            "dims": list(d.shape),
            "spacing": [float(z) for z in img.header.get_zooms()],
            "axcodes": "".join(nib.aff2axcodes(img.affine)),
            "dtype": str(d.dtype),
        }
        if "_msk" in f:
            values, counts = np.unique(d, return_counts=True)
            e["counts"] = {str(int(v)): int(c) for v, c in zip(values, counts)}
        else:
            e["min"], e["max"] = float(d.min()), float(d.max())
        out[os.path.basename(f)] = e
    with open(OUT, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])

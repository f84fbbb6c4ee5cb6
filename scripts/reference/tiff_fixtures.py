"""Tiny TIFFs written by tifffile 2026.3.3 (uint16 grey like stardist's img2d.tif, uint8 labels
like its mask2d.tif after relabelling, RGB uint8, deflate-compressed and uncompressed, big-endian)
and their arrays: crates/ctrcl-data/tests/data/tiff/expected.json
({file: {"shape", "dtype", "values" (row-major)}}).

    /tmp/fx/bin/pip install numpy tifffile==2026.3.3 && /tmp/fx/bin/python scripts/reference/tiff_fixtures.py
"""
import json
import os

import numpy as np
import tifffile

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data", "tiff")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(13)
arrays = {
    "grey16.tif": (rng.integers(0, 65535, size=(6, 5)).astype(np.uint16), {}),
    "grey16_deflate_be.tif": (rng.integers(0, 4000, size=(7, 4)).astype(">u2"), {"compression": "zlib"}),
    "labels8.tif": (rng.integers(0, 3, size=(5, 6)).astype(np.uint8), {"compression": "zlib"}),
    "rgb8.tif": (rng.integers(0, 255, size=(4, 3, 3)).astype(np.uint8), {"photometric": "rgb"}),
}
expected = {}
for name, (a, kw) in arrays.items():
    tifffile.imwrite(os.path.join(OUT, name), a, **kw)
    back = tifffile.imread(os.path.join(OUT, name))
    assert (back == a).all()
    expected[name] = {"shape": list(a.shape), "dtype": a.dtype.newbyteorder("=").name,
                      "values": [float(v) for v in a.ravel()]}
json.dump(expected, open(os.path.join(OUT, "expected.json"), "w"))

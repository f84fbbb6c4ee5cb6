"""Reference for ctrcl-data's `resize_spline3` (TransUNet's image resize): scipy 1.17.1
`ndimage.zoom(a, (oh/h, ow/w), order=3)` (cubic B-spline, mirror prefilter, corner-aligned
coordinates) on small random images: crates/ctrcl-data/tests/data/zoom/expected.json
([{"h", "w", "input", "oh", "ow", "output"}], row-major).

    /tmp/fx/bin/pip install numpy scipy && /tmp/fx/bin/python scripts/reference/zoom_reference.py
"""
import json
import os

import numpy as np
import scipy.ndimage as nd

rng = np.random.default_rng(0)
cases = []
for h, w, oh, ow in [(9, 7, 5, 4), (12, 12, 20, 20), (10, 6, 10, 6), (16, 16, 7, 7), (5, 8, 14, 3)]:
    a = rng.random((h, w)).astype(np.float32)
    out = nd.zoom(a.astype(np.float64), (oh / h, ow / w), order=3)
    assert out.shape == (oh, ow), out.shape
    cases.append({"h": h, "w": w, "input": a.ravel().tolist(), "oh": oh, "ow": ow,
                  "output": out.ravel().tolist()})
path = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data",
                    "zoom", "expected.json")
json.dump(cases, open(path, "w"))

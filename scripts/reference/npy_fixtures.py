#!/usr/bin/env python3
"""Small .npy files written by NumPy itself, for ctrcl-data's reader tests
(crates/ctrcl-data/tests/data/npy/). Run from the repository root: python3 scripts/reference/npy_fixtures.py"""
import os

import numpy as np

out = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-data/tests/data/npy")
os.makedirs(out, exist_ok=True)
np.save(os.path.join(out, "int16_fortran_2x3.npy"), np.asfortranarray(np.array([[-3, 0, 7], [1000, -32768, 5]], np.int16)))
np.save(os.path.join(out, "float64_be_3.npy"), np.array([0.5, -2.25, 1e300], ">f8"))
np.save(os.path.join(out, "uint8_2x2x2.npy"), (np.arange(8, dtype=np.uint8) * 30).reshape(2, 2, 2))
np.save(os.path.join(out, "float16_4.npy"), np.array([1.0, -0.5, 65504.0, 6.0975551605224609375e-05], np.float16))
for f in sorted(os.listdir(out)):
    print(f, os.path.getsize(os.path.join(out, f)), "bytes")

"""Writes tiny NRRD and MRC fixtures with the reference writers (pynrrd 1.1.3, mrcfile 1.5.4) and
the values ctrcl must read from them: crates/ctrcl-data/tests/data/{nrrd,mrc}/expected.json.

Each expected entry holds the grid in ctrcl's X, Y, Z order, the voxel values x fastest, the voxel
size and the voxel -> RAS affine (3 rows of 4). The geometry is computed here from the header
fields written, following each format's definition (NRRD: columns of `space directions`, sign
flipped from LPS to RAS; MRC: cella / m on the diagonal, origin as translation).

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install numpy==2.4.6 pynrrd==1.1.3 mrcfile==1.5.4
    /tmp/fx/bin/python scripts/reference/nrrd_mrc_fixtures.py
"""
import json
import os

import mrcfile
import nrrd
import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data")


def entry(xyz, spacing, affine):
    return {
        "dims": list(xyz.shape) + [1] * (3 - xyz.ndim),
        "data": [float(v) for v in xyz.flatten(order="F")],
        "spacing": [float(s) for s in spacing],
        "affine": [[float(v) for v in row] for row in affine],
    }


def nrrd_fixtures():
    out = os.path.join(ROOT, "nrrd")
    os.makedirs(out, exist_ok=True)
    expected = {}
    rng = np.random.default_rng(7)

    # Slicer-like: int16 CT, gzip, LPS with negative x/y directions and an origin.
    ct = rng.integers(-1024, 2000, size=(5, 4, 3)).astype(np.int16)
    dirs = np.array([[-0.8, 0, 0], [0, -0.8, 0], [0, 0, 2.5]])
    origin = np.array([10.0, -20.0, 30.0])
    nrrd.write(os.path.join(out, "ct_lps_gzip.nrrd"), ct, {
        "space": "left-posterior-superior", "space directions": dirs,
        "space origin": origin, "encoding": "gzip", "kinds": ["domain"] * 3,
    })
    flip = np.array([-1.0, -1.0, 1.0])
    affine = np.zeros((3, 4))
    affine[:, :3] = (dirs * flip).T  # columns are the axes' direction vectors, in RAS
    affine[:, 3] = origin * flip
    expected["ct_lps_gzip.nrrd"] = entry(ct, [0.8, 0.8, 2.5], affine)

    # Big-endian float64, raw, RAS space with an oblique in-plane direction.
    vol = rng.normal(size=(3, 3, 2))
    dirs = np.array([[0.6, 0.8, 0], [-0.8, 0.6, 0], [0, 0, 1.5]])
    nrrd.write(os.path.join(out, "float_be_raw.nrrd"), vol.astype(">f8"), {
        "space": "right-anterior-superior", "space directions": dirs,
        "space origin": np.zeros(3), "encoding": "raw", "endian": "big",
    })
    affine = np.zeros((3, 4))
    affine[:, :3] = dirs.T
    expected["float_be_raw.nrrd"] = entry(vol, [1.0, 1.0, 1.5], affine)

    # 2D uint8 label image, ascii encoding, no space: per-axis spacings.
    lab = rng.integers(0, 4, size=(4, 3)).astype(np.uint8)
    nrrd.write(os.path.join(out, "labels_ascii.nrrd"), lab, {
        "encoding": "ascii", "spacings": [0.5, 2.0],
    })
    expected["labels_ascii.nrrd"] = entry(lab, [0.5, 2.0, 1.0],
                                          [[0.5, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 0]])

    # Detached header (.nhdr) + raw data file, uint16.
    det = rng.integers(0, 60000, size=(2, 3, 2)).astype(np.uint16)
    nrrd.write(os.path.join(out, "detached.nhdr"), det, {
        "encoding": "raw", "space": "left-posterior-superior",
        "space directions": np.eye(3), "space origin": np.zeros(3),
    }, detached_header=True)
    affine = np.zeros((3, 4))
    affine[:, :3] = np.diag([-1.0, -1.0, 1.0])
    expected["detached.nhdr"] = entry(det, [1, 1, 1], affine)

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


def mrc_fixtures():
    out = os.path.join(ROOT, "mrc")
    os.makedirs(out, exist_ok=True)
    expected = {}
    rng = np.random.default_rng(11)

    # float32 with a voxel size and an origin; mrcfile's data are indexed [section, row, column].
    zyx = rng.normal(size=(3, 4, 5)).astype(np.float32)
    with mrcfile.new(os.path.join(out, "float32.mrc"), overwrite=True) as m:
        m.set_data(zyx)
        m.voxel_size = (0.5, 0.75, 2.0)
        m.header.origin = (1.0, 2.0, 3.0)
    xyz = zyx.transpose(2, 1, 0)
    expected["float32.mrc"] = entry(xyz, [0.5, 0.75, 2.0],
                                    [[0.5, 0, 0, 1.0], [0, 0.75, 0, 2.0], [0, 0, 2.0, 3.0]])

    # uint16 labels, no voxel size (cella 0, as lits117), big-endian bytes.
    lab = rng.integers(0, 3, size=(2, 3, 4)).astype(np.uint16)
    with mrcfile.new(os.path.join(out, "labels_be.mrc"), overwrite=True) as m:
        m.set_data(lab.astype(">u2"))
    expected["labels_be.mrc"] = entry(lab.transpose(2, 1, 0), [1, 1, 1],
                                      [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])

    # int16 with columns along Z, rows along X, sections along Y (mapc, mapr, maps = 3, 1, 2):
    # stored index [s, r, c] is world (x = r, y = s, z = c).
    stored = rng.integers(-500, 500, size=(2, 3, 4)).astype(np.int16)
    with mrcfile.new(os.path.join(out, "permuted.mrc"), overwrite=True) as m:
        m.set_data(stored)
        m.header.mapc, m.header.mapr, m.header.maps = 3, 1, 2
    xyz = stored.transpose(1, 0, 2)  # [s, r, c] -> [r, s, c] = [x, y, z]
    expected["permuted.mrc"] = entry(xyz, [1, 1, 1],
                                     [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])

    # float16 (mode 12).
    half = (rng.normal(size=(2, 2, 3)) * 100).astype(np.float16)
    with mrcfile.new(os.path.join(out, "float16.mrc"), overwrite=True) as m:
        m.set_data(half)
    expected["float16.mrc"] = entry(half.astype(np.float32).transpose(2, 1, 0), [1, 1, 1],
                                    [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)


if __name__ == "__main__":
    nrrd_fixtures()
    mrc_fixtures()

"""Writes tiny HDF5 files with h5py (3.16.0, HDF5 1.14) in the layouts our users' datasets use,
and the arrays h5py reads back from them: crates/ctrcl-data/tests/data/hdf5/expected.json
({file: {dataset path: {"shape", "dtype", "data" (row-major)}}}).

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install numpy==2.4.6 h5py==3.16.0
    /tmp/fx/bin/python scripts/reference/hdf5_fixtures.py
"""
import json
import os

import h5py
import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "crates", "ctrcl-data", "tests", "data",
                   "hdf5")
rng = np.random.default_rng(3)


def synapse_volume(f):
    # Synapse test_vol_h5: root datasets "image" and "label", (Z, H, W), h5py defaults (contiguous).
    f.create_dataset("image", data=rng.normal(0.3, 0.2, size=(3, 6, 5)).astype(np.float32))
    f.create_dataset("label", data=rng.integers(0, 9, size=(3, 6, 5)).astype(np.float32))


def acdc_slice(f):
    # SSL4MIS ACDC slice: gzip-compressed datasets, plus a "scribble" dataset readers must ignore.
    f.create_dataset("image", data=rng.random((7, 9)).astype(np.float32), compression="gzip")
    f.create_dataset("label", data=rng.integers(0, 4, size=(7, 9)).astype(np.uint8),
                     compression="gzip")
    f.create_dataset("scribble", data=rng.integers(0, 5, size=(7, 9)).astype(np.uint8),
                     compression="gzip")


def chunked_filters(f):
    # Big-endian int16 in a nested group, chunks that do not divide the shape, gzip + shuffle +
    # fletcher32, and an attribute on the dataset.
    g = f.create_group("data")
    d = g.create_dataset("volume", data=rng.integers(-1000, 1000, size=(10, 7, 6)).astype(">i2"),
                         chunks=(3, 4, 4), compression="gzip", compression_opts=9, shuffle=True,
                         fletcher32=True)
    d.attrs["spacing"] = np.array([1.5, 0.7, 0.7])
    f.create_dataset("weights", data=rng.normal(size=(5,)).astype("<f8"))


def many_chunks(f):
    # 400 chunks: a two-level chunk B-tree (leaf nodes hold at most 2K = 64 chunks).
    f.create_dataset("labels", data=rng.integers(0, 60000, size=(40, 40)).astype(np.uint16),
                     chunks=(2, 2), compression="gzip")


def many_members(f):
    # 40 root datasets: several symbol-table nodes under the group B-tree.
    for i in range(40):
        f.create_dataset(f"slice_{i:02d}", data=np.full((2,), i, dtype=np.int32))


def latest(f):
    # libver="latest": superblock v3, v2 object headers, link messages, layout v4.
    f.create_dataset("image", data=rng.normal(size=(4, 3)).astype(np.float64))
    f.create_dataset("small", data=np.arange(6, dtype=np.int8).reshape(2, 3))  # compact-sized
    f.create_dataset("label", data=rng.integers(0, 3, size=(6, 5)).astype(np.uint8),
                     chunks=(6, 5), compression="gzip")  # one chunk: the single-chunk index
    g = f.create_group("nested")
    g.create_dataset("half", data=rng.normal(size=(3,)).astype(np.float16))


FILES = {
    "synapse_case0001.npy.h5": (synapse_volume, {}),
    "acdc_patient001_frame01_slice_1.h5": (acdc_slice, {}),
    "chunked_filters.h5": (chunked_filters, {}),
    "many_chunks.h5": (many_chunks, {}),
    "many_members.h5": (many_members, {}),
    "latest.h5": (latest, {"libver": "latest"}),
}


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}
    for name, (fill, kwargs) in FILES.items():
        path = os.path.join(OUT, name)
        with h5py.File(path, "w", **kwargs) as f:
            fill(f)
        arrays = {}
        with h5py.File(path, "r") as f:
            def visit(key, obj):
                if isinstance(obj, h5py.Dataset):
                    a = obj[()]
                    arrays[key] = {
                        "shape": list(a.shape),
                        "dtype": a.dtype.newbyteorder("=").name,
                        "data": [float(v) for v in np.asarray(a, dtype=np.float64).ravel()],
                    }
            f.visititems(visit)
        expected[name] = arrays
    with open(os.path.join(OUT, "expected.json"), "w") as fh:
        json.dump(expected, fh)


if __name__ == "__main__":
    main()

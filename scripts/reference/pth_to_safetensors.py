"""Converts the tiny pretrained-weight fixtures (crates/ctrcl-models/tests/data/*_tiny.pth) to
.safetensors without PyTorch: the .pth zip's pickle is read with a small unpickler that rebuilds
each tensor from its storage with numpy, and safetensors' own numpy writer saves the same keys
and values (what `safetensors.torch.save_file(torch.load(path))` writes). ctrcl must load either
file into identical weights (tests in ctrcl-models' import.rs).

    python3 -m venv /tmp/st && /tmp/st/bin/pip install numpy safetensors==0.8.0
    /tmp/st/bin/python scripts/reference/pth_to_safetensors.py
"""
import os
import pickle
import zipfile

import numpy as np
from safetensors.numpy import save_file

DATA = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-models/tests/data")
DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
          "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
          "BoolStorage": np.bool_}


class AttrDict(dict):
    """A state dict: PyTorch's OrderedDict also carries `_metadata` as an attribute."""


def load_pth(path):
    archive = zipfile.ZipFile(path)
    prefix = archive.namelist()[0].split("/")[0]

    class Storage:
        def __init__(self, dtype, key):
            raw = archive.read(f"{prefix}/data/{key}")
            self.array = np.frombuffer(raw, dtype=dtype)

    def rebuild_tensor(storage, offset, size, stride, *rest):
        item = storage.array.itemsize
        return np.lib.stride_tricks.as_strided(
            storage.array[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)).copy()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if name == "_rebuild_tensor_v2":
                return rebuild_tensor
            if name in DTYPES:
                return DTYPES[name]
            if name == "OrderedDict":
                return AttrDict
            return super().find_class(module, name)

        def persistent_load(self, pid):
            _, storage_type, key, _location, _numel = pid
            return Storage(storage_type, key)

    return Unpickler(archive.open(f"{prefix}/data.pkl")).load()


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, np.ndarray):
            out[f"{prefix}{k}"] = np.ascontiguousarray(v)
    return out


for name in ["swin_tiny", "resnet_tiny", "mit_tiny"]:
    tensors = flatten(load_pth(os.path.join(DATA, f"{name}.pth")))
    out = os.path.join(DATA, f"{name}.safetensors")
    save_file(tensors, out)
    os.chmod(out, 0o644)
    print(name, len(tensors), "tensors")

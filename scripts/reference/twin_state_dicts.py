"""The state-dict keys, shapes and dtypes of our PyTorch twins (bench/pytorch/models.py) at
ctrcl's default model sizes (1 input channel, 4 classes, 224² for the Swin-UNet), written to
crates/ctrcl-models/tests/data/export/twin_state_dicts.json. `ctrcl export` must produce exactly
these keys, shapes and dtypes (test in crates/ctrcl-models/tests/export.rs), so that
`twin.load_state_dict(..., strict=True)` takes the file.

    python3 -m venv /tmp/t && /tmp/t/bin/pip install torch
    /tmp/t/bin/python scripts/reference/twin_state_dicts.py
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
sys.path.insert(0, os.path.join(ROOT, "bench", "pytorch"))

import models  # noqa: E402

twins = {
    "unet": models.UNet(in_ch=1, classes=4),
    "resunet": models.ResUnet(in_ch=1, classes=4),
    "swin-unet": models.SwinUnet(size=224, classes=4, in_ch=1),
    "segformer": models.SegFormer(in_ch=1, classes=4),
}
out = {
    arch: [[key, list(t.shape), str(t.dtype).replace("torch.", "")] for key, t in twin.state_dict().items()]
    for arch, twin in twins.items()
}
path = os.path.join(ROOT, "crates", "ctrcl-models", "tests", "data", "export", "twin_state_dicts.json")
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "w") as f:
    json.dump(out, f, indent=0)
    f.write("\n")
print(path, {k: len(v) for k, v in out.items()})

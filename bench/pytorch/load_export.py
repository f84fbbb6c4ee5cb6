"""A student exported by `ctrcl export` as a PyTorch module (our twin in models.py, strict load),
optionally written as ONNX.

    python bench/pytorch/load_export.py FILE.safetensors                  # load, print a summary
    python bench/pytorch/load_export.py FILE.safetensors --onnx FILE.onnx  # and export ONNX

In Python:

    from load_export import load_student, normalize
    model, settings = load_student("unet.safetensors")   # eval mode, float32
    logits = model(torch.from_numpy(normalize(volume_slices, settings)))  # [N, K, S, S]

Needs torch and safetensors (ONNX export: onnx and onnxscript too). The settings come from
FILE.json beside the weights, or from the file's own metadata when the JSON is missing.
"""
import argparse
import json
import logging
import os
import sys

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402


def read_settings(path):
    """The export's settings: FILE.json, else the `ctrcl` entry of the file's metadata."""
    side = os.path.splitext(path)[0] + ".json"
    if os.path.exists(side):
        with open(side) as f:
            return json.load(f)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if "ctrcl" not in meta:
        raise SystemExit(f"{path}: no {side} beside it and no ctrcl metadata: not a ctrcl export")
    return json.loads(meta["ctrcl"])


def load_student(path):
    """(model in eval mode, settings) for FILE.safetensors written by `ctrcl export`."""
    settings = read_settings(path)
    if settings.get("format") != "ctrcl-export/1":
        raise SystemExit(f"{path}: export format {settings.get('format')!r}, this script reads ctrcl-export/1")
    twin = settings["twin"]
    model = getattr(models, twin["class"])(**twin["kwargs"])
    # strict: every key of the twin present, none left over, every shape equal.
    model.load_state_dict(load_file(path), strict=True)
    return model.eval(), settings


def normalize(volume, settings):
    """The input normalisation ctrcl applies to one input file: clip, then the rule of
    settings['input']['normalize'] over the whole array of each channel.
    `volume`: [C, N, H, W] or [N, H, W] (one channel) float array → [N, C, H, W] float32.
    Only "zscore", "minmax" and "none" are reproduced here."""
    inp = settings["input"]
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim == 3:
        v = v[None]
    if inp["clip"] is not None:
        v = np.clip(v, inp["clip"][0], inp["clip"][1])
    out = np.empty_like(v)
    for c in range(v.shape[0]):
        x = v[c]
        if inp["normalize"] == "zscore":
            out[c] = (x - x.mean()) / max(x.std(), 1e-8)
        elif inp["normalize"] == "minmax":
            out[c] = (x - x.min()) / max(x.max() - x.min(), 1e-8)
        elif inp["normalize"] == "none":
            out[c] = x
        else:
            raise SystemExit(f"normalize = {inp['normalize']!r} is not reproduced by this script")
    return np.ascontiguousarray(out.transpose(1, 0, 2, 3)).astype(np.float32)


def export_onnx(model, settings, out):
    """Writes `model` as ONNX (PyTorch's torch.export-based exporter) with a dynamic batch axis:
    input `image` [N, C, S, S], output `logits` [N, K, S, S]."""
    s, c = settings["input"]["image_size"], settings["input"]["channels"]
    example = torch.zeros(2, c, s, s)
    batch = torch.export.Dim("batch")
    # The exporter logs a warning per torchvision op it cannot register (torchvision is not needed).
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.onnx.export(model, (example,), out, input_names=["image"], output_names=["logits"],
                      dynamic_shapes={"x": {0: batch}}, dynamo=True, verbose=False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights", help="FILE.safetensors written by `ctrcl export`")
    ap.add_argument("--onnx", help="also write the model as ONNX here")
    args = ap.parse_args()
    model, settings = load_student(args.weights)
    n = sum(p.numel() for p in model.parameters())
    print(f"{args.weights}: {settings['architecture']} ({settings['twin']['class']}), {n} parameters, "
          f"input [N, {settings['input']['channels']}, {settings['input']['image_size']}, "
          f"{settings['input']['image_size']}], classes {settings['output']['classes']}")
    if args.onnx:
        if os.path.exists(args.onnx):
            raise SystemExit(f"{args.onnx} exists: remove it or choose another --onnx")
        export_onnx(model, settings, args.onnx)
        print(f"wrote {args.onnx}")


if __name__ == "__main__":
    main()

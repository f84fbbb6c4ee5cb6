"""`ctrcl export` end to end, for all four students: a short real training run per pair (U-Net +
Swin-UNet, ResUNet + SegFormer) on ICBM152, each student exported, loaded into its PyTorch twin
(strict), run on real MRI slices, written as ONNX and run by onnxruntime; both must give the
probabilities `ctrcl predict --probabilities` gives on the same slices.

The slices are a 64×64 in-plane crop (the runs' image size) of five test-slab slices, so that
predict's padding and resizing are the identity and the comparison is of the networks alone;
normalisation (z-score over the crop volume, as predict does per input file) is reproduced by
load_export.normalize. Tolerance 1e-5 absolute on probabilities: the three engines sum in
different orders in float32 (measured at most 4e-7 for the twins, 2e-6 for ONNX runtime's fused
graphs; the differences are printed).

    pip install torch onnx onnxscript onnxruntime safetensors nibabel
    python bench/pytorch/test_export.py --ctrcl target/release/ctrcl --data PREPARED_ICBM152
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_export import export_onnx, load_student, normalize  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
TOLERANCE = 1e-5
PAIRS = {"unet-swin": ("unet", "swin-unet"), "resunet-segformer": ("resunet", "segformer")}


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrcl", required=True)
    ap.add_argument("--data", required=True, help="ICBM152 prepared by `ctrcl data prepare`")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="ctrcl-export-")

    # Real slices: five axial slices of the test slab, cropped in-plane to 64×64 at the centre.
    with open(os.path.join(args.data, "ctrcl_split.json")) as f:
        z0 = json.load(f)["test"][0][0]
    image = nib.load(os.path.join(args.data, "imagesTr", "icbm152_0000.nii.gz"))
    vol = np.asarray(image.dataobj, dtype=np.float32)  # [x, y, z]
    cx, cy = vol.shape[0] // 2, vol.shape[1] // 2
    crop = vol[cx - 32:cx + 32, cy - 32:cy + 32, z0 + 3:z0 + 8]
    crop_path = os.path.join(work, "crop.nii.gz")
    nib.save(nib.Nifti1Image(np.ascontiguousarray(crop), image.affine), crop_path)
    slices = crop.transpose(2, 1, 0)  # [z, y, x]: the row-major planes predict reads

    checked = 0
    for name, (cnn, transformer) in PAIRS.items():
        out = os.path.join(work, name)
        run([args.ctrcl, "train", "--config", os.path.join(ROOT, "configs", "icbm152_small.toml"),
             "--set", f"data.dataset={args.data}", "--set", f"students.cnn={cnn}",
             "--set", f"students.transformer={transformer}", "--set", "schedule.iterations=6",
             "--set", "schedule.validate_every=3", "--set", "schedule.log_every=3", "--out", out])
        for role in ("cnn", "transformer"):
            weights = os.path.join(work, f"{name}-{role}.safetensors")
            run([args.ctrcl, "export", "--run", out, "--student", role, "--out", weights])
            pred_dir = os.path.join(work, f"{name}-{role}-pred")
            run([args.ctrcl, "predict", "--run", out, "--student", role, "--input", crop_path,
                 "--output", pred_dir, "--probabilities"])
            probs = np.asarray(nib.load(os.path.join(pred_dir, "crop_probabilities.nii.gz")).dataobj)
            ctrcl = probs.transpose(2, 3, 1, 0)  # [x, y, z, K] → [z, K, y, x]

            model, settings = load_student(weights)
            x = normalize(slices, settings)
            with torch.no_grad():
                twin = softmax(model(torch.from_numpy(x)).numpy())
            onnx_path = weights.replace(".safetensors", ".onnx")
            export_onnx(model, settings, onnx_path)
            session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            onnx = softmax(session.run(["logits"], {"image": x})[0])

            arch = settings["architecture"]
            assert twin.shape == ctrcl.shape, f"{arch}: twin {twin.shape} vs ctrcl {ctrcl.shape}"
            d_twin = float(np.abs(twin - ctrcl).max())
            d_onnx = float(np.abs(onnx - ctrcl).max())
            agree = float((twin.argmax(1) == ctrcl.argmax(1)).mean())
            print(f"{arch:10s} max |p_twin - p_ctrcl| = {d_twin:.2e}, max |p_onnx - p_ctrcl| = "
                  f"{d_onnx:.2e}, arg-max agreement {agree:.4f}")
            assert d_twin <= TOLERANCE, f"{arch}: the PyTorch twin differs from ctrcl by {d_twin}"
            assert d_onnx <= TOLERANCE, f"{arch}: the ONNX runtime differs from ctrcl by {d_onnx}"
            # Not a constant map: the comparison would hold for any weights otherwise.
            assert ctrcl.std() > 1e-3, f"{arch}: predicted probabilities are constant"
            checked += 1
    print(f"{checked} passed, 0 failed")


if __name__ == "__main__":
    main()

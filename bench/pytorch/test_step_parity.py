"""One training step of ctrcl's U-Net against PyTorch's, from the same weights on the same batch
(#20 item 0: is the engine the difference?).

ctrcl trains twice for one step from the same seed (so the same initial weights), on a batch
holding every training slice (so the batch is the same whatever the sample order), without
augmentation and without dropout (so nothing random is left): once with a learning rate of
1e-30 (its exported weights are the initial ones, W0, with BatchNorm's running statistics after
one batch), once with the real one (W1). PyTorch loads W0 into the twin (bench/pytorch/models.py),
computes the loss on the same slices (read and resized here, independently), takes one SGD step
(momentum 0.9, weight decay 1e-4) and must land on W1:
- the loss terms equal ctrcl's logged ones to 1e-5 relative;
- each tensor's update (W1 − W0) equal to 5% of its norm, the median tensor to 0.5%: the update
  of a weight of size ~0.1 by ~1e-5 is exact only to the f32 rounding of both weights, ~1e-8
  absolute, i.e. ~0.1–1% of the update (measured: median 0.04%, worst 1.3%);
- BatchNorm's running statistics after the batch (PyTorch's momentum and unbiased variance)
  equal ctrcl's to 1e-4.

    pip install torch safetensors nibabel
    python bench/pytorch/test_step_parity.py --ctrcl target/release/ctrcl --data PREPARED [--size 128]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load_export import load_student  # noqa: E402
from side_by_side import dice_loss, load_slices  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrcl", required=True)
    ap.add_argument("--data", required=True, help="a prepared single-case dataset (ctchest, lits117, icbm152)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--clip", type=float, nargs=2, default=None)
    ap.add_argument("--normalize", default="zscore")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with open(os.path.join(args.data, "ctrcl_split.json")) as f:
        split = json.load(f)
    n = sum(b - a + 1 for a, b in split["train"])
    work = tempfile.mkdtemp(prefix="ctrcl-step-")
    sets = [f"data.dataset={args.data}", "method=independent", f"data.image_size={args.size}",
            "models.unet.channels=[16,32,64,128,256]", "models.unet.dropout=[0.0,0.0,0.0,0.0,0.0]",
            "data.augment=none", f"data.batch_size={n}", "schedule.iterations=1",
            "schedule.log_every=1", "schedule.validate_every=1000", f"data.normalize={args.normalize}",
            "skip_memory_check=true", "optim.cnn.weight_decay=0.0001"]
    if args.clip:
        sets.append(f"data.clip=[{args.clip[0]},{args.clip[1]}]")
    weights = {}
    for name, lr in (("w0", "1e-30"), ("w1", "0.01")):
        out = os.path.join(work, name)
        cmd = [args.ctrcl, "train", "--config", os.path.join(ROOT, "configs", "icbm152_small.toml"), "--out", out]
        for s in sets + [f"optim.cnn.lr={lr}"]:
            cmd += ["--set", s]
        run(cmd)
        run([args.ctrcl, "export", "--run", out, "--student", "cnn", "--out", out + ".safetensors"])
        weights[name] = out
    with open(os.path.join(weights["w1"], "log.jsonl")) as f:
        logged = next(json.loads(line) for line in f if '"lr"' in line)["cnn"]

    x, y, _, _ = load_slices(args.data, split["train"], args.size, args.normalize, args.clip)
    model, _ = load_student(weights["w0"] + ".safetensors")
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    w1 = load_file(weights["w1"] + ".safetensors")
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.reset_running_stats()  # W0's statistics have seen the batch once already
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    logits = model(x)
    k = logits.shape[1]
    ce = F.cross_entropy(logits, y)
    dice = dice_loss(logits.softmax(1), F.one_hot(y, k).permute(0, 3, 1, 2).float())
    opt.zero_grad()
    (0.5 * ce + 0.5 * dice).backward()
    opt.step()
    after = model.state_dict()

    failures = []
    for term, ours, theirs in (("ce", logged["ce"], ce.item()), ("dice", logged["dice"], dice.item())):
        rel = abs(ours - theirs) / abs(theirs)
        print(f"loss {term}: ctrcl {ours:.7f}, PyTorch {theirs:.7f} (rel {rel:.1e})")
        if rel > 1e-5:
            failures.append(f"loss {term} differs by {rel:.1e}")
    rels = []
    for key, v in after.items():
        if v.dtype != torch.float32 or "running" in key:
            continue
        ours, theirs = w1[key] - w0[key], v - w0[key]
        rel = ((ours - theirs).norm() / theirs.norm().clamp_min(1e-20)).item()
        rels.append(rel)
        if rel > 0.05:
            failures.append(f"{key}: update differs by {rel:.1%}")
    print(f"weight updates: {len(rels)} tensors, median relative difference {np.median(rels):.2e}, "
          f"largest {max(rels):.2e}")
    if np.median(rels) > 5e-3:
        failures.append(f"median update difference {np.median(rels):.1e}")
    worst_bn = 0.0
    for key, v in after.items():
        if "running" in key:
            worst_bn = max(worst_bn, (v - w1[key]).abs().max().item())
    print(f"BatchNorm running statistics: largest difference {worst_bn:.1e}")
    if worst_bn > 1e-4:
        failures.append(f"running statistics differ by {worst_bn:.1e}")
    if failures:
        raise SystemExit("ctrcl's step differs from PyTorch's: " + "; ".join(failures))
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()

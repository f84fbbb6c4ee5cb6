"""ctrcl's independently trained U-Net beside its PyTorch twin, same data, same protocol (#20 item 0).

Both train the U-Net of configs/icbm152_small.toml (or --config) on the same prepared dataset and
split: slices of the train slabs, z-scored per volume (or min-max, per the config), padded to a
square with the volume minimum and resized bilinearly to data.image_size (labels nearest), rot90 +
flip with probability 0.5, batch 8, SGD (momentum 0.9, weight decay 1e-4) with the poly schedule,
L = 0.5·CE + 0.5·Dice (SSL4MIS form, background included), for schedule.iterations steps. Each is
scored on the test slab: arg-max at the training size, nearest back to the native grid, Dice per
class over the slab (TransUNet convention). ctrcl is run as `ctrcl train --set method=independent`
(no validation, so its last step is tested, as the twin's) then `ctrcl test`; the twin here, in
PyTorch, from PyTorch's default initialisation (the same distributions as Burn's: Kaiming-uniform
with a = √5, bias U(±1/√fan_in)).

What differs by construction: the random streams (initial weights, batch order, augmentation draws,
dropout masks). Over several seeds those average out; anything else is a difference of the engines.

    pip install torch nibabel
    python bench/pytorch/side_by_side.py --ctrcl target/release/ctrcl --data PREPARED --seeds 0 1 2
"""
import argparse
import json
import os
import subprocess
import sys
import time
import tomllib

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import models  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def load_slices(data, parts, size, normalize, clip):
    """The slices of `parts` ([[z0, z1], ...] inclusive) of the dataset's single case as network
    inputs [N, 1, S, S] and labels [N, S, S], plus the native labels [N, h, w]."""
    img_dir, lab_dir = os.path.join(data, "imagesTr"), os.path.join(data, "labelsTr")
    image = np.asarray(nib.load(os.path.join(img_dir, sorted(os.listdir(img_dir))[0])).dataobj, dtype=np.float64)
    label = np.asarray(nib.load(os.path.join(lab_dir, sorted(os.listdir(lab_dir))[0])).dataobj).astype(np.int64)
    if clip:
        image = np.clip(image, clip[0], clip[1])
    if normalize == "zscore":
        image = (image - image.mean()) / max(image.std(), 1e-8)
    elif normalize == "minmax":
        image = (image - image.min()) / max(image.max() - image.min(), 1e-8)
    background = image.min()
    zs = [z for a, b in parts for z in range(a, b + 1)]
    # NIfTI [x, y, z] → row-major planes [z, y, x].
    img = image[:, :, zs].transpose(2, 1, 0).astype(np.float32)
    lab = label[:, :, zs].transpose(2, 1, 0)
    n, h, w = img.shape
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    sq = np.full((n, side, side), background, dtype=np.float32)
    sq[:, top:top + h, left:left + w] = img
    sql = np.zeros((n, side, side), dtype=np.int64)
    sql[:, top:top + h, left:left + w] = lab
    x = F.interpolate(torch.from_numpy(sq)[:, None], size=(size, size), mode="bilinear", align_corners=False)
    idx = np.minimum((np.arange(size) * side) // size, side - 1)  # ctrcl's nearest: floor(o·in/out)
    y = torch.from_numpy(sql[:, idx][:, :, idx])
    return x, y, lab, (h, w, side, top, left)


def dice_loss(probs, onehot, eps=1e-5):
    inter = (probs * onehot).sum((0, 2, 3))
    return (1 - (2 * inter + eps) / (probs.pow(2).sum((0, 2, 3)) + onehot.pow(2).sum((0, 2, 3)) + eps)).mean()


def rot_flip(x, y, gen):
    if torch.rand((), generator=gen) >= 0.5:
        return x, y
    k = int(torch.randint(0, 4, (), generator=gen))
    axis = int(torch.randint(0, 2, (), generator=gen))
    x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (0, 1))
    return torch.flip(x, (1 + axis,)), torch.flip(y, (axis,))


def train_twin(cfg, x, y, seed, k, init=None):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = models.UNet(in_ch=1, classes=k, ch=tuple(cfg["channels"]), drop=tuple(cfg["dropout"]))
    if init is not None:
        model.load_state_dict(init, strict=True)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    n, iters, batch = x.shape[0], cfg["iterations"], cfg["batch"]
    order = torch.randperm(n, generator=gen)
    pos = 0
    model.train()
    curve = []
    for it in range(iters):
        lr = cfg["lr"] * (1 - it / iters) ** 0.9
        for g in opt.param_groups:
            g["lr"] = lr
        xs, ys = [], []
        for _ in range(batch):
            if pos == n:
                order, pos = torch.randperm(n, generator=gen), 0
            i = int(order[pos])
            pos += 1
            a, b = rot_flip(x[i], y[i], gen)
            xs.append(a)
            ys.append(b)
        xb, yb = torch.stack(xs), torch.stack(ys)
        logits = model(xb)
        onehot = F.one_hot(yb, k).permute(0, 3, 1, 2).float()
        ce, dice = F.cross_entropy(logits, yb), dice_loss(logits.softmax(1), onehot)
        loss = 0.5 * ce + 0.5 * dice
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (it + 1) % 10 == 0:
            curve.append({"step": it + 1, "ce": ce.item(), "dice": dice.item()})
    return model.eval(), curve


def test_dice(model, x, native, geo, k):
    h, w, side, top, left = geo
    with torch.no_grad():
        pred = model(x).argmax(1).numpy()
    size = pred.shape[1]
    idx = np.minimum((np.arange(side) * size) // side, size - 1)
    back = pred[:, idx][:, :, idx][:, top:top + h, left:left + w]
    out = {}
    for c in range(1, k):
        p, g = back == c, native == c
        if p.sum() > 0 and g.sum() > 0:
            out[c] = 2 * (p & g).sum() / (p.sum() + g.sum())
        elif p.sum() > 0 and g.sum() == 0:
            out[c] = 1.0
        else:
            out[c] = 0.0
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctrcl", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "icbm152_small.toml"))
    ap.add_argument("--set", action="append", default=[], help="extra ctrcl --set for both (KEY=VALUE)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="/tmp/side_by_side")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    results = {"ctrcl": [], "twin": []}
    for seed in args.seeds:
        run = os.path.join(args.out, f"ctrcl-seed{seed}")
        if not os.path.exists(os.path.join(run, "metrics", "test-test.json")):
            subprocess.run([args.ctrcl, "train", "--config", args.config, "--set", f"data.dataset={args.data}",
                            "--set", "method=independent", "--set", f"seed={seed}",
                            # No validation: both are scored at their last step.
                            "--set", "schedule.validate_every=1000000000",
                            *[a for s in args.set for a in ("--set", s)], "--out", run],
                           check=True, capture_output=True)
            subprocess.run([args.ctrcl, "test", "--run", run, "--student", "cnn"], check=True, capture_output=True)
        with open(os.path.join(run, "metrics", "test-test.json")) as f:
            metrics = json.load(f)
        # The run's resolved config: the protocol the twin reproduces.
        with open(os.path.join(run, "config.toml"), "rb") as f:
            rc = tomllib.load(f)
        with open(os.path.join(run, "run.json")) as f:
            classes = json.load(f)["class_names"]
        k = len(classes)
        d = rc["data"]
        with open(os.path.join(args.data, "ctrcl_split.json")) as f:
            split = json.load(f)
        clip = d.get("clip") or None
        x, y, _, _ = load_slices(args.data, split["train"], d["image_size"], d["normalize"], clip)
        xt, _, native, geo = load_slices(args.data, split["test"], d["image_size"], d["normalize"], clip)
        cfg = {"channels": rc["models"]["unet"]["channels"], "dropout": rc["models"]["unet"]["dropout"],
               "lr": rc["optim"]["cnn"]["lr"], "weight_decay": rc["optim"]["cnn"]["weight_decay"],
               "iterations": rc["schedule"]["iterations"], "batch": d["batch_size"]}
        start = time.time()
        twin, curve = train_twin(cfg, x, y, seed, k)
        with open(os.path.join(args.out, f"twin-seed{seed}-loss.json"), "w") as f:
            json.dump(curve, f)
        ours_curve = [json.loads(line) for line in open(os.path.join(run, "log.jsonl")) if '"lr"' in line]
        for at in (len(curve) // 4, len(curve) // 2, len(curve) - 1):
            o = next((c for c in ours_curve if c["step"] == curve[at]["step"]), None)
            if o is not None:
                print(f"seed {seed} step {curve[at]['step']}: training CE / Dice loss: twin "
                      f"{curve[at]['ce']:.3f} / {curve[at]['dice']:.3f}, ctrcl {o['cnn']['ce']:.3f} / "
                      f"{o['cnn']['dice']:.3f}", flush=True)
        twin_dice = test_dice(twin, xt, native, geo, k)
        ours = {int(c): v for c, v in metrics["cnn"]["per_class_dice"].items()}
        results["ctrcl"].append(ours)
        results["twin"].append(twin_dice)
        print(f"seed {seed}: twin trained in {time.time() - start:.0f} s; twin Dice "
              + ", ".join(f"{classes[c]} {v:.3f}" for c, v in twin_dice.items())
              + f" (mean {np.mean(list(twin_dice.values())):.3f})", flush=True)
        print(f"seed {seed}: ctrcl Dice "
              + ", ".join(f"{classes[c]} {v:.3f}" for c, v in ours.items())
              + f" (mean {np.mean(list(ours.values())):.3f})", flush=True)
    with open(os.path.join(args.out, "side_by_side.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    # Mean ± sample sd over seeds, per class and of the mean Dice.
    print(f"\n{len(args.seeds)} seeds, U-Net test Dice, mean ± sd:")
    rows = [(classes[c], c) for c in range(1, k)] + [("mean", None)]
    for name, c in rows:
        cells = []
        for who in ("ctrcl", "twin"):
            v = [np.mean(list(r.values())) if c is None else r[c] for r in results[who]]
            sd = np.std(v, ddof=1) if len(v) > 1 else 0.0
            cells.append(f"{who} {np.mean(v):.3f} ± {sd:.3f}")
        print(f"  {name:28s} " + "   ".join(cells))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One training step (forward + CE/Dice loss + backward + optimizer) and inference of the PyTorch
twins of ctrcl's students; prints one JSON line with the keys `ctrcl bench --json` prints.

    bench/pytorch/setup.sh                       # venv with torch in bench/pytorch/.venv
    bench/pytorch/.venv/bin/python bench/pytorch/bench.py --model unet --size 224 --batch 8
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from models import ResUnet, SegFormer, SwinUnet, UNet


def seg_loss(logits, onehot):
    """0.5 CE + 0.5 soft Dice (per class, mean), as ctrcl's L_seg."""
    ce = -(onehot * F.log_softmax(logits, 1)).sum(1).mean()
    p = logits.softmax(1)
    inter = (p * onehot).sum((0, 2, 3))
    dice = 1 - (2 * inter + 1e-5) / ((p * p).sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1e-5)
    return 0.5 * ce + 0.5 * dice.mean()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["unet", "resunet", "swin-unet", "segformer"], required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    ap.add_argument("--unet-channels", type=int, nargs=5, default=[16, 32, 64, 128, 256])
    ap.add_argument("--swin-embed", type=int, default=96)
    ap.add_argument("--swin-heads", type=int, nargs=4, default=[3, 6, 12, 24])
    ap.add_argument("--swin-window", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: forward and loss under torch.autocast(dtype=torch.bfloat16)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    if a.model == "unet":
        net = UNet(1, a.classes, tuple(a.unet_channels))
    elif a.model == "resunet":
        net = ResUnet(1, a.classes)
    elif a.model == "segformer":
        net = SegFormer(1, a.classes)
    else:
        net = SwinUnet(a.size, a.classes, embed=a.swin_embed, heads=tuple(a.swin_heads), window=a.swin_window)
    net = net.to(dev)
    x = torch.randn(a.batch, 1, a.size, a.size, device=dev)
    labels = torch.randint(0, a.classes, (a.batch, a.size, a.size), device=dev)
    onehot = F.one_hot(labels, a.classes).permute(0, 3, 1, 2).float()
    if a.optimizer == "sgd":
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01, eps=1e-8)
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    with FlopCounterMode(display=False) as counter:
        net.eval()
        with torch.no_grad():
            net(x[:1])
    forward_flop = counter.get_total_flops()

    net.train()
    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = seg_loss(net(x), onehot)
        loss.backward()
        opt.step()
        sync()
        if i >= a.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    net.eval()
    infer = []
    with torch.no_grad():
        for i in range(a.warmup + a.steps):
            t0 = time.perf_counter()
            with autocast():
                net(x).argmax(1)
            sync()
            if i >= a.warmup:
                infer.append((time.perf_counter() - t0) * 1e3 / a.batch)
    ms = statistics.median(times)
    print(json.dumps({
        "model": a.model,
        "method": "independent",
        "size": a.size,
        "batch": a.batch,
        "classes": a.classes,
        "backend": f"pytorch {torch.__version__} {a.device} ({torch.get_num_threads()} threads)",
        "optimizer": a.optimizer,
        "precision": a.precision,
        "ms_per_step": ms,
        "ms_per_step_min": min(times),
        "images_per_s": a.batch / (ms / 1e3),
        "infer_ms_per_image": statistics.median(infer),
        "forward_gflop_per_image": forward_flop / 1e9,
        "train_gflop_per_s": 3 * forward_flop * a.batch / 1e9 / (ms / 1e3),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""ctrcl vs PyTorch on the same models, sizes, loss and optimizer, on this machine, alternately.

For each model, `ctrcl bench --model M --json` and `bench.py --model M` run in turn for --rounds
rounds; the table shows the median step and inference times of each and the ratio ctrcl/PyTorch
(below 1: ctrcl faster), and both FLOP counts (ctrcl's analytic count, PyTorch's FlopCounterMode).

    cargo build --release -p ctrcl-cli && bench/pytorch/setup.sh
    bench/pytorch/.venv/bin/python bench/pytorch/compare.py --size 224 --batch 8
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))


def run(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["unet", "resunet", "swin-unet", "segformer"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of both: PyTorch's --threads and ctrcl's RAYON_NUM_THREADS "
                         "(0: each its default, all cores)")
    ap.add_argument("--unet-channels", type=int, nargs=5, default=[16, 32, 64, 128, 256])
    ap.add_argument("--swin-embed", type=int, default=96)
    ap.add_argument("--swin-heads", type=int, nargs=4, default=[3, 6, 12, 24])
    ap.add_argument("--swin-window", type=int, default=7)
    ap.add_argument("--ctrcl", default="target/release/ctrcl")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for a ctrcl built with --features cuda")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32",
                    help="bf16: ctrcl's mixed precision beside torch.autocast(dtype=torch.bfloat16)")
    a = ap.parse_args()
    common = ["--size", str(a.size), "--batch", str(a.batch), "--classes", str(a.classes),
              "--optimizer", a.optimizer, "--steps", str(a.steps), "--warmup", str(a.warmup),
              "--precision", a.precision]
    ours_sets = ["--set", f"models.unet.channels={a.unet_channels}".replace(" ", ""),
                 "--set", f"models.swin_unet.embed_dim={a.swin_embed}",
                 "--set", f"models.swin_unet.heads={a.swin_heads}".replace(" ", ""),
                 "--set", f"models.swin_unet.window={a.swin_window}"]
    theirs_sizes = ["--unet-channels", *map(str, a.unet_channels), "--swin-embed", str(a.swin_embed),
                    "--swin-heads", *map(str, a.swin_heads), "--swin-window", str(a.swin_window),
                    "--device", a.device]
    ours_env = dict(os.environ)
    if a.threads:
        theirs_sizes += ["--threads", str(a.threads)]
        ours_env["RAYON_NUM_THREADS"] = str(a.threads)
    # Each model's line is printed (and flushed) as soon as it is measured: a run cut off by a
    # time limit (bench/gpu/check.sh on a short GPU slot) still leaves the models it finished.
    print(f"size {a.size}, batch {a.batch}, {a.classes} classes, {a.optimizer}, {a.precision}, {a.steps} steps x {a.rounds} rounds", flush=True)
    rows = []
    for model in a.models:
        ours, theirs = [], []
        for _ in range(a.rounds):
            ours.append(run([a.ctrcl, "bench", "--model", model, "--json", *common, *ours_sets], env=ours_env))
            theirs.append(run([sys.executable, os.path.join(here, "bench.py"), "--model", model, *common, *theirs_sizes]))
        med = lambda rs, k: statistics.median(r[k] for r in rs)
        rows.append({
            "model": model,
            "ctrcl_backend": ours[0]["backend"], "pytorch_backend": theirs[0]["backend"],
            "ctrcl_ms_per_step": med(ours, "ms_per_step"), "pytorch_ms_per_step": med(theirs, "ms_per_step"),
            "ctrcl_infer_ms": med(ours, "infer_ms_per_image"), "pytorch_infer_ms": med(theirs, "infer_ms_per_image"),
            "ctrcl_gflop": ours[0]["forward_gflop_per_image"], "pytorch_gflop": theirs[0]["forward_gflop_per_image"],
            "ctrcl_peak_mb": max(r["peak_rss_mb"] for r in ours), "pytorch_peak_mb": max(r["peak_rss_mb"] for r in theirs),
        })
        if len(rows) == 1:
            print(f"ctrcl: {rows[0]['ctrcl_backend']}; PyTorch: {rows[0]['pytorch_backend']}")
            print(f"{'model':<10} {'ctrcl ms/step':>14} {'torch ms/step':>14} {'ratio':>6} {'ctrcl inf ms':>13} {'torch inf ms':>13} {'ratio':>6} {'GFLOP fwd (ours/torch)':>24} {'peak MiB (ours/torch)':>22}")
        r = rows[-1]
        print(f"{r['model']:<10} {r['ctrcl_ms_per_step']:>14.1f} {r['pytorch_ms_per_step']:>14.1f} "
              f"{r['ctrcl_ms_per_step'] / r['pytorch_ms_per_step']:>6.2f} {r['ctrcl_infer_ms']:>13.2f} "
              f"{r['pytorch_infer_ms']:>13.2f} {r['ctrcl_infer_ms'] / r['pytorch_infer_ms']:>6.2f} "
              f"{r['ctrcl_gflop']:>11.3f} / {r['pytorch_gflop']:<10.3f} {r['ctrcl_peak_mb']:>10.0f} / {r['pytorch_peak_mb']:<9.0f}",
              flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The GPU code path, run in CI on a software GPU (issue #17 item 4).

A Vulkan build of ctrcl (`cargo build --release -p ctrcl-cli --no-default-features --features
vulkan`: Burn's wgpu backend without autotuning and fusion, docs/gpu.md) trains a CTRCL pair
(U-Net + Swin-UNet, `configs/icbm152_small.toml` at 32x32, batch 8, 4 iterations) on Mesa's
lavapipe, twice, with one fresh kernel cache. Checked:

1. the first run finishes, with finite losses, and its `log.jsonl` records the kernels it
   compiled (a `first_step` event and the `end` event, `ctrcl_train::kernels`);
2. the second run compiles nothing: every kernel comes from the cache the first one filled;
3. both runs log the same losses and validation scores: the same seed gives the same run on
   the same device and build (the GPU half of the seed promise, docs/gpu.md).

    python3 bench/gpu/lavapipe_check.py --ctrcl BIN --data PREPARED_ICBM152_DIR

Needs `libvulkan1` and `mesa-vulkan-drivers` (Debian). Standard library only. Exit status 0
when every check holds; the failing check is printed otherwise.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "..", "..", "configs", "icbm152_small.toml")
# Keys whose values are clocks, not results.
TIMING = {"elapsed_s", "seconds", "available_bytes"}


def train(ctrcl, data, out, cache):
    env = dict(os.environ, CTRCL_KERNEL_CACHE=cache)
    cmd = [ctrcl, "train", "--config", CONFIG, "--out", out,
           "--set", f"data.dataset={data}", "--set", "data.image_size=32",
           "--set", "schedule.iterations=4", "--set", "schedule.log_every=1",
           "--set", "schedule.validate_every=4"]
    started = time.time()
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if run.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {run.returncode}\n{run.stderr[-3000:]}")
    with open(os.path.join(out, "log.jsonl")) as f:
        events = [json.loads(line) for line in f]
    return events, wall


def event(events, name, run):
    found = [e for e in events if e.get("event") == name]
    if not found:
        sys.exit(f"FAIL: run {run}'s log.jsonl has no {name!r} event")
    return found[0]


def results(events):
    """The log without its clocks and kernel counts: what two runs of one seed must share."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if k not in TIMING and k != "kernels"}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return [clean(e) for e in events if e.get("event") != "first_step"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ctrcl", required=True, help="a --features vulkan build of ctrcl")
    ap.add_argument("--data", required=True, help="ctrcl data prepare --source icbm152 output")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lavapipe-")
    cache = os.path.join(work, "kernels")

    first, wall1 = train(args.ctrcl, args.data, os.path.join(work, "cold"), cache)
    start = event(first, "start", "1")
    if not start["backend"].startswith("vulkan"):
        sys.exit(f"FAIL: the binary is not a Vulkan build (backend {start['backend']!r})")
    cold_first, cold_end = event(first, "first_step", "1"), event(first, "end", "1")
    steps = [e for e in first if "step" in e and "val" not in e]
    losses = [e[role]["total"] for e in steps for role in ("cnn", "transformer")]
    if len(losses) != 8 or not all(math.isfinite(x) for x in losses):
        sys.exit(f"FAIL: expected 4 finite loss lines per student, got {losses}")
    compiled = cold_end["kernels"]["compiled"]
    if compiled == 0 or cold_first["kernels"]["compiled"] == 0:
        sys.exit(f"FAIL: the cold run logged no compiled kernels: {cold_end}")
    print(f"cold run: {wall1:.0f} s wall, first step {cold_first['seconds']:.1f} s, "
          f"kernels {cold_end['kernels']}")

    second, wall2 = train(args.ctrcl, args.data, os.path.join(work, "warm"), cache)
    warm_first, warm_end = event(second, "first_step", "2"), event(second, "end", "2")
    print(f"warm run: {wall2:.0f} s wall, first step {warm_first['seconds']:.1f} s, "
          f"kernels {warm_end['kernels']}")
    if warm_end["kernels"]["compiled"] != 0:
        sys.exit(f"FAIL: the warm run compiled kernels again: {warm_end['kernels']}")
    if warm_end["kernels"]["from_cache"] < compiled:
        sys.exit(f"FAIL: the warm run loaded fewer kernels ({warm_end['kernels']}) than the "
                 f"cold one compiled ({compiled})")
    a, b = results(first), results(second)
    if a != b:
        diff = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y) if len(a) == len(b) else None
        sys.exit(f"FAIL: the two runs of one seed differ (line {diff}):\n{a[diff] if diff is not None else a}\n"
                 f"{b[diff] if diff is not None else b}")
    print(f"lavapipe: {len(a)} log lines identical across the two runs; every check passed")


if __name__ == "__main__":
    main()

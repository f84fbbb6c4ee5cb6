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
   the same device and build (the GPU half of the seed promise, docs/gpu.md);
4. the Vulkan backend computes what the CPU backend does. The backends draw different initial
   weights, so both start from one checkpoint: a run trained by the CPU build (dropout and drop
   path off, so no random draws remain) is copied twice, its schedule lengthened by two
   iterations, and each copy resumed by one build. The two steps' logged loss terms (forward,
   backward and optimizer update all feed the second) must agree to 1e-4 relative and the
   validation Dice to 0.01; then both builds `predict --probabilities` the ICBM152 volume with
   each student of that run: softmax values within 1e-4, label maps differing in at most 0.01% of
   voxels. Why these tolerances: f32 sums in another order (measured on lavapipe: losses within
   2e-6 relative, probabilities within 2e-7, label maps identical); a class whose probability
   ties may flip a pixel.

    python3 bench/gpu/lavapipe_check.py --ctrcl VULKAN_BIN --cpu-ctrcl CPU_BIN --data ICBM152_DIR

Needs `libvulkan1` and `mesa-vulkan-drivers` (Debian). Standard library only. Exit status 0
when every check holds; the failing check is printed otherwise.
"""

import argparse
import array
import gzip
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "..", "..", "configs", "icbm152_small.toml")
# Keys whose values are clocks, not results.
TIMING = {"elapsed_s", "seconds", "available_bytes"}


def run(cmd, cache):
    env = dict(os.environ, CTRCL_KERNEL_CACHE=cache)
    started = time.time()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)} exited {done.returncode}\n{done.stderr[-3000:]}")
    return time.time() - started


def read_log(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def train(ctrcl, data, out, cache, *extra):
    cmd = [ctrcl, "train", "--config", CONFIG, "--out", out,
           "--set", f"data.dataset={data}", "--set", "data.image_size=32",
           "--set", "schedule.iterations=4", "--set", "schedule.log_every=1",
           "--set", "schedule.validate_every=4", *extra]
    wall = run(cmd, cache)
    return read_log(out), wall


def read_nifti(path):
    """(dims, values) of a little-endian NIfTI-1 file of float32 or uint8 voxels."""
    raw = gzip.open(path).read()
    ndim, *dims = struct.unpack("<8h", raw[40:56])
    dtype = struct.unpack("<h", raw[70:72])[0]
    offset = int(struct.unpack("<f", raw[108:112])[0])
    values = array.array({16: "f", 2: "B"}[dtype])
    count = math.prod(dims[:ndim])
    values.frombytes(raw[offset:offset + count * values.itemsize])
    return dims[:ndim], values


def steps_after(events, step):
    return [e for e in events if e.get("step", 0) > step and "val" not in e]


def close(a, b, rel):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-6)


def against_cpu(vulkan, cpu, data, work, cache):
    """Check 4: the same checkpoint resumed and predicted by both builds."""
    base = os.path.join(work, "cpu-base")
    train(cpu, data, base, cache, "--set", "models.unet.dropout=[0,0,0,0,0]",
          "--set", "models.swin_unet.drop_path=0")
    logs = {}
    for name, binary in (("cpu", cpu), ("vulkan", vulkan)):
        copy = os.path.join(work, f"resume-{name}")
        shutil.copytree(base, copy)
        config = os.path.join(copy, "config.toml")
        with open(config) as f:
            text = f.read()
        if "iterations = 4\n" not in text:
            sys.exit(f"FAIL: {config} does not say iterations = 4")
        with open(config, "w") as f:
            f.write(text.replace("iterations = 4\n", "iterations = 6\n", 1))
        with open(os.path.join(copy, "log.jsonl"), "w") as f:
            for e in read_log(base):
                if e.get("event") != "end":
                    f.write(json.dumps(e) + "\n")
        run([binary, "train", "--resume", copy], cache)
        logs[name] = read_log(copy)
    a, b = steps_after(logs["cpu"], 4), steps_after(logs["vulkan"], 4)
    if [e["step"] for e in a] != [5, 6] or [e["step"] for e in b] != [5, 6]:
        sys.exit(f"FAIL: the resumed runs did not log steps 5 and 6: {a} {b}")
    worst = 0.0
    for x, y in zip(a, b):
        for role in ("cnn", "transformer"):
            for term, value in x[role].items():
                other = y[role][term]
                if not close(value, other, 1e-4):
                    sys.exit(f"FAIL: step {x['step']} {role} {term}: cpu {value} vulkan {other}")
                worst = max(worst, abs(value - other) / max(abs(value), 1e-6))
    va = [e["val"] for e in logs["cpu"] if "val" in e][-1]
    vb = [e["val"] for e in logs["vulkan"] if "val" in e][-1]
    for role in ("cnn", "transformer"):
        if abs(va[role]["mean_dice"] - vb[role]["mean_dice"]) > 0.01:
            sys.exit(f"FAIL: validation Dice at step 6, {role}: cpu {va[role]} vulkan {vb[role]}")
    print(f"cpu vs vulkan, steps 5-6 from one checkpoint: loss terms within {worst:.1e} relative, "
          f"validation Dice cnn {va['cnn']['mean_dice']:.4f}/{vb['cnn']['mean_dice']:.4f}, "
          f"transformer {va['transformer']['mean_dice']:.4f}/{vb['transformer']['mean_dice']:.4f}")

    images = os.path.join(data, "imagesTr")
    for student in ("cnn", "transformer"):
        outs = {}
        for name, binary in (("cpu", cpu), ("vulkan", vulkan)):
            outs[name] = os.path.join(work, f"predict-{student}-{name}")
            run([binary, "predict", "--run", base, "--student", student, "--input", images,
                 "--output", outs[name], "--probabilities"], cache)
        for case in sorted(os.listdir(outs["cpu"])):
            dims_a, pa = read_nifti(os.path.join(outs["cpu"], case))
            dims_b, pb = read_nifti(os.path.join(outs["vulkan"], case))
            if dims_a != dims_b:
                sys.exit(f"FAIL: {student} {case}: cpu dims {dims_a}, vulkan {dims_b}")
            if case.endswith("_probabilities.nii.gz"):
                diff = max(abs(x - y) for x, y in zip(pa, pb))
                if diff > 1e-4:
                    sys.exit(f"FAIL: {student} {case}: probabilities differ by {diff}")
                print(f"predict {student} {case}: probabilities within {diff:.1e}")
            else:
                differ = sum(x != y for x, y in zip(pa, pb))
                if differ > 1e-4 * len(pa):
                    sys.exit(f"FAIL: {student} {case}: {differ} of {len(pa)} labels differ")
                print(f"predict {student} {case}: {differ} of {len(pa)} labels differ")


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
    ap.add_argument("--cpu-ctrcl", required=True, help="the default (CPU) build of ctrcl")
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
    print(f"lavapipe: {len(a)} log lines identical across the two runs")
    against_cpu(args.ctrcl, args.cpu_ctrcl, args.data, work, cache)
    shutil.rmtree(work)
    print("lavapipe: every check passed")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Issue #6's GPU measurements as one prepared run, sized for a 15-minute device lease: ctrcl
# (built with --features cuda) beside PyTorch + cuDNN on the same card, f32 and bf16, the CTRCL
# pair's step, and a short real training run with its test score. Stages run in order of
# priority, each under its own time limit, and write as they go, so a cut-off run still
# returns what finished.
#
#   bench/gpu/check.sh CTRCL_BINARY OUT_DIR [DEVICE] [DATASET_DIR]
#
# DEVICE: cuda (default) or cpu — cpu is a dry run of the plumbing on any machine (use it with a
# default-build binary and small SIZE/BATCH). DATASET_DIR: a prepared ICBM152 dataset
# (`ctrcl data prepare --source icbm152 --out DIR`, ~5 MB) for the training stage; skipped if
# absent. Environment: PYTHON (default python3, needs torch), SIZE (224), BATCH (8), STEPS (5),
# ITERATIONS (200), START_ITERATIONS (20: each start's run), STAGE_TIMEOUT (seconds per stage, 150), BUDGET (seconds for the whole
# script, 660: stages are cut or skipped to end by then), LEAN (a second binary built with
# `--no-default-features --features cuda`: no autotune, no fusion; its cold start is measured too),
# COMPILE_THREADS (8: CTRCL_COMPILE_THREADS of the parallel-compilation starts).
# On the lent machine, with the binary (gzipped: the carry limit is 64 MiB) and the dataset
# carried in an ignored folder (see docs/gpu.md):
#   gunzip -c gpu_carry/ctrcl.gz > /tmp/ctrcl && chmod +x /tmp/ctrcl &&
#     bash bench/gpu/check.sh /tmp/ctrcl "$OUT" cuda gpu_carry/icbm
set -uo pipefail
ctrcl=$1
out=$2
device=${3:-cuda}
dataset=${4:-}
python=${PYTHON:-python3}
size=${SIZE:-224}
batch=${BATCH:-8}
steps=${STEPS:-5}
iterations=${ITERATIONS:-200}
limit=${STAGE_TIMEOUT:-150}
# The whole script's deadline: a lent machine's 15 minutes include its start (1–2 min) and the
# transfers, so by default everything ends within 11 minutes of starting; a stage gets
# min(STAGE_TIMEOUT, what is left) and is skipped when under 20 s are left.
deadline=$(( $(date +%s) + ${BUDGET:-660} ))
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
# Scratch outside $OUT: only 8 files come back from a lent machine, so nothing else may be left there.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
summary="$out/summary.txt"
# cudarc opens libnvrtc/libcuda by name (libnvrtc.so.13 for a CUDARC_CUDA_VERSION=13000 build):
# add the toolkit's and PyTorch's wheel copies to the search path.
nvrtc_wheel=$("$python" -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))' 2>/dev/null || true)
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${nvrtc_wheel}"
note() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$summary"; }
# bounded [SECONDS] CMD...: CMD under min(SECONDS or STAGE_TIMEOUT, time left to the deadline);
# 124 (as timeout) without running it when under 20 s are left.
bounded() {
    local cap=$limit
    if [[ $1 =~ ^[0-9]+$ ]]; then cap=$1; shift; fi
    local left=$(( deadline - $(date +%s) ))
    if [ "$left" -lt 20 ]; then
        echo "== skipped, deadline reached: $*" >>"$summary"
        return 124
    fi
    timeout $(( left < cap ? left : cap )) "$@"
}

note "ctrcl $("$ctrcl" --version 2>&1 | head -1), device $device, size $size, batch $batch"
if [ "$device" = cuda ]; then
    # Into the summary: only 8 files come back from a lent machine.
    nvidia-smi >>"$summary" 2>&1 || note "nvidia-smi failed"
fi
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' \
    >>"$summary" 2>&1 || note "no usable torch in $python"

# 0. Cold and warm start (issue #17 item 1), first because it is the question a fresh card asks:
# a 20-iteration CTRCL pair at the full protocol's size, each variant from an empty kernel cache
# (cold) or from the cache the variant before it filled (warm). Each run's log.jsonl says when its
# first step ended and how many kernels it compiled or loaded, and the seconds compiling
# (`first_step`/`end`); its step-20 losses go along so that serial and parallel compilation can
# be seen to train alike -> coldstart.jsonl. Variants (binary:compile threads:start:cap seconds),
# in order of what they answer: kernels compiled on COMPILE_THREADS threads (ctrcl's patched
# cubecl, CTRCL_COMPILE_THREADS) cold, then warm; cubecl's serial path cold (capped: only whether
# it is slower matters); the LEAN binary (no autotune/fusion) parallel cold and warm. At most
# 480 s in all.
threads=${COMPILE_THREADS:-8}
start_iterations=${START_ITERATIONS:-20}
keep="$scratch/kernels-keep"
if [ -n "$dataset" ] && [ -d "$dataset" ]; then
    kernels="$scratch/kernels"
    variants="$ctrcl:$threads:cold:150 $ctrcl:$threads:warm:60 $ctrcl:1:cold:90"
    [ -n "${LEAN:-}" ] && variants="$variants $LEAN:$threads:cold:120 $LEAN:$threads:warm:60"
    for variant in $variants; do
        IFS=: read -r binary compile start cap <<<"$variant"
        note "start $start, $compile compile threads: $binary"
        [ "$start" = cold ] && rm -rf "$kernels"
        rm -rf "$scratch/start"
        CTRCL_COMPILE_THREADS="$compile" CTRCL_KERNEL_CACHE="$kernels" bounded "$cap" "$binary" train \
            --config "$here/configs/icbm152_ctrcl.toml" --set "data.dataset=$dataset" \
            --set "schedule.iterations=$start_iterations" --set "schedule.validate_every=$start_iterations" \
            --out "$scratch/start" >/dev/null 2>>"$summary"
        status=$?
        note "start $start, $compile compile threads: exit $status"
        grep -h "\"event\":\"\\(first_step\\|end\\)\"\\|\"step\":$start_iterations," "$scratch/start/log.jsonl" 2>/dev/null |
            sed "s|^{|{\"binary\":\"$(basename "$binary")\",\"compile_threads\":$compile,\"start\":\"$start\",|" \
                >>"$out/coldstart.jsonl"
        if [ "$binary" = "$ctrcl" ] && [ "$compile" != 1 ] && [ "$start" = cold ]; then
            parallel_ok=$status
        fi
        if [ "$binary" = "$ctrcl" ] && [ "$start" = warm ] && [ ! -d "$keep" ]; then
            # The main binary's full cache: the later stages start from it, and it comes back.
            mkdir -p "$keep" && cp -r "$kernels/." "$keep/" 2>/dev/null &&
                tar czf "$out/kernels.tar.gz" -C "$keep" . 2>/dev/null
        fi
    done
    rm -rf "$scratch/start" "$kernels"
fi
# The later stages: the kept kernel cache, and the compile pool if its cold start worked.
mkdir -p "$keep"
export CTRCL_KERNEL_CACHE="$keep"
if [ "${parallel_ok:-1}" = 0 ]; then
    export CTRCL_COMPILE_THREADS="$threads"
    note "later stages: $threads compile threads, kernel cache $keep"
else
    note "later stages: serial compilation (the parallel cold start did not finish), kernel cache $keep"
fi

# 1–2. Every student, ctrcl vs PyTorch alternately, f32 then bf16 (torch.autocast beside it).
# Swin-UNet at its default (paper) size: embed 96, heads 3-6-12-24, window 7.
for precision in f32 bf16; do
    note "compare $precision"
    bounded "$python" "$here/bench/pytorch/compare.py" \
        --models unet swin-unet resunet segformer --size "$size" --batch "$batch" --classes 9 \
        --steps "$steps" --warmup 2 --rounds 1 --device "$device" --precision "$precision" \
        --swin-embed 96 --swin-heads 3 6 12 24 --swin-window 7 --ctrcl "$ctrcl" \
        >"$out/compare_$precision.txt" 2>&1
    note "compare $precision: exit $? ($(grep -cE '^(unet|swin-unet|resunet|segformer) ' "$out/compare_$precision.txt") models)"
done

# 3. The CTRCL pair's training step (both students, RLCL + CFCL), f32 and bf16.
note "pair"
for precision in f32 bf16; do
    bounded "$ctrcl" bench --model pair --size "$size" --batch "$batch" --classes 9 \
        --steps "$steps" --warmup 2 --precision "$precision" --json >>"$out/pair.jsonl" 2>>"$summary"
    note "pair $precision: exit $?"
done

# 4. A short real training run on the card, and its test-slab Dice.
if [ -n "$dataset" ] && [ -d "$dataset" ]; then
    note "train $iterations iterations on $dataset"
    bounded "$ctrcl" train --config "$here/configs/icbm152_ctrcl.toml" \
        --set "data.dataset=$dataset" --set "schedule.iterations=$iterations" \
        --out "$scratch/run" >"$scratch/train.log" 2>&1
    note "train: exit $?"
    tail -n 20 "$scratch/train.log" >>"$summary"
    bounded 60 "$ctrcl" test --run "$scratch/run" >"$out/test.txt" 2>&1
    note "test: exit $?"
    cp "$scratch/run/log.jsonl" "$out/train_log.jsonl" 2>/dev/null
    # Checkpoints are large and would not come back; the log and scores do.
    rm -rf "$scratch/run" "$scratch/train.log"
else
    note "no dataset given: training stage skipped"
fi
# The cache as the later stages left it (a superset of stage 0's), for the next session.
[ -n "$(ls -A "$keep" 2>/dev/null)" ] && tar czf "$out/kernels.tar.gz" -C "$keep" . 2>/dev/null
note "done"

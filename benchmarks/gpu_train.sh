#!/usr/bin/env bash
# Train the shipped SmolLM2-135M AHN-GDN adapter on one CUDA GPU at a far larger token budget than a CPU allows,
# in a fixed wall-time budget, then measure it; everything lands in one folder to commit.
#
#   AHN_BASE=<dir of SmolLM2-135M-Instruct> bash benchmarks/gpu_train.sh      (from the repo root)
#
# Settings (environment): OUT (default benchmarks/results/gpu_train), MINUTES (training budget, default 8),
# BATCH (sequences per step, default 16), LENGTH (tokens per sequence, default 4096), STEPS (schedule length,
# default 3000: the time budget stops the run first, a later `--resume` continues the same schedule), RECIPE
# (extra `ahn distill` options, default the recipe chosen by the content A/B of docs/content_memory.md).
# AHN_GPU_SMOKE=1 runs the same script in a few minutes on a CPU (2 steps, short sequences) to check it end to end.
#
# The machine needs the base in a local folder (AHN_BASE; `ahn fetch-default` writes one) and the corpora
# (`ahn corpora`, ~/.cache/modeling_ahn/corpora): a GPU machine without network gets both copied in.
# Not yet run on a GPU (none has been lent). Its CPU smoke mode ran end to end on 2026-12-04 (AMD EPYC 2-core, 1 thread,
# 4 min 53 s: 2 distill steps with the default recipe, adapter exported, content probes written).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${AHN_BASE:-$HOME/.cache/modeling_ahn/smollm2-135m-instruct}"
CORPORA="${AHN_CORPORA:-$HOME/.cache/modeling_ahn/corpora}"
OUT="${OUT:-benchmarks/results/gpu_train}"
MINUTES="${MINUTES:-8}" BATCH="${BATCH:-16}" LENGTH="${LENGTH:-4096}" STEPS="${STEPS:-3000}"
RECIPE="${RECIPE:---objective layer-local --use-q-proj --memory-span 16,8192 --repeat-fraction 0.5 --content-weight 1.0}"
DEVICE=(--bf16) PROBE=(--segments 16) PYTHON="${PYTHON:-python3}"
if [ "${AHN_GPU_SMOKE:-0}" = 1 ]; then
    MINUTES=3 BATCH=1 LENGTH=1024 STEPS=2 DEVICE=(--cpu) PROBE=(--segments 1 --length 2048 --prefix 1024 --gap 1100)
fi
WINDOWS=256,512,1024
[ "$LENGTH" -le 1024 ] && WINDOWS=256,512
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
"$PYTHON" - <<'PY' | tee "$OUT/env.txt"
import platform, torch, transformers
dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
print("torch", torch.__version__, "transformers", transformers.__version__, "device", dev)
PY
# shellcheck disable=SC2086  # RECIPE is a list of options
"$PYTHON" -m modeling_ahn.cli distill --base "$BASE" --data "$CORPORA/train" --eval-data "$CORPORA/heldout/austen" \
    --out "$OUT/run" --ahn-type gdn $RECIPE --max-length "$LENGTH" --min-length "$LENGTH" --split-documents \
    --windows "$WINDOWS" --sinks paper --eval-window 512 --eval-sinks 64 --eval-sequences 4 --lr 1e-3 \
    --warmup-ratio 0.02 --max-steps "$STEPS" --batch-size "$BATCH" --no-activation-checkpointing \
    --eval-every 100000 --save-every 50 --keep-checkpoints 1 --seed 0 --max-minutes "$MINUTES" "${DEVICE[@]}" \
    2>&1 | tee "$OUT/train.txt"
if [ ! -f "$OUT/run/adapter/model.safetensors" ]; then  # stopped by its time budget: export the latest checkpoint
    step=$(ls "$OUT/run/checkpoints" | sed "s/step-0*//" | sort -n | tail -1)
    # shellcheck disable=SC2086
    "$PYTHON" -m modeling_ahn.cli distill --base "$BASE" --data "$CORPORA/train" --eval-data "$CORPORA/heldout/austen" \
        --out "$OUT/run" --ahn-type gdn $RECIPE --max-length "$LENGTH" --min-length "$LENGTH" --split-documents \
        --windows "$WINDOWS" --sinks paper --eval-window 512 --eval-sinks 64 --eval-sequences 4 --lr 1e-3 \
        --warmup-ratio 0.02 --max-steps "$step" --batch-size "$BATCH" --no-activation-checkpointing \
        --eval-every 100000 --save-every 50 --keep-checkpoints 1 --seed 0 "${DEVICE[@]}" --resume 2>&1 \
        | tee -a "$OUT/train.txt"
fi
"$PYTHON" benchmarks/content_probes.py --base "$BASE" --adapter "$OUT/run/adapter" --label trained "${PROBE[@]}" \
    --out "$OUT/content" 2>&1 | tee "$OUT/content.txt"

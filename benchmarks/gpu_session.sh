#!/usr/bin/env bash
# The GPU checks of issue 7 as one prepared script, for a machine with one CUDA GPU and no network (not yet run:
# no GPU was lent to the sessions that wrote it). From the repo root:
#
#   1. here, with network (wheels for Python 3.12, x86_64; the GPU machine has torch but an older transformers):
#        echo /.whl/ >> .git/info/exclude
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#            -d .whl "transformers>=5.23" "huggingface-hub>=1.0" tokenizers safetensors "peft>=0.21" accelerate \
#            flash-linear-attention fla-core einops
#        MAMBA_SKIP_CUDA_BUILD=TRUE MAMBA_FORCE_BUILD=TRUE python3 -m pip wheel --no-deps --no-build-isolation \
#            -w .whl "mamba-ssm==2.3.2.post1"     (its SSD Triton ops, without the CUDA extension nor nvcc)
#   2. there:  bash benchmarks/gpu_session.sh        (OUT=<dir> for the results; default benchmarks/results/gpu)
#
# It installs the carried wheels (if any), runs the CUDA parity tests (fla kernels = torch path), the CUDA-branch
# module (tests/test_cuda_branch.py, which CI runs through Triton's interpreter, here with the kernels compiled and
# autotuned for real: no TRITON_INTERPRET) and the static cache tests, then `ahn bench` on a Qwen2.5-3B-shaped
# random model in bf16 at 32k/64k/128k against full attention and sinks+SWA, eager and compiled (StaticCache /
# StaticAhnCache, CUDA graphs), and the decode roofline (benchmarks/roofline.py), and writes everything under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    SITE="${AHN_GPU_SITE:-$(mktemp -d)}"  # where the carried wheels are installed (a fresh temporary dir by default)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python3 - <<'PY' | tee "$OUT/env.txt"
import torch, transformers
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
print("transformers", transformers.__version__)
import modeling_ahn
print("kernels: gdn", modeling_ahn.kernels_available("gdn"), "dn", modeling_ahn.kernels_available("dn"),
      "mamba2", modeling_ahn.kernels_available("mamba2"))
PY
python3 -m pytest -q -m "not slow" -k cuda -p no:cacheprovider tests/test_memory.py 2>&1 | tee "$OUT/cuda_parity.txt"
env -u TRITON_INTERPRET -u AHN_FORCE_INTERPRETER python3 -m pytest -q -rs --durations=15 -p no:cacheprovider \
    tests/test_cuda_branch.py 2>&1 | tee "$OUT/cuda_branch.txt" || echo "CUDA-branch tests failed: $OUT/cuda_branch.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_static_cache.py 2>&1 | tee "$OUT/static_cache.txt"
python3 -m modeling_ahn.cli bench --base random:qwen2.5-3b --lengths 32k,64k,128k \
    --methods full,sinks_swa,ahn_gdn,full_static,ahn_gdn_static --window 32640 --sinks 128 --chunk 4096 \
    --decode 32 --dtype bfloat16 --device cuda --out "$OUT/bench_gpu.json" --no-progress 2>&1 | tee "$OUT/bench_gpu.txt"
python3 benchmarks/roofline.py "$OUT/bench_gpu.json" 2>&1 | tee "$OUT/roofline.txt"

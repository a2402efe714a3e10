#!/usr/bin/env bash
# GPU readiness in one command (at most 8 minutes): loss parity on the GPU, GCL vs CLIP training steps (bf16, sdpa)
# of a ViT-B/32-sized random CLIP at N = 256 and 1024, tiled vs full GCL loss at N = 16k and 64k; writes a JSON report.
# Without CUDA it runs a reduced mode (tiny sizes, about a minute on 2 cores). See benchmarks/gpu_check.py.
#
#   bash benchmarks/gpu_check.sh [REPORT.json] [--reduced]
set -euo pipefail
cd "$(dirname "$0")/.."
report="${1:-gpu_check.json}"
shift || true
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
python="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then python=.venv/bin/python; fi
timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-480}" "$python" benchmarks/gpu_check.py --output "$report" "$@"

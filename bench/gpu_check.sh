#!/usr/bin/env bash
# The CUDA paths on one GPU with tiny models, no network, under 5 minutes: one line per check.
#   bash bench/gpu_check.sh [--tokenizer DIR] [--data FILE]
# Needs the project's requirements installed (CUDA build of torch, bitsandbytes, ray).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec timeout 300 "$PY" -m bench.gpu_check "$@"

#!/usr/bin/env bash
# The CUDA paths on one GPU with tiny models, no network, a few minutes: one line per check.
#   bash bench/gpu_check.sh [--tokenizer DIR] [--data FILE]
#   bash bench/gpu_check.sh --dry-run     # any machine: parse every argv/config the checks use, no model
# Needs the project's requirements installed (CUDA build of torch, bitsandbytes, ray).
# $PYTHON picks the interpreter (else .venv/bin/python, else python3); $GPU_CHECK_TIMEOUT the
# limit in seconds for the whole run (default 480, inside a 10-minute device call).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m bench.gpu_check "$@"

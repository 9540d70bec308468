#!/usr/bin/env bash
# Kernel check for a lent GPU: correctness at real sizes (B·T = 32k, V = 151,665, bf16) and a markdown
# table of time / bandwidth vs torch eager, torch.compile, Liger-Kernel and the HBM floor.
#   bash tools/gpu_check.sh [--reps N] [--no-compile] [--out FILE] ...   (args go to tools/gpu_check.py)
# Needs torch (CUDA) and triton; the package is used from the checkout (PYTHONPATH=.), nothing installed.
# Liger-Kernel is optional: if not importable, a carried wheel (LIGER_WHEEL=path, or shared/wheels/
# liger_kernel-*.whl) is unpacked into a temporary directory put on PYTHONPATH; else its column is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null || PY=python
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi); nothing to do" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
unset TRITON_INTERPRET MIXED_R1_KERNEL_BACKEND
if ! "$PY" -c "import liger_kernel" >/dev/null 2>&1; then
  WHEEL="${LIGER_WHEEL:-$(ls shared/wheels/liger_kernel-*.whl 2>/dev/null | head -n1 || true)}"
  if [ -n "$WHEEL" ] && [ -f "$WHEEL" ]; then
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    "$PY" -m zipfile -e "$WHEEL" "$TMP" && export PYTHONPATH="$PYTHONPATH:$TMP"
    echo "gpu_check: using Liger-Kernel from $WHEEL"
  fi
fi
"$PY" -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}, cuda {torch.version.cuda}')"
"$PY" tools/gpu_check.py "$@"

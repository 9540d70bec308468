#!/usr/bin/env bash
# Kernel check for a lent GPU: correctness at real sizes (B·T = 32k, V = 151,665, bf16) and a markdown
# table of time / bandwidth vs torch eager, torch.compile, Liger-Kernel and the HBM floor; then the
# one-GPU training check (tools/gpu_train_check.py: two GRPO steps of the tiny Qwen2.5-VL on the
# megatron-core backend over NCCL, bf16 with fp32 masters, HF rollout, weight sync).
#   bash tools/gpu_check.sh [--reps N] [--no-compile] [--out FILE] ...   (args go to tools/gpu_check.py)
# Needs torch (CUDA) and triton; the package is used from the checkout (PYTHONPATH=.), nothing installed.
# Liger-Kernel is optional (its column is skipped without it); megatron-core is needed by the training
# check. Either, when not importable, comes from a carried wheel (LIGER_WHEEL / MEGATRON_WHEEL=path, or
# .whl/ or shared/wheels/<dist>-*.whl).
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
# packages the device image lacks travel as wheels (the device README: pip download --no-deps into
# .whl/ and carry it): each one not importable is unpacked into a temporary dir put on PYTHONPATH
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for spec in liger_kernel:LIGER_WHEEL megatron.core:MEGATRON_WHEEL; do
  mod="${spec%%:*}"; var="${spec##*:}"; dist="${mod%%.*}"; [ "$dist" = megatron ] && dist=megatron_core
  if ! "$PY" -c "import $mod" >/dev/null 2>&1; then
    WHEEL="${!var:-$(ls .whl/${dist}-*.whl shared/wheels/${dist}-*.whl 2>/dev/null | head -n1 || true)}"
    if [ -n "$WHEEL" ] && [ -f "$WHEEL" ]; then
      "$PY" -m zipfile -e "$WHEEL" "$TMP" && export PYTHONPATH="$PYTHONPATH:$TMP"
      echo "gpu_check: using $dist from $WHEEL"
    fi
  fi
done
"$PY" -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}, cuda {torch.version.cuda}')"
"$PY" tools/gpu_check.py "$@"
# the one-GPU training check (megatron-core backend, NCCL world of one, bf16 + fp32 masters, HF
# rollout, weight sync): at most 5 minutes; skipped, saying why, without megatron-core
if "$PY" -c "import megatron.core" >/dev/null 2>&1; then
  timeout 300 "$PY" tools/gpu_train_check.py --device cuda
else
  echo "gpu_check: megatron-core not importable (carry its wheel as MEGATRON_WHEEL or in .whl/); the training check is skipped" >&2
  exit 3
fi

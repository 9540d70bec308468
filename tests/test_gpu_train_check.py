"""tools/gpu_train_check.py, the one-GPU training check of tools/gpu_check.sh, run here on CPU over
gloo: the same code (megatron-core backend, bf16 weights with fp32 masters, HF rollout, weight
sync) at the same tiny size, so the script a lent GPU runs is known to work before it gets one."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_training_check_passes_on_cpu(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_train_check.py"), "--device",
                           "cpu", "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr[-3000:]
    assert "[FAIL]" not in out and out.count("[PASS]") == 7, out
    assert "generator serves the policy's weights 44 tensors" in out
    assert "| 2 |" in out and "checks failed: 0" in out

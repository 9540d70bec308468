"""Collectives that run on NCCL: during a whole GRPO step on the megatron-core backend (TP=2 × DP=2,
bf16, distributed optimizer; 4 gloo ranks) no collective receives a tensor that would live on the
host of a GPU job (see tests/collective_device_checks.py for the CUDA-like device map)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _trainer_util import free_port, make_data



@pytest.mark.multirank
@pytest.mark.slow
def test_every_collective_tensor_is_on_the_device(tmp_path):
    data = make_data(tmp_path / "data")
    script = Path(__file__).parent / "collective_device_checks.py"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--master_port",
         str(free_port()), str(script), str(tmp_path), str(data)],
        capture_output=True, text=True, timeout=900, cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and (tmp_path / "result.json").is_file(), \
        proc.stdout[-3000:] + proc.stderr[-6000:]
    reports = json.loads((tmp_path / "result.json").read_text())
    assert len(reports) == 4
    for r in reports:
        assert r["control_caught"], "the tracker missed a host tensor handed to all_reduce"
        assert r["updates"] == 2 and r["skipped"] == 0
        assert not r["violations"], "\n".join(r["violations"][:5])
        # the step's own collectives were seen: metric/stat reductions, TP log-prob reductions,
        # the weight stream's TP gathers (into its bucket buffer) and the distributed optimizer's
        # reduce-scatter / all-gather
        assert r["seen"].get("all_reduce", 0) >= 10, r["seen"]
        assert r["seen"].get("all_gather_into_tensor", 0) >= 10, r["seen"]
        assert (r["seen"].get("reduce_scatter_tensor", 0) + r["seen"].get("_reduce_scatter_base", 0)
                ) >= 1, r["seen"]

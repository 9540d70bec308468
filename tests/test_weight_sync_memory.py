"""The weight stream never holds the model twice: peak host memory of one sync (tools/
bench_weight_sync.py, rank 0's RSS sampled every millisecond, glibc told to return freed blocks),
streamed into a drain so only the stream's own buffers count. A SmolLM2-shaped model (30 layers,
fp32), 32 MB buckets:

- TP=1: the stream yields views of the parameters — nothing is allocated (< 2% of the model);
- TP=2: one gather buffer per bucket, plus gloo's temporary copy of it inside
  ``all_gather_into_tensor`` (NCCL gathers in place) — at most twice (one bucket + the largest
  unit, here the embedding), far below the model."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _trainer_util import free_port

TOOL = Path(__file__).parents[1] / "tools" / "bench_weight_sync.py"



def _run(tp: int, hidden: int, layers: int) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp), "--master_port",
         str(free_port()), str(TOOL), "--sink", "drain", "--hidden", str(hidden), "--layers", str(layers)],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = dict(re.findall(r"^(\S.*?)\s{2,}([\d.]+)$", proc.stdout, re.M))
    return {k.strip(): float(v) for k, v in rows.items()}


@pytest.mark.slow
def test_stream_at_tp1_allocates_nothing():
    r = _run(1, 576, 12)
    assert r["peak RSS above pre-sync"] < 0.02 * r["model (fp32)"], r


@pytest.mark.slow
@pytest.mark.multirank
def test_stream_at_tp2_holds_one_bucket_and_gloos_copy():
    r = _run(2, 512, 30)  # 407 MB: a second copy of the model could not hide under the bound
    bound = r["bucket"] + r["largest unit (embedding)"]
    assert 2 * bound + 8 < r["model (fp32)"]
    assert r["peak RSS above pre-sync"] <= 2 * bound + 8, r

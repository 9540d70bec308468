"""Weight sync from megatron shards (gloo ranks) into the colocated vLLM engine."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _trainer_util import free_port

SCRIPT = Path(__file__).parent / "rollout" / "sync_checks.py"



def run_sync(tmp_path, tp, pp, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp * pp),
           "--master_port", str(free_port()), str(SCRIPT), str(tmp_path), str(tp), str(pp), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.multirank
@pytest.mark.parametrize("tp,pp", [(1, 2), (2, 1)])
def test_stream_is_bit_exact_hf_weights(tmp_path, tp, pp):
    r = run_sync(tmp_path, tp, pp)
    assert r["names_equal"] and r["bit_exact"] and r["specs_match"]
    assert r["n_buckets"] > 1


@pytest.mark.multirank
@pytest.mark.parametrize("split", [[2, 1], [1, 2]])
def test_stream_uneven_pipeline_split_is_bit_exact_hf_weights(tmp_path, split):
    """3 layers on PP=2 split (2, 1) / (1, 2): each layer streams from the stage that owns it."""
    r = run_sync(tmp_path, 1, 2, "split=" + ",".join(map(str, split)))
    assert r["built_layers"] == split  # megatron built the checkpoint's split (rank r = stage r)
    assert r["stream_layers"] == split
    assert r["names_equal"] and r["bit_exact"] and r["specs_match"]
    assert r["n_buckets"] > 1


@pytest.mark.multirank
@pytest.mark.slow
def test_vllm_after_sync_from_tp2_policy_decodes_like_transformers(tmp_path):
    r = run_sync(tmp_path, 2, 1, "vllm")
    assert r["names_equal"] and r["bit_exact"]
    assert r["after"] == r["hf_b"]            # token for token, float32
    assert r["after"] != r["before"]          # vLLM started from other weights

"""Every example config starts: the 8 x H100 ones on a gloo world of the same TP/PP/DP shape with
the model shrunk (tests/example_twin_checks.py: one GRPO step plus the periodic eval, 8 ranks on
this CPU), the CPU ones as written (a few steps shorter). What a twin changes is listed in
``TWIN`` there; everything else comes from the example's file."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _trainer_util import free_port, make_data

ROOT = Path(__file__).parents[1]
TWIN = Path(__file__).parent / "example_twin_checks.py"



@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"), per_task=3)


GPU_EXAMPLES = ("qwen25vl_7b_8xh100.yaml", "qwen25vl_3b_8xh100.yaml")


@pytest.mark.slow
def test_gpu_examples_step_on_their_gloo_twins(data_file, tmp_path):
    """Both 8 x H100 examples in one 8-rank gloo world, one after the other (TP=2 x DP=4, then
    TP=1 x DP=8): each builds its own layout, steps once and runs its periodic eval."""
    from mixed_r1.config import load_config

    cfgs = {name: load_config(ROOT / "examples" / name) for name in GPU_EXAMPLES}
    for cfg in cfgs.values():
        p = cfg.parallel
        assert p.tensor_parallel * p.pipeline_parallel * p.data_parallel == 8  # one 8-GPU node
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "8",
           "--master_port", str(free_port()), str(TWIN),
           ",".join(str(ROOT / "examples" / name) for name in GPU_EXAMPLES), str(tmp_path),
           str(data_file)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, cfg in cfgs.items():
        p = cfg.parallel
        res = json.loads((tmp_path / Path(name).stem / "result.json").read_text())
        assert res["layout"] == {"world": 8, "tp": p.tensor_parallel,
                                 "pp": p.pipeline_parallel, "dp": p.data_parallel,
                                 "dtype": cfg.model.dtype, "recompute": cfg.model.recompute_mode,
                                 "distributed_optimizer": p.distributed_optimizer,
                                 "mini_batches": cfg.algo.mini_batches}, name
        m, = res["metrics"]
        assert m["update/count"] >= 1 and math.isfinite(m["loss"]) and m["update/rel_change"] > 0
        assert m["eval/n"] == 4 and 0.0 <= m["eval/accuracy"] <= 1.0


@pytest.mark.slow
def test_tiny_cpu_example_steps(data_file, tmp_path):
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    cfg = load_config(ROOT / "examples" / "tiny_cpu.yaml",
                      [f"data.train_file={data_file}", f"out_dir={tmp_path}", "steps=1",
                       "progress=false", "rollout.max_new_tokens=8"])
    tr = build_trainer(cfg, tmp_path)
    m, = tr.train()
    assert math.isfinite(m["reward/total"]) and tr.step_count == 1


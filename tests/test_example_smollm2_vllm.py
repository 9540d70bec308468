"""README's fastest configuration, the SmolLM2 example on vLLM at its own rollout size (its own
file: one of the suite's longest tests, scheduled apart from the other example tests)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

@pytest.mark.slow
def test_smollm2_example_on_vllm_at_its_size(tmp_path):
    """README's fastest configuration: ``examples/smollm2_text_cpu.yaml`` with
    ``rollout.backend=vllm`` at the file's own rollout size (8 prompts x 8 seeded samples,
    32 new tokens), one step through the real CLI. It used to die in vLLM's
    ``_bookkeeping_sync`` ('CPU Generator does not use offset') once the prompts overflowed one
    chunked-prefill step (issue 31, item 1). Float32 compute (bf16 runs several times slower on a
    CPU without AMX/AVX-512; the sampling path is the same)."""
    from _cache import smollm2_hf

    from mixed_r1.config import load_config

    cfg = load_config(ROOT / "examples" / "smollm2_text_cpu.yaml")
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size) == (8, 8)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("VLLM_", "TQDM_", "HF_HUB_DISABLE_PROGRESS"))}
    env.update(OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cli = [sys.executable, "-m", "mixed_r1.cli"]
    subprocess.run(cli + ["data", "synth", "--text", "--out", str(data), "--per-task", "2"],
                   check=True, cwd=ROOT, env=env, capture_output=True, timeout=120)
    proc = subprocess.run(
        cli + ["train", "--config", "examples/smollm2_text_cpu.yaml", "rollout.backend=vllm",
               "steps=1", f"model.path={smollm2_hf()}", f"data.train_file={data / 'text.jsonl'}",
               f"out_dir={tmp_path / 'run'}", "model.dtype=float32",
               "save_optimizer=false"],  # the final checkpoint without 1.1 GB of AdamW state
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "trained to step 1" in proc.stdout
    assert "grpo step 1/1: reward " in proc.stdout  # the per-step line of a non-terminal log
    assert "\r" not in proc.stderr and "it/s]" not in proc.stderr  # no library's tqdm bar
    m, = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert m["response/length_mean"] > 0 and math.isfinite(m["reward/total"])
    n_completions = m["perf/gen_tokens"] / m["response/length_mean"]  # 8 x 8 sampled
    assert n_completions == pytest.approx(64), m

"""A run killed with SIGKILL mid-step and resumed logs the same metrics and ends with the same
weights as an uninterrupted run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _trainer_util import (differing_tensors, exported_weights, make_data, stable_metrics,
                           tiny_overrides, write_config)

ROOT = Path(__file__).resolve().parents[1]


def _cmd(cfg: Path, out: Path, resume: bool = False, world: int = 1) -> list[str]:
    launch = [sys.executable, "-m", "mixed_r1.cli"]
    if world > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                  "--master_port", str(port), "-m", "mixed_r1.cli"]
    cmd = launch + ["train", "--config", str(cfg), f"out_dir={out}"]
    return cmd + (["--resume"] if resume else [])


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_and_resume(tmp_path: Path, extra: list[str], world: int = 1) -> None:
    """Run 4 steps uninterrupted; run again, SIGKILL it (the whole process group) inside step 3,
    resume; metrics and final weights must be identical."""
    from mixed_r1.metrics import read_metrics

    data = make_data(tmp_path / "data")
    cfg = write_config(tmp_path / "cfg.yaml", tiny_overrides(data, tmp_path, steps=4)
                       + ["save_every=1", "keep_last=10", "algo.ppo_epochs=2"] + extra)

    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    subprocess.run(_cmd(cfg, ref_dir, world=world), check=True, env=_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)

    proc = subprocess.Popen(_cmd(cfg, cut_dir, world=world), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    ck2 = cut_dir / "checkpoints" / "step_00000002"
    deadline = time.time() + 400
    while not ck2.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ck2.exists(), "the run never reached its step-2 checkpoint"
    time.sleep(0.3)  # inside step 3
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cut_dir / "model").exists(), "the run finished before it was killed"
    subprocess.run(_cmd(cfg, cut_dir, resume=True, world=world), check=True, env=_env(), cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)

    ref, cut = read_metrics(ref_dir), read_metrics(cut_dir)
    assert [r["step"] for r in cut] == [1, 2, 3, 4]
    assert stable_metrics(ref) == stable_metrics(cut)
    assert any(r.get("adv/abs_mean", 0) > 0 for r in ref[2:]), "nothing was learned after the cut"
    assert differing_tensors(exported_weights(ref_dir), exported_weights(cut_dir)) == []


@pytest.mark.slow  # a training run killed and resumed in subprocesses (45 s here)
@pytest.mark.timeout(900)
def test_sigkill_and_resume_is_exact(tmp_path):
    _kill_and_resume(tmp_path, [])


@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_sigkill_and_resume_is_exact_megatron_distributed_optimizer(tmp_path):
    """The megatron backend at DP=2 with the distributed optimizer, bf16 with fp32 masters: every
    rank restores its model shard, its optimizer shard (masters and moments) and the RNGs."""
    _kill_and_resume(tmp_path, ["parallel.backend=mcore", "parallel.data_parallel=2",
                                "parallel.distributed_optimizer=true", "model.dtype=bfloat16",
                                "model.hidden_size=64", "model.intermediate_size=128",
                                "model.num_heads=4", "model.num_kv_heads=2"], world=2)

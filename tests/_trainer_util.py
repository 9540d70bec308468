"""Shared tiny setup for the trainer tests (a 2-per-task synthetic set, a tiny policy)."""
from __future__ import annotations

from pathlib import Path

TASKS = ("yes_no", "multiple_choice", "chart", "math", "grounding", "open_ended")


def make_data(root: Path, per_task: int = 2) -> Path:
    from mixed_r1.data.synth import SynthConfig, synthesize

    return synthesize(root, SynthConfig(seed=0, sizes={t: per_task for t in TASKS}))


def tiny_overrides(data_file: Path, out_dir: Path, steps: int = 3) -> list[str]:
    return [f"data.train_file={data_file}", f"out_dir={out_dir}", f"steps={steps}",
            "model.hidden_size=32", "model.intermediate_size=64", "model.num_heads=2",
            "model.num_kv_heads=1", "model.vision_hidden=16", "model.vision_depth=1",
            "model.max_pixels=12544", "rollout.prompts_per_step=2", "rollout.group_size=4",
            "rollout.max_new_tokens=6", "algo.micro_batch_size=4", "optim.lr=3e-3",
            "progress=false", "tensorboard=false", "reward.math_timeout_s=2"]

"""The ``reward:`` section of the training config, apart from the rewards themselves so that
``mixed_r1.config`` reads it without importing torch (the BMAS embedder needs torch)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RewardConfig:
    """How Mixed-Reward scores; a ``reward:`` section of the training config."""

    accuracy_weight: float = 1.0
    format_weight: float = 1.0
    iou_threshold: float | None = None  # grounding: 1.0 iff IoU ≥ threshold (None: raw IoU)
    chart_tolerance: float = 0.05  # ChartQA relaxed accuracy
    math_timeout_s: float = 5.0  # hard limit per math-verify check
    sample_timeout_s: float = 10.0  # hard limit per sample in the worker pool
    num_workers: int = 0  # 0: score in the calling process
    bmas_embedder: str = "default"  # "default" (policy table once set, else MiniLM) | "minilm"
    format_requires_answer: bool = False  # an empty <answer></answer> earns no format reward
    # math: a plain-number gold is compared with the last number the answer states (GSM8K's rule),
    # not with an expression's value; restating a question's "97 + 87" does not compute 184
    math_numeric_answer: bool = False

    def __post_init__(self) -> None:
        if self.bmas_embedder not in ("default", "minilm"):
            raise ValueError(f"reward.bmas_embedder: {self.bmas_embedder!r} is not one of "
                             "'default', 'minilm'")
        if self.iou_threshold is not None and not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"reward.iou_threshold must lie in [0, 1], got {self.iou_threshold}")
        if self.num_workers < 0:
            raise ValueError(f"reward.num_workers must be ≥ 0, got {self.num_workers}")

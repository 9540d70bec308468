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
    # task type -> "package.module:function" or "path/file.py:function": adds a task type or
    # replaces a built-in one's accuracy reward (mixed_r1.rewards.custom)
    functions: dict[str, str] | None = None
    # task type -> weight of its samples' total reward (default 1 for every type)
    task_weights: dict[str, float] | None = None

    def __post_init__(self) -> None:
        if self.bmas_embedder not in ("default", "minilm"):
            raise ValueError(f"reward.bmas_embedder: {self.bmas_embedder!r} is not one of "
                             "'default', 'minilm'")
        if self.iou_threshold is not None and not 0.0 <= self.iou_threshold <= 1.0:
            raise ValueError(f"reward.iou_threshold must lie in [0, 1], got {self.iou_threshold}")
        for task, ref in (self.functions or {}).items():
            if not isinstance(task, str) or not task.isidentifier():
                raise ValueError(f"reward.functions: task type {task!r} must be a name "
                                 "(letters, digits, _)")
            if not isinstance(ref, str) or ":" not in ref:
                raise ValueError(f"reward.functions.{task}: {ref!r} is not "
                                 "'package.module:function' or 'path/to/file.py:function'")
        for task, w in (self.task_weights or {}).items():
            if task not in self.task_types:
                raise ValueError(f"reward.task_weights.{task}: unknown task type (known: "
                                 f"{', '.join(self.task_types)})")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
                raise ValueError(f"reward.task_weights.{task} must be a number >= 0, got {w!r}")
        if self.num_workers < 0:
            raise ValueError(f"reward.num_workers must be ≥ 0, got {self.num_workers}")

    @property
    def task_types(self) -> tuple[str, ...]:
        """The built-in task types and those ``functions`` adds, in that order."""
        from mixed_r1.tasks import TASK_TYPES

        return TASK_TYPES + tuple(t for t in (self.functions or {}) if t not in TASK_TYPES)

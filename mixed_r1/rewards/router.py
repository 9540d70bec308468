"""Mixed-Reward: route each sample to its task's accuracy reward and add the format reward.

``total = accuracy_weight · accuracy(task) + format_weight · format``, where accuracy is

=================  =====================================
task type          reward
=================  =====================================
yes_no             :func:`matching_reward`
multiple_choice    :func:`matching_reward` (with options)
chart              :func:`chart_reward`
math               :func:`math_reward`
grounding          :func:`iou_reward` (optionally thresholded)
open_ended         :func:`bmas_reward`
=================  =====================================

Rule-based rewards run in worker processes with a time limit per sample when
``num_workers > 0`` (see :mod:`mixed_r1.rewards.pool`); open-ended samples are embedded in
the calling process, batched, where the policy's embedding table lives.

``reward.functions`` adds task types or replaces a built-in one's accuracy reward with a user
function (:mod:`mixed_r1.rewards.custom`; always in the worker pool, at least one worker), and
``reward.task_weights`` scales a task's whole total: ``total = w_task · (accuracy_weight ·
accuracy + format_weight · format)``.
"""
from __future__ import annotations

import atexit
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from mixed_r1.algo.registry import Registry
from mixed_r1.rewards.bmas import MiniLMEmbedder, TokenEmbedder, bmas_batch
from mixed_r1.rewards.chart import chart_reward
from mixed_r1.rewards.config import RewardConfig
from mixed_r1.rewards.custom import sample_dict
from mixed_r1.rewards.format import format_reward
from mixed_r1.rewards.iou import iou_reward, parse_solution_box
from mixed_r1.rewards.matching import matching_reward
from mixed_r1.rewards.math import gold_error, math_score
from mixed_r1.rewards.pool import ScoringPool
from mixed_r1.tasks import TASK_TYPES

log = logging.getLogger(__name__)



@dataclass
class RewardBatch:
    """Per-sample rewards with their components, for the update and for logging."""

    total: list[float]
    accuracy: list[float]
    format: list[float]
    task_types: list[str]
    failures: int = 0  # samples scored 0 because a reward hung (incl. math-verify's time
    # limit), crashed or raised
    extra: dict[str, Any] = field(default_factory=dict)

    def by_task(self) -> dict[str, dict[str, float]]:
        """Mean total/accuracy/format and count per task type."""
        out: dict[str, dict[str, float]] = {}
        for task in dict.fromkeys(self.task_types):
            idx = [i for i, t in enumerate(self.task_types) if t == task]
            out[task] = {
                "count": float(len(idx)),
                "total": sum(self.total[i] for i in idx) / len(idx),
                "accuracy": sum(self.accuracy[i] for i in idx) / len(idx),
                "format": sum(self.format[i] for i in idx) / len(idx),
            }
        return out

    def metrics(self, prefix: str = "reward") -> dict[str, float]:
        """Flat metrics: ``reward/total``, ``reward/format``, ``reward/<task>/accuracy`` …"""
        n = max(len(self.total), 1)
        flat = {f"{prefix}/total": sum(self.total) / n, f"{prefix}/accuracy": sum(self.accuracy) / n,
                f"{prefix}/format": sum(self.format) / n, f"{prefix}/failures": float(self.failures)}
        for task, stats in self.by_task().items():
            for key in ("total", "accuracy", "format"):
                flat[f"{prefix}/{task}/{key}"] = stats[key]
        for task, comps in self.extra.get("components", {}).items():  # custom functions' parts
            for name, value in comps.items():
                flat[f"{prefix}/{task}/{name}"] = value
        return flat


def _field(sample: Any, key: str, default: Any = None) -> Any:
    if isinstance(sample, Mapping):
        return sample.get(key, default)
    return getattr(sample, key, default)


TASK_REWARDS = Registry("task reward")
"""Rule-based accuracy rewards by task type: ``fn(completion, solution, options, cfg) -> float``
(NaN: the check did not finish). ``open_ended`` is scored in batches by BMAS, not here."""


@TASK_REWARDS.register("yes_no", "multiple_choice")
def _matching(completion: str, solution: Any, options: Any, cfg: dict[str, Any]) -> float:
    return matching_reward(completion, solution, options)


@TASK_REWARDS.register("chart")
def _chart(completion: str, solution: Any, options: Any, cfg: dict[str, Any]) -> float:
    return chart_reward(completion, solution, tolerance=cfg["chart_tolerance"])


@TASK_REWARDS.register("math")
def _math(completion: str, solution: Any, options: Any, cfg: dict[str, Any]) -> float:
    value = math_score(completion, solution, timeout_s=cfg["math_timeout_s"],
                       numeric_answer=cfg.get("math_numeric_answer", False))
    return float("nan") if value is None else value


@TASK_REWARDS.register("grounding")
def _grounding(completion: str, solution: Any, options: Any, cfg: dict[str, Any]) -> float:
    return iou_reward(completion, solution, threshold=cfg["iou_threshold"])


def score_item(payload: tuple, cfg: dict[str, Any]) -> Any:
    """What a reward worker computes for one item: a built-in rule's float
    (:func:`score_rule`), or for ``("custom", ref, completion, sample)`` the user function's
    ``(score, components)`` (:func:`mixed_r1.rewards.custom.score_custom`)."""
    if payload[0] == "custom":
        from mixed_r1.rewards.custom import score_custom

        _, ref, completion, sample = payload
        return score_custom(ref, completion, sample)
    return score_rule(payload, cfg)


def score_rule(payload: tuple[str, str, Any, Any], cfg: dict[str, Any]) -> float:
    """Accuracy reward of one non-open-ended sample: ``(task, completion, solution, options)``,
    by the task's rule in :data:`TASK_REWARDS` (ValueError for a task without one).

    NaN when the check did not finish (a math-verify check past ``math_timeout_s`` or crashed):
    the caller scores it 0 and counts it in ``RewardBatch.failures``, in-process and in the pool.
    """
    task, completion, solution, options = payload
    if task not in TASK_REWARDS:
        raise ValueError(f"no rule-based reward for task type {task!r}")
    return TASK_REWARDS[task](completion, solution, options, cfg)


class MixedReward:
    """``MixedReward(config)(completions, samples) -> RewardBatch``.

    ``samples`` are dicts or objects with ``task_type``, ``solution`` and, for multiple
    choice, ``options``. An unknown task type or an invalid solution is a data error and
    raises ``ValueError`` naming the sample; model output never raises.
    """

    def __init__(self, config: RewardConfig | None = None,
                 embedder: TokenEmbedder | None = None) -> None:
        self.config = config or RewardConfig()
        self.embedder = embedder
        self._minilm: TokenEmbedder | None = None
        self._pool: ScoringPool | None = None
        self._cfg = asdict(self.config)
        self.functions = dict(self.config.functions or {})
        self.task_types = self.config.task_types
        if self.functions:  # every reference resolves now, not in a worker mid-run
            from mixed_r1.rewards.custom import load_function

            for task, ref in self.functions.items():
                try:
                    load_function(ref)
                except ValueError as exc:
                    raise ValueError(f"reward.functions.{task}: {exc}") from None

    # ------------------------------------------------------------------------ validation
    def _check(self, samples: Sequence[Any]) -> list[str]:
        tasks = []
        for i, sample in enumerate(samples):
            task = _field(sample, "task_type")
            if task not in self.task_types:
                sid = _field(sample, "id", "?")
                raise ValueError(f"MixedReward: sample {i} (id={sid}) has unknown task type "
                                 f"{task!r}; expected one of {', '.join(self.task_types)} (a new "
                                 "task type needs a reward: reward.functions)")
            if task in self.functions:  # the user's function judges its own solutions
                tasks.append(task)
                continue
            if task == "grounding":
                try:
                    parse_solution_box(_field(sample, "solution"))
                except ValueError as exc:
                    raise ValueError(f"MixedReward: sample {i} (id={_field(sample, 'id', '?')})"
                                     f": {exc}") from None
            if task == "math":
                problem = gold_error(_field(sample, "solution"))
                if problem is not None:
                    raise ValueError(f"MixedReward: sample {i} (id={_field(sample, 'id', '?')})"
                                     f": math solution {_field(sample, 'solution')!r}: {problem}")
            tasks.append(task)
        return tasks

    def _bmas_embedder(self) -> TokenEmbedder | None:
        if self.embedder is not None or self.config.bmas_embedder == "default":
            return self.embedder  # None → bmas' process default (policy table or MiniLM)
        if self._minilm is None:
            self._minilm = MiniLMEmbedder()
        return self._minilm

    # --------------------------------------------------------------------------- scoring
    def __call__(self, completions: Sequence[str], samples: Sequence[Any]) -> RewardBatch:
        if len(completions) != len(samples):
            raise ValueError(f"MixedReward: {len(completions)} completions for "
                             f"{len(samples)} samples")
        tasks = self._check(samples)
        failures = 0
        accuracy = [0.0] * len(samples)
        components: dict[str, dict[str, list[float]]] = {}
        custom_items = [(i, ("custom", self.functions[tasks[i]], completions[i], sample_dict(s)))
                        for i, s in enumerate(samples) if tasks[i] in self.functions]
        rule_items = [(i, (tasks[i], completions[i], _field(s, "solution"), _field(s, "options")))
                      for i, s in enumerate(samples)
                      if tasks[i] != "open_ended" and tasks[i] not in self.functions]
        pooled = custom_items + (rule_items if self.config.num_workers > 0 else [])
        if pooled:
            pool = self._get_pool()
            before = pool.failures
            for i, value in pool.map(pooled).items():
                if isinstance(value, tuple):  # a custom function's (score, components)
                    value, comps = value
                    for name, v in comps.items():
                        components.setdefault(tasks[i], {}).setdefault(name, []).append(v)
                accuracy[i] = float(value)
            failures += pool.failures - before
        if self.config.num_workers == 0:  # built-in rules in process (they never hang)
            for i, payload in rule_items:
                try:
                    value = score_rule(payload, self._cfg)
                except Exception as exc:  # rules never raise on model output; be sure
                    failures += 1
                    log.warning("reward for sample %d scored 0: %s", i, exc)
                    continue
                if value != value:  # NaN: the check hit its time limit or crashed (logged)
                    failures += 1
                    value = 0.0
                accuracy[i] = value
        open_idx = [i for i, t in enumerate(tasks)
                    if t == "open_ended" and t not in self.functions]
        if open_idx:
            try:
                scores = bmas_batch([completions[i] for i in open_idx],
                                    [str(_field(samples[i], "solution")) for i in open_idx],
                                    self._bmas_embedder())
            except Exception as exc:
                failures += len(open_idx)
                log.warning("open-ended rewards scored 0: %s", exc)
                scores = [0.0] * len(open_idx)
            for i, value in zip(open_idx, scores):
                accuracy[i] = value
        accuracy = [v if math.isfinite(v) else 0.0 for v in accuracy]
        fmt = [format_reward(c, require_answer=self.config.format_requires_answer)
               for c in completions]
        cfg = self.config
        weights = cfg.task_weights or {}
        total = [weights.get(t, 1.0) * (cfg.accuracy_weight * a + cfg.format_weight * f)
                 for a, f, t in zip(accuracy, fmt, tasks)]
        extra = {"components": {t: {n: sum(v) / len(v) for n, v in c.items()}
                                for t, c in components.items()}} if components else {}
        return RewardBatch(total=total, accuracy=accuracy, format=fmt, task_types=tasks,
                           failures=failures, extra=extra)

    def _get_pool(self) -> ScoringPool:
        if self._pool is None:
            self._pool = ScoringPool(partial(score_item, cfg=self._cfg),
                                     max(1, self.config.num_workers),
                                     timeout_s=self.config.sample_timeout_s)
            atexit.register(self.close)
        return self._pool

    def close(self) -> None:
        """Stop the worker pool (also done at exit)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

"""User reward functions (``reward.functions: {task_type: "module:function"}``).

A function ``fn(completion: str, sample: dict) -> float | dict`` scores one completion of one
sample: ``sample`` holds the sample's ``id``, ``task_type``, ``question``, ``solution``,
``options``, ``images`` (paths) and ``meta``. It returns the accuracy reward as a number, or a
dict with the reward under ``"score"`` and any other numbers as named components, logged as
``reward/<task>/<name>`` (verl's ``compute_score`` convention). It may add a task type or
replace a built-in task's accuracy reward; the format reward and the weights apply as for the
built-ins.

The reference is ``package.module:function`` (imported) or ``path/to/file.py:function`` (loaded
from the file, relative to the working directory). Custom functions always run in the reward
worker processes (:class:`~mixed_r1.rewards.pool.ScoringPool`; one worker when
``reward.num_workers`` is 0), so a function that raises, returns something else or runs past
``reward.sample_timeout_s`` scores 0 and is counted in ``reward/failures``; the first traceback is
logged once.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

SAMPLE_KEYS = ("id", "task_type", "question", "solution", "options", "images", "meta")


class RewardFunctionError(ValueError):
    """A ``reward.functions`` entry that does not name an importable callable."""


def split_ref(ref: str) -> tuple[str, str]:
    """``(module or file, function name)`` of ``"module:function"``; RewardFunctionError when
    the reference has no ``:`` or an empty side."""
    module, sep, name = str(ref).rpartition(":")
    if not sep or not module or not name.isidentifier():
        raise RewardFunctionError(f"{ref!r} is not 'package.module:function' or "
                                  "'path/to/file.py:function'")
    return module, name


@lru_cache(maxsize=None)
def load_function(ref: str) -> Callable[[str, dict], Any]:
    """The callable ``ref`` names (imported once per process); RewardFunctionError saying what
    is missing."""
    module, name = split_ref(ref)
    if module.endswith(".py") or "/" in module or "\\" in module:
        path = Path(module)
        if not path.is_file():
            raise RewardFunctionError(f"{ref!r}: no file {path}")
        mod_name = f"mixed_r1_user_reward_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise RewardFunctionError(f"{ref!r}: {path} is not a Python file")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as exc:
            del sys.modules[mod_name]
            raise RewardFunctionError(f"{ref!r}: importing {path} failed: "
                                      f"{type(exc).__name__}: {exc}") from None
    else:
        try:
            mod = importlib.import_module(module)
        except Exception as exc:
            raise RewardFunctionError(f"{ref!r}: cannot import {module}: "
                                      f"{type(exc).__name__}: {exc}") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise RewardFunctionError(f"{ref!r}: {module} has no function {name}")
    return fn


def sample_dict(sample: Any) -> dict:
    """The fields a custom function sees (:data:`SAMPLE_KEYS`), from a Sample or a mapping."""
    get = sample.get if isinstance(sample, Mapping) else (lambda k: getattr(sample, k, None))
    out = {k: get(k) for k in SAMPLE_KEYS}
    out["images"] = list(out["images"] or [])
    out["meta"] = dict(out["meta"] or {})
    return out


def normalise_result(value: Any) -> tuple[float, dict[str, float]]:
    """``(score, components)`` of a function's return; TypeError/ValueError for anything but a
    finite number or a dict with a finite ``"score"`` and numeric other values."""
    if isinstance(value, Mapping):
        if "score" not in value:
            raise ValueError(f"a dict result needs a 'score' key, got keys {sorted(value)}")
        score = value["score"]
        comps = {str(k): float(v) for k, v in value.items() if k != "score"}
    else:
        score, comps = value, {}
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise TypeError(f"a reward must be a number, got {type(score).__name__}")
    score = float(score)
    if not math.isfinite(score) or not all(math.isfinite(v) for v in comps.values()):
        raise ValueError(f"a reward must be finite, got {value!r}")
    return score, comps


def score_custom(ref: str, completion: str, sample: dict) -> tuple[float, dict[str, float]]:
    """Call the function ``ref`` names on one completion; its ``(score, components)``."""
    return normalise_result(load_function(ref)(completion, sample))


__all__ = ["RewardFunctionError", "SAMPLE_KEYS", "load_function", "normalise_result",
           "sample_dict", "score_custom", "split_ref"]

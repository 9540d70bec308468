"""Mixed-Reward: one accuracy reward per task type plus a format reward.

Every reward is a pure, deterministic function of text that never raises on model output.
The answer a reward reads is the text inside the last ``<answer>…</answer>``; without an answer
tag, the answer the completion states last (see :func:`~mixed_r1.rewards.parsing.answer_span`).

The names below are imported on first use (PEP 562), so the data layer can use the light
submodules (``parsing``, ``latex``, ``math``) without loading torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MiniLMEmbedder": "bmas", "TableEmbedder": "bmas", "set_default_embedder": "bmas",
    "bmas_batch": "bmas", "bmas_reward": "bmas", "chart_reward": "chart",
    "format_reward": "format", "box_iou": "iou", "iou_reward": "iou", "math_reward": "math",
    "matching_reward": "matching", "extract_answer": "parsing", "answer_span": "parsing",
    "TASK_TYPES": "router", "MixedReward": "router", "RewardBatch": "router",
    "RewardConfig": "config",
}

__all__ = [
    "TASK_TYPES", "MixedReward", "RewardBatch", "RewardConfig", "MiniLMEmbedder",
    "TableEmbedder", "set_default_embedder", "bmas_batch", "bmas_reward", "box_iou",
    "chart_reward", "extract_answer", "answer_span", "format_reward", "iou_reward",
    "math_reward", "matching_reward",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

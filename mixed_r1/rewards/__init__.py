"""Mixed-Reward: one accuracy reward per task type plus a format reward.

Every reward is a pure, deterministic function of text that never raises on model output.
The answer a reward reads is the text inside the last ``<answer>…</answer>``, or the whole
completion where there is none.
"""
from mixed_r1.rewards.bmas import (MiniLMEmbedder, TableEmbedder, bmas_batch, bmas_reward,
                                   set_default_embedder)
from mixed_r1.rewards.chart import chart_reward
from mixed_r1.rewards.format import format_reward
from mixed_r1.rewards.iou import box_iou, iou_reward
from mixed_r1.rewards.math import math_reward
from mixed_r1.rewards.matching import matching_reward
from mixed_r1.rewards.parsing import extract_answer
from mixed_r1.rewards.router import TASK_TYPES, MixedReward, RewardBatch, RewardConfig

__all__ = [
    "TASK_TYPES", "MixedReward", "RewardBatch", "RewardConfig", "MiniLMEmbedder",
    "TableEmbedder", "set_default_embedder", "bmas_batch", "bmas_reward", "box_iou",
    "chart_reward", "extract_answer", "format_reward", "iou_reward", "math_reward",
    "matching_reward",
]

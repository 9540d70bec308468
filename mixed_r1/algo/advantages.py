"""Group-relative advantages (GRPO, Dr.GRPO, batch-scaled)."""
from __future__ import annotations

from typing import Literal

import torch

from .registry import Registry

ScaleRewards = Literal["group", "batch", "none"]


def _group_ids(num: int, group_size: int | None, index: torch.Tensor | None, device) -> torch.Tensor:
    if index is not None:
        if index.shape != (num,):
            raise ValueError(f"index must have shape ({num},), got {tuple(index.shape)}")
        return torch.unique(index, return_inverse=True)[1].to(device)
    if group_size is None or group_size < 1 or num % group_size:
        raise ValueError(f"group_size={group_size} must be >= 1 and divide the batch size {num}")
    return torch.arange(num, device=device) // group_size


def grpo_advantages(
    rewards: torch.Tensor,
    group_size: int | None = None,
    *,
    index: torch.Tensor | None = None,
    scale_rewards: ScaleRewards = "group",
    eps: float = 1e-4,
) -> torch.Tensor:
    """A_i = (r_i - mean_{g(i)} r) / (std + eps).

    Groups are consecutive blocks of ``group_size`` samples, or the distinct values of ``index``.
    ``scale_rewards``: "group" divides by the group's std (GRPO), "batch" by the std of all
    rewards in the batch, "none" does not divide (Dr.GRPO). Stds are unbiased (as torch.std and TRL);
    a singleton group has advantage 0.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; expected group, batch or none")
    r = rewards.to(torch.float64) if rewards.dtype == torch.float64 else rewards.float()
    gid = _group_ids(r.numel(), group_size, index, r.device)
    ngroups = int(gid.max()) + 1 if r.numel() else 0
    count = torch.zeros(ngroups, dtype=r.dtype, device=r.device).index_add_(0, gid, torch.ones_like(r))
    mean = torch.zeros_like(count).index_add_(0, gid, r) / count
    centered = r - mean[gid]
    if scale_rewards == "none":
        return centered
    if scale_rewards == "batch":
        std = r.std() if r.numel() > 1 else r.new_tensor(0.0)
        return centered / (std + eps)
    sq = torch.zeros_like(count).index_add_(0, gid, centered.square())
    std = torch.where(count > 1, (sq / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(count))
    return centered / (std[gid] + eps)


ADVANTAGE_ESTIMATORS = Registry("advantage estimator")


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_group_scaled(rewards: torch.Tensor, group_size: int | None = None, **kw) -> torch.Tensor:
    """GRPO (Shao et al., 2024): centred by the group mean, divided by the group's std."""
    return grpo_advantages(rewards, group_size, scale_rewards="group", **kw)


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_size: int | None = None, **kw) -> torch.Tensor:
    """Dr. GRPO (Liu et al., 2025): centred by the group mean, not divided by a std."""
    return grpo_advantages(rewards, group_size, scale_rewards="none", **kw)


@ADVANTAGE_ESTIMATORS.register("grpo_batch")
def grpo_batch_scaled(rewards: torch.Tensor, group_size: int | None = None, **kw) -> torch.Tensor:
    """Centred by the group mean, divided by the std of the whole batch (TRL's
    ``scale_rewards="batch"``)."""
    return grpo_advantages(rewards, group_size, scale_rewards="batch", **kw)


def compute_advantages(name: str, rewards: torch.Tensor, group_size: int | None = None, **kw) -> torch.Tensor:
    """Registry lookup: ``name`` in :data:`ADVANTAGE_ESTIMATORS` (ValueError naming the known ones)."""
    return ADVANTAGE_ESTIMATORS.get(name)(rewards, group_size, **kw)

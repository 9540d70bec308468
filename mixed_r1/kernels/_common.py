"""Dispatch helpers and input checks shared by the ops."""
from __future__ import annotations

import torch

from . import _torch_impl
from ._backend import use_triton


def impl(t: torch.Tensor):
    if use_triton(t):
        from . import _triton_kernels
        return _triton_kernels
    return _torch_impl


def check_logits_targets(logits: torch.Tensor, targets: torch.Tensor, temperature: float, name: str = "logits"):
    if logits.dim() != 3:
        raise ValueError(f"{name} must be [B, T, V], got shape {tuple(logits.shape)}")
    check_targets(targets, logits.shape[:2], temperature)


def check_targets(targets: torch.Tensor, bt: tuple[int, ...], temperature: float) -> None:
    """``targets`` is an integer [B, T] tensor matching the scores' leading dims; temperature > 0."""
    if targets.shape != bt:
        raise ValueError(f"targets must be [B, T] = {tuple(bt)}, got {tuple(targets.shape)}")
    if targets.dtype.is_floating_point:
        raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def check_target_range(targets: torch.Tensor, V: int, mask: torch.Tensor | None = None) -> None:
    """Targets must index the vocab (where ``mask`` is set); one small reduction, checked on the host."""
    if not targets.numel():
        return
    t = targets if mask is None else torch.where(mask.bool(), targets, torch.zeros_like(targets))
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= V:
        raise ValueError(f"targets must lie in [0, {V}) (vocab size) where used; got range [{lo}, {hi}]")


def grad_buffer(logits: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Where the logits gradient goes: the logits buffer itself (in place) or a fresh one (same dtype)."""
    if inplace and (logits.is_contiguous() or use_triton(logits)):
        return logits.detach()
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)

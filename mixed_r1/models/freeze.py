"""Frozen parts of a policy: ``model.freeze_vision_tower``, ``model.freeze_merger`` and
``model.freeze_language_model`` (:class:`mixed_r1.config.ModelConfig`).

The three parts of a Qwen2.5-VL policy, by module:

- **vision tower**: the vision transformer ``visual`` without its merger (``patch_embed``,
  ``blocks``);
- **merger**: ``visual.merger``, the MLP that projects each 2x2 group of patches into the
  language model's width (LLaVA's "projector");
- **language model**: every parameter outside ``visual``: the token embeddings, decoder layers,
  final norm and LM head (a head tied to the embeddings is the same tensor, so it freezes with
  them).

Where ``visual`` lives: ``model.visual`` in transformers 5's
``Qwen2_5_VLForConditionalGeneration``; ``visual`` in the older HF layout and in the megatron
policy (:class:`~mixed_r1.models.qwen25vl.model.Qwen25VLPolicy`, where it is None on pipeline
stages past the first). A text LM, or a megatron ``GPTModel``, is all language model.

The rule (:func:`apply_freeze`): a frozen parameter gets ``requires_grad = False`` before the
engine is built. The HF engine builds AdamW (and its fp32 masters) over the parameters that
require grad; megatron-core's DDP gives gradient buffers, and its optimizer main parameters and
moments, only to those too. So a frozen parameter has no gradient and no optimizer state, and
its weights stay bit-identical through every step; the weight sync leaves it out after the
first full sync where the generator takes partial updates (:mod:`mixed_r1.rollout.weight_sync`).
"""
from __future__ import annotations

from typing import Any

import torch

PARTS = ("vision_tower", "merger", "language_model")


class NothingToTrainError(ValueError):
    """The freeze keys leave a model (or a megatron stage) no parameter to train: a user's
    config error (the trainer reports it as one line)."""


def vision_module(model: torch.nn.Module) -> torch.nn.Module | None:
    """The vision transformer of ``model`` (``model.visual`` or ``visual``), None without one."""
    for path in (("model", "visual"), ("visual",)):
        m: Any = model
        for part in path:
            m = getattr(m, part, None)
            if m is None:
                break
        if isinstance(m, torch.nn.Module):
            return m
    return None


def model_parts(model: torch.nn.Module) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """``{part: [(name, parameter), ...]}`` for the :data:`PARTS` (each parameter once, tied
    weights under their first name; see the module docstring for the rule)."""
    visual = vision_module(model)
    merger_ids: set[int] = set()
    vision_ids: set[int] = set()
    if visual is not None:
        merger = getattr(visual, "merger", None)
        if merger is not None:
            merger_ids = {id(p) for p in merger.parameters()}
        vision_ids = {id(p) for p in visual.parameters()} - merger_ids
    out: dict[str, list[tuple[str, torch.nn.Parameter]]] = {k: [] for k in PARTS}
    for name, p in model.named_parameters():
        part = ("merger" if id(p) in merger_ids else
                "vision_tower" if id(p) in vision_ids else "language_model")
        out[part].append((name, p))
    return out


def apply_freeze(model: torch.nn.Module, cfg: Any) -> dict[str, int]:
    """Set ``requires_grad = False`` on the parts ``cfg`` freezes (``cfg``: anything with the
    bools ``freeze_vision_tower``, ``freeze_merger``, ``freeze_language_model``, e.g. a
    :class:`~mixed_r1.config.ModelConfig`); other parameters are left as they are. Call it before
    the engine builds its optimizer.

    Returns element counts: ``{"vision_tower": n, "merger": n, "language_model": n}`` frozen by
    this call per part (0 for a part not frozen or absent: a text LM has no vision parts, a
    megatron stage past the first has none either) and ``"trainable"``, the elements still
    requiring grad. Raises :class:`NothingToTrainError` when nothing would be left to train."""
    want = {"vision_tower": bool(getattr(cfg, "freeze_vision_tower", False)),
            "merger": bool(getattr(cfg, "freeze_merger", False)),
            "language_model": bool(getattr(cfg, "freeze_language_model", False))}
    counts = {k: 0 for k in PARTS}
    parts = model_parts(model)
    for part, named in parts.items():
        if not want[part]:
            continue
        for _, p in named:
            if p.requires_grad:
                counts[part] += p.numel()
            p.requires_grad_(False)
    counts["trainable"] = sum(p.numel() for named in parts.values() for _, p in named
                              if p.requires_grad)
    if any(want.values()) and counts["trainable"] == 0:
        frozen = ", ".join(f"model.freeze_{k}" for k, v in want.items() if v)
        raise NothingToTrainError(f"{frozen} leave {type(model).__name__} nothing to train")
    return counts


def part_lr_mults(model: torch.nn.Module, optim_cfg: Any) -> dict[int, float]:
    """``{id(parameter): multiplier}`` for the parameters whose peak learning rate is not
    ``optim.lr``: the vision tower's ``optim.vision_lr / optim.lr`` and the merger's
    ``optim.merger_lr / optim.lr`` (:class:`mixed_r1.config.OptimConfig`); {} when neither is set.
    Engines put each multiplier in its own optimizer param group (``lr_mult``) and set that
    group's rate to ``lr_mult x`` the schedule's rate at every step."""
    lr = float(optim_cfg.lr)
    out: dict[int, float] = {}
    for part, key in (("vision_tower", "vision_lr"), ("merger", "merger_lr")):
        peak = getattr(optim_cfg, key, None)
        if peak is None or float(peak) == lr:
            continue
        for _, p in model_parts(model)[part]:
            out[id(p)] = float(peak) / lr
    return out


__all__ = ["PARTS", "NothingToTrainError", "apply_freeze", "model_parts", "part_lr_mults",
           "vision_module"]

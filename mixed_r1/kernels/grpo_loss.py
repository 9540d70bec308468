"""grpo_loss: the GRPO loss straight from logits, fused with the log-prob gather.

The forward makes one pass per row (online max/sum-exp/entropy + target gather); on the token-level
Triton path the same program then writes the loss gradient for that row (its coefficient depends only on
row-local values and the precomputed aggregation weight), so backward only rescales by the upstream
gradient. The sequence-level (GSPO) path and the torch path get d loss / d logp from ``mixed_r1.algo`` on
the small [B, T] tensors and write d logits with one more pass. No [B, T, V] float32 buffer is built;
the gradient buffer has the logits' dtype (or is the logits buffer with ``inplace=True``).
"""
from __future__ import annotations

import torch

from ..algo.policy_loss import (
    KL_LOG_RATIO_BOUND,
    LOSS_AGGREGATIONS,
    aggregation_weights,
    compute_policy_loss,
)
from ._backend import rows_view, use_triton
from ._common import check_logits_targets, check_target_range, grad_buffer, impl


class GRPOLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, advantages, mask, old_logp, ref_logp, rollout_logp, cfg: dict):
        x = rows_view(logits)
        B, T, _ = x.shape
        temperature = cfg["temperature"]
        mask_f = mask.to(torch.float32)
        need_grad = cfg["need_grad"]
        # the fused kernel does token-level ratios without rollout importance weights
        fused = use_triton(x) and cfg["importance_level"] == "token" and rollout_logp is None
        grad = None
        if fused:
            from . import _triton_kernels as tk
            w = aggregation_weights(mask_f, cfg["loss_type"], max_completion_length=cfg["max_completion_length"],
                                    num_items=cfg["num_items"])
            grad = grad_buffer(x, cfg["inplace"]) if need_grad else None
            logp, lse, ent = tk.grpo_fused(x, grad, targets, advantages, old_logp, ref_logp, w, temperature,
                                           cfg["beta"], cfg["eps_low"], cfg["eps_high"], KL_LOG_RATIO_BOUND)
            logp, ent = logp.view(B, T), ent.view(B, T)
            loss, metrics = _algo_loss(logp, advantages, mask_f, old_logp, ref_logp, ent, None, cfg)
        else:
            ops = impl(x)
            m, s, z, tx = ops.row_stats(x, targets, temperature)
            lse = m + torch.log(s)
            logp = (tx - lse).view(B, T)
            ent = (lse - z / s).view(B, T)
            with torch.enable_grad():
                leaf = logp.detach().requires_grad_(True)
                loss, metrics = _algo_loss(leaf, advantages, mask_f, old_logp, ref_logp, ent,
                                           rollout_logp, cfg)
                dlogp = torch.autograd.grad(loss, leaf)[0] if need_grad else None
            loss = loss.detach()
            if need_grad:
                grad = grad_buffer(x, cfg["inplace"])
                ops.softmax_grad(x, grad, targets, lse, dlogp * mask_f, temperature)
        ctx.grad = grad
        metrics = {k: v.detach() for k, v in metrics.items()}
        metrics["logprobs"] = logp.detach()
        ctx.mark_non_differentiable(*metrics.values())
        return loss, metrics

    @staticmethod
    def backward(ctx, grad_loss, *_):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("grpo_loss backward called twice or without a gradient buffer")
        ctx.grad = None
        if not torch.all(grad_loss == 1):
            grad.mul_(grad_loss.to(grad.dtype))
        return grad, None, None, None, None, None, None, None


def _algo_loss(logp, advantages, mask_f, old_logp, ref_logp, ent, rollout_logp, cfg):
    return compute_policy_loss(
        logp, advantages.float(), mask_f, old_logp.float() if old_logp is not None else None,
        ref_logp.float() if ref_logp is not None else None, beta=cfg["beta"], eps_low=cfg["eps_low"],
        eps_high=cfg["eps_high"], loss_type=cfg["loss_type"], importance_level=cfg["importance_level"],
        max_completion_length=cfg["max_completion_length"], num_items=cfg["num_items"], entropy=ent,
        rollout_logp=None if rollout_logp is None else rollout_logp.float(),
        rollout_is_cap=cfg["rollout_is_cap"])


def grpo_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    *,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    temperature: float = 1.0,
    loss_type: str = "dapo",
    importance_level: str = "token",
    max_completion_length: int | None = None,
    num_items: float | None = None,
    inplace: bool = False,
    rollout_logprobs: torch.Tensor | None = None,
    rollout_is_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss from logits [B, T, V] (row t scores targets[t]).

    logp = log softmax(logits/T)[targets]; r = exp(logp - old) (token) or exp(masked_mean_t(logp - old))
    (``importance_level="sequence"``, GSPO), old = logp.detach() when ``old_logprobs`` is None;
    per-token loss = -min(r A, clip(r, 1-eps_low, 1+eps_high) A) + beta * k3(logp, ref), the k3 log-ratio
    clamped to +-20 (``mixed_r1.algo.KL_LOG_RATIO_BOUND``, verl's bound) before exp;
    loss = aggregate over ``mask`` by ``loss_type`` (grpo, bnpo, dr_grpo: / (B * T), dapo: / masked
    tokens or ``num_items``). Masked positions never reach exp: the loss is that of the same batch with
    ordinary values there and their logits get a zero gradient (both backends). Returns (loss, metrics)
    with detached clip_frac_low/high, clip_frac, ratio_mean/min/max, kl_mean and kl_clamp_frac (when
    ref_logprobs given), entropy and the per-token ``logprobs``.
    ``inplace``: the forward writes the logits gradient into the logits buffer (destroys the logits).
    ``rollout_logprobs`` [B, T] + ``rollout_is_cap`` C: truncated importance sampling, each token's
    surrogate weighted by min(exp(old − rollout), C) (:func:`mixed_r1.algo.compute_policy_loss`);
    that path uses the unfused kernels.
    """
    check_logits_targets(logits, targets, temperature)
    B, T = targets.shape
    if advantages.shape != (B,):
        raise ValueError(f"advantages must be [B] = ({B},), got {tuple(advantages.shape)}")
    if mask.shape != (B, T):
        raise ValueError(f"mask must be [B, T] = ({B}, {T}), got {tuple(mask.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs),
                    ("rollout_logprobs", rollout_logprobs)):
        if t is not None and t.shape != (B, T):
            raise ValueError(f"{name} must be [B, T] = ({B}, {T}), got {tuple(t.shape)}")
    LOSS_AGGREGATIONS.get(loss_type)  # ValueError naming the registered ones
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    if importance_level not in ("token", "sequence"):
        raise ValueError(f"importance_level must be 'token' or 'sequence', got {importance_level!r}")
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"eps_low/eps_high must be >= 0, got {eps_low}, {eps_high}")
    check_target_range(targets, logits.shape[-1], mask)
    cfg = dict(beta=float(beta), eps_low=float(eps_low), eps_high=float(eps_high), temperature=float(temperature),
               loss_type=loss_type, importance_level=importance_level,
               max_completion_length=max_completion_length, num_items=num_items, inplace=inplace,
               need_grad=torch.is_grad_enabled() and logits.requires_grad,
               rollout_is_cap=None if rollout_is_cap is None else float(rollout_is_cap))
    use_is = rollout_logprobs is not None and rollout_is_cap is not None
    return GRPOLossFunction.apply(logits, targets, advantages.detach(), mask.detach(),
                                  None if old_logprobs is None else old_logprobs.detach(),
                                  None if ref_logprobs is None else ref_logprobs.detach(),
                                  rollout_logprobs.detach() if use_is else None, cfg)

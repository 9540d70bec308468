"""GRPO policy-loss math in plain torch: importance ratio, clipped surrogate, KL estimators,
loss aggregation and metrics. Loss types follow TRL's GRPOTrainer:

- ``grpo``:    mean over sequences of (masked token mean within the sequence)
- ``bnpo``:    sum of masked token losses / number of masked tokens in the (local) batch
- ``dr_grpo``: sum of masked token losses / (B * max_completion_length)   (T here by default)
- ``dapo``:    sum of masked token losses / number of masked tokens in the global batch
               (``num_items`` when given, else the local count; equals bnpo for one micro-batch)

Two numerical rules hold everywhere (here and in the fused kernels of ``mixed_r1.kernels``):

- Masked positions never reach ``exp`` or a division: their log-probabilities are replaced by 0
  (``torch.where``) before any per-token term is formed, so whatever a masked slot holds (padding
  values, -inf, NaN) the loss equals the loss with ordinary values there and its gradient is 0.
- The KL log-ratio is clamped to ``[-KL_LOG_RATIO_BOUND, KL_LOG_RATIO_BOUND]`` = [-20, 20] before
  ``exp`` in every estimator (k1, k2, k3), as verl's ``kl_penalty`` does for ``low_var_kl``; beyond
  the bound the KL term is constant (no gradient), and the metric ``kl_clamp_frac`` reports the
  fraction of masked-in tokens where the clamp changed the value.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from .registry import Registry

ImportanceLevel = Literal["token", "sequence"]
KL_ESTIMATORS = Registry("KL estimator")
LOSS_AGGREGATIONS = Registry("loss_type")
# |log pi - log pi_ref| beyond this is clamped before exp: e^20 ~ 4.9e8 keeps k3 finite in float32
# and bfloat16 (whose max is ~3.4e38 = e^88). The bound is verl's (core_algos.kl_penalty).
KL_LOG_RATIO_BOUND = 20.0


# ---------------------------------------------------------------- KL estimators (Schulman's k1/k2/k3)
def kl_log_ratio(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref clamped to [-KL_LOG_RATIO_BOUND, KL_LOG_RATIO_BOUND] (no gradient outside)."""
    return torch.clamp(logp - ref_logp, -KL_LOG_RATIO_BOUND, KL_LOG_RATIO_BOUND)


def kl_clamped(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Boolean: where the KL log-ratio lies outside the clamp bound (the clamp bites)."""
    return (logp - ref_logp).abs() > KL_LOG_RATIO_BOUND


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi - log pi_ref   (log-ratio clamped to +-KL_LOG_RATIO_BOUND)."""
    return kl_log_ratio(logp, ref_logp)


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = (log pi - log pi_ref)^2 / 2   (log-ratio clamped to +-KL_LOG_RATIO_BOUND)."""
    return 0.5 * kl_log_ratio(logp, ref_logp).square()


@KL_ESTIMATORS.register("k3", "low_var_kl")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = exp(d) - d - 1 with d = log pi_ref - log pi clamped to +-KL_LOG_RATIO_BOUND (>= 0; unbiased
    inside the bound)."""
    d = -kl_log_ratio(logp, ref_logp)
    return torch.exp(d) - d - 1




def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate ``kind`` (k1, k2, k3 = low_var_kl), log-ratio clamped (module doc)."""
    return KL_ESTIMATORS.get(kind)(logp, ref_logp)


# ---------------------------------------------------------------- ratio and surrogate
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """sum(x * mask) / max(sum(mask), 1) over ``dim`` (all dims if None); masked values never enter
    (an inf or NaN under a zero mask does not make the mean NaN)."""
    m = mask.to(x.dtype)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype, device=x.device))
    if dim is None:
        return xm.sum() / m.sum().clamp(min=1)
    return xm.sum(dim) / m.sum(dim).clamp(min=1)


def importance_ratio(logp: torch.Tensor, old_logp: torch.Tensor | None, mask: torch.Tensor,
                     level: ImportanceLevel = "token") -> torch.Tensor:
    """Per-token ratio r[b,t].

    token:    r = exp(logp - old_logp)
    sequence: r = exp(masked_mean_t(logp - old_logp)) broadcast over t (GSPO), gradient through the mean.
    ``old_logp`` None means on-policy: old_logp = logp.detach() (r == 1, d r / d logp == 1).
    Where ``mask`` is 0 the log-ratio is 0 (r == 1, no gradient), whatever logp/old_logp hold there.
    """
    old = logp.detach() if old_logp is None else old_logp.to(logp.dtype)
    live = mask != 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    log_ratio = torch.where(live, logp, zero) - torch.where(live, old, zero)
    if level == "token":
        return torch.exp(log_ratio)
    if level == "sequence":
        return torch.exp(masked_mean(log_ratio, mask, dim=-1)).unsqueeze(-1).expand_as(logp)
    raise ValueError(f"unknown importance level {level!r}; expected token or sequence")


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float):
    """PPO/DAPO clip-higher surrogate per token:
    loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A).
    Returns (loss, is_low_clipped, is_high_clipped) with TRL's clip indicators
    (r < 1 - eps_low and A < 0; r > 1 + eps_high and A > 0)."""
    adv = advantages.to(ratio.dtype)
    if adv.dim() == ratio.dim() - 1:
        adv = adv.unsqueeze(-1)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    low = (ratio < 1 - eps_low) & (adv < 0)
    high = (ratio > 1 + eps_high) & (adv > 0)
    return loss, low, high


# ---------------------------------------------------------------- aggregation
@LOSS_AGGREGATIONS.register("grpo")
def _per_sequence_mean(m: torch.Tensor, max_completion_length: int | None,
                       num_items: float | None) -> torch.Tensor:
    """GRPO: each sequence's token mean, averaged over the B sequences."""
    return m / (m.sum(-1, keepdim=True).clamp(min=1) * m.shape[0])


@LOSS_AGGREGATIONS.register("bnpo")
def _batch_token_mean(m: torch.Tensor, max_completion_length: int | None,
                      num_items: float | None) -> torch.Tensor:
    """BNPO: the mean over the micro-batch's tokens."""
    return m / m.sum().clamp(min=1)


@LOSS_AGGREGATIONS.register("dr_grpo")
def _fixed_length_mean(m: torch.Tensor, max_completion_length: int | None,
                       num_items: float | None) -> torch.Tensor:
    """Dr. GRPO: the sum over tokens / (B * max completion length), a constant normalizer."""
    B, T = m.shape
    return m / (B * (max_completion_length or T))


@LOSS_AGGREGATIONS.register("dapo")
def _global_token_mean(m: torch.Tensor, max_completion_length: int | None,
                       num_items: float | None) -> torch.Tensor:
    """DAPO: the mean over all tokens of the update (``num_items``, else this micro-batch's)."""
    n = m.sum().clamp(min=1) if num_items is None else m.new_tensor(float(num_items)).clamp(min=1)
    return m / n


LOSS_TYPES = LOSS_AGGREGATIONS.names()


def aggregation_weights(mask: torch.Tensor, loss_type: str, *, max_completion_length: int | None = None,
                        num_items: float | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Per-token weights w with loss = sum_{b,t} w[b,t] * per_token_loss[b,t] (w == 0 where masked);
    ``loss_type`` names a registered aggregation (:data:`LOSS_AGGREGATIONS`)."""
    fn = LOSS_AGGREGATIONS.get(loss_type)
    m = mask.to(dtype or (torch.float64 if mask.dtype == torch.float64 else torch.float32))
    return fn(m, max_completion_length, num_items)


def aggregate_loss(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, **kw) -> torch.Tensor:
    """Scalar loss for ``loss_type`` (see module docstring)."""
    w = aggregation_weights(mask, loss_type, dtype=per_token_loss.dtype, **kw)
    zero = torch.zeros((), dtype=per_token_loss.dtype, device=per_token_loss.device)
    return torch.where(w != 0, per_token_loss * w, zero).sum()


# ---------------------------------------------------------------- the full loss
def compute_policy_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    *,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    loss_type: str = "dapo",
    importance_level: ImportanceLevel = "token",
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
    num_items: float | None = None,
    entropy: torch.Tensor | None = None,
    rollout_logp: torch.Tensor | None = None,
    rollout_is_cap: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss = aggregate(w · clipped_surrogate(r, A) + beta * KL(pi || pi_ref)) and detached
    metrics; ``w`` = 1 unless truncated importance sampling is on.

    Truncated importance sampling (``rollout_logp`` [B, T], the sampler's log-probs, and
    ``rollout_is_cap`` C; "token_tis" as verl and others added in 2025 against the gap between the
    sampler's and the trainer's numerics): ``w = min(exp(old − rollout), C)`` per token, detached,
    ``old`` the policy's log-prob at sampling time (``old_logp``, else ``logp`` detached). The
    metrics add ``rollout_is_weight_mean`` and ``rollout_is_clip_frac`` (tokens where w = C).

    Shapes: logp/old_logp/ref_logp/mask [B, T], advantages [B]. ``entropy`` [B, T] (optional) is
    only averaged into the metrics. Masked positions are replaced by ordinary values (0) before any
    exp, so they change neither the loss nor the gradient (which is 0 there); the KL log-ratio is
    clamped to +-KL_LOG_RATIO_BOUND and ``kl_clamp_frac`` (with ``kl_mean``, when ``ref_logp`` is
    given) counts the masked-in tokens where that clamp bit.
    """
    LOSS_AGGREGATIONS.get(loss_type)  # ValueError naming the registered ones
    if beta > 0 and ref_logp is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    mask = mask.to(logp.dtype)
    live = mask != 0
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    ratio = importance_ratio(logp, old_logp, mask, importance_level)
    per_token, low, high = clipped_surrogate(ratio, advantages, eps_low, eps_high)
    is_w = None
    if rollout_logp is not None and rollout_is_cap is not None:
        with torch.no_grad():
            behav = logp.detach() if old_logp is None else old_logp.to(logp.dtype)
            log_w = torch.where(live, behav - rollout_logp.to(logp.dtype), zero)
            is_w = torch.exp(log_w.clamp(max=math.log(rollout_is_cap)))
        per_token = per_token * is_w
    kl = clamp_frac = None
    if ref_logp is not None:
        # masked slots: logp = ref = 0 there, so every KL estimator sees an ordinary log-ratio of 0
        lp = torch.where(live, logp, zero)
        ref = torch.where(live, ref_logp.to(logp.dtype), zero)
        kl = kl_penalty(lp, ref, kl_estimator)
        with torch.no_grad():
            clamp_frac = masked_mean(kl_clamped(lp.detach(), ref).to(logp.dtype), mask)
        if beta != 0:
            per_token = per_token + beta * kl
    loss = aggregate_loss(per_token, mask, loss_type, max_completion_length=max_completion_length,
                          num_items=num_items)
    with torch.no_grad():
        metrics = policy_metrics(ratio, low, high, mask, kl=kl, entropy=entropy)
        if clamp_frac is not None:
            metrics["kl_clamp_frac"] = clamp_frac
        if is_w is not None:
            metrics["rollout_is_weight_mean"] = masked_mean(is_w, mask)
            metrics["rollout_is_clip_frac"] = masked_mean(
                (log_w >= math.log(rollout_is_cap)).to(logp.dtype), mask)
    return loss, metrics


def policy_metrics(ratio: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor,
                   kl: torch.Tensor | None = None, entropy: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Masked token means: clip fractions (low, high, total), KL, entropy; ratio mean/min/max.
    ``compute_policy_loss`` adds ``kl_clamp_frac`` when it has a reference."""
    mb = mask.bool()
    r = ratio.detach()
    big = torch.finfo(r.dtype).max
    any_tok = mb.any()
    out = {
        "clip_frac_low": masked_mean(low.to(r.dtype), mask),
        "clip_frac_high": masked_mean(high.to(r.dtype), mask),
        "clip_frac": masked_mean((low | high).to(r.dtype), mask),
        "ratio_mean": masked_mean(r, mask),
        "ratio_min": torch.where(any_tok, torch.where(mb, r, big).min(), r.new_tensor(0.0)),
        "ratio_max": torch.where(any_tok, torch.where(mb, r, -big).max(), r.new_tensor(0.0)),
    }
    if kl is not None:
        out["kl_mean"] = masked_mean(kl.detach(), mask)
    if entropy is not None:
        out["entropy"] = masked_mean(entropy.detach().to(r.dtype), mask)
    return out

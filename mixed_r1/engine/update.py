"""The one update driver: a GRPO optimizer step over any :class:`~mixed_r1.engine.base.TrainEngine`.

``run_update(engine, micro_batches, loss_cfg, lr, grad_clip)``:

1. zero the gradients; ``engine.forward_backward`` runs every micro-batch (each data-parallel replica
   its share) with :class:`PolicyLoss`, accumulating the gradient of ``Σ_m scale_m · loss_m`` in fp32;
2. metrics are reduced once, on the engine's device: token-weighted sums over micro-batches and
   replicas (``loss`` is ``Σ_m scale_m · loss_m``; the clip fractions, ``ratio_mean``, ``kl_mean``,
   ``entropy``, ``logprob_mean`` and, with truncated importance sampling, its mean weight and capped
   fraction are means over all completion tokens of the update; ``ratio_min``/
   ``ratio_max`` are the min/max over them);
3. ``grad_norm`` is the global L2 norm of the fp32 main gradients. A non-finite loss or norm skips the
   update on every rank (both values are already identical on every rank, so no extra collective):
   gradients are dropped and ``skipped`` is 1;
4. otherwise the gradients are scaled by ``min(1, grad_clip / (grad_norm + 1e-6))`` (global-norm
   clipping as ``torch.nn.utils.clip_grad_norm_`` and megatron-core do it; ``grad_clip`` 0 disables it)
   and the engine steps at ``lr``;
5. ``update/rel_change`` = ‖θ_after − θ_before‖ / ‖θ_before‖ over the fp32 main parameters (the
   update-to-weight ratio; it needs one transient fp32 copy of this rank's masters).

With ``rollout_mismatch`` (the first update of a step, when the weights are still the sampler's) the
mean |log p_trainer − log p_sampler| over completion tokens is returned as ``rollout_logprob_abs_diff``.

Steps 3–5 are :func:`finish_update`, shared with the supervised update :func:`run_sft_update`
(:class:`SFTLoss`, the cross-entropy of ``mixed-r1 sft``) on the same engines.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from mixed_r1.engine.base import LossConfig, PolicyBatch, TrainEngine

#: token-weighted means reduced over micro-batches and data-parallel replicas
MEAN_METRICS = ("clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean",
                "kl_clamp_frac", "entropy")
KL_METRICS = ("kl_mean", "kl_clamp_frac")  # present when the loss has a KL term (beta > 0)
IS_METRICS = ("rollout_is_weight_mean", "rollout_is_clip_frac")  # truncated importance sampling


class PolicyLoss:
    """The GRPO loss of one micro-batch, for backends that hold full-vocab logits (the fused
    :func:`mixed_r1.kernels.grpo_loss`, which never builds the float32 log-softmax) and for those
    that hold log-probs already reduced over vocab shards (:func:`mixed_r1.algo.compute_policy_loss`,
    the same math). Both return the unscaled loss and the same metric keys."""

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg

    def _kw(self, mb: PolicyBatch) -> dict[str, Any]:
        c = self.cfg
        return dict(beta=c.beta, eps_low=c.eps_low, eps_high=c.eps_high, loss_type=c.loss_type,
                    importance_level=c.importance_level,
                    max_completion_length=c.max_completion_length, num_items=mb.num_items)

    def _rollout_logp(self, mb: PolicyBatch) -> torch.Tensor | None:
        """The sampler's log-probs when truncated importance sampling is on, else None."""
        if self.cfg.rollout_is_cap is None:
            return None
        if mb.rollout_logprobs is None:
            raise ValueError("algo.rollout_is needs the sampler's log-probs of every row")
        return mb.rollout_logprobs.to(mb.mask.device)

    def from_logits(self, logits: torch.Tensor, mb: PolicyBatch
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        from mixed_r1.kernels import grpo_loss

        loss, metrics = grpo_loss(logits, mb.targets, mb.advantages, mb.mask, mb.old_logprobs,
                                  mb.ref_logprobs, temperature=self.cfg.temperature,
                                  rollout_logprobs=self._rollout_logp(mb),
                                  rollout_is_cap=self.cfg.rollout_is_cap, **self._kw(mb))
        logp = metrics.pop("logprobs")
        return loss, metrics, logp

    def from_logprobs(self, logp: torch.Tensor, mb: PolicyBatch, entropy: torch.Tensor | None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from mixed_r1.algo import compute_policy_loss

        return compute_policy_loss(logp, mb.advantages, mb.mask, mb.old_logprobs, mb.ref_logprobs,
                                   entropy=entropy, rollout_logp=self._rollout_logp(mb),
                                   rollout_is_cap=self.cfg.rollout_is_cap, **self._kw(mb))


def run_update(engine: TrainEngine, micro_batches: Sequence[PolicyBatch | None],
               loss_cfg: LossConfig, lr: float, *, grad_clip: float = 1.0,
               rollout_mismatch: bool = False) -> dict[str, float]:
    """One optimizer update accumulated over ``micro_batches`` (see the module docstring). Returns
    ``loss``, ``grad_norm``, ``skipped`` (0/1), ``tokens``, the :data:`MEAN_METRICS` present,
    ``ratio_min``/``ratio_max``, ``logprob_mean``, ``update/rel_change`` and, when asked,
    ``rollout_logprob_abs_diff``. Collective over the engine's ranks; same result on every rank.
    ``micro_batches`` outside this rank's share (``engine.local_indices``) may be None."""
    dev = engine.device
    # the same keys on every rank (a rank may hold no micro-batch): from the config, not the data
    keys = [k for k in MEAN_METRICS if k not in KL_METRICS or loss_cfg.beta > 0]
    if loss_cfg.rollout_is_cap is not None:
        keys += IS_METRICS
    engine.zero_grad()
    results = engine.forward_backward(micro_batches, PolicyLoss(loss_cfg))

    # sums: [Σ scale·loss, tokens, Σ n·metric_k ..., Σ logp, Σ |logp − logp_rollout|, rollout tokens]
    n_fixed = 2 + len(keys)
    sums = torch.zeros(n_fixed + 3, dtype=torch.float64, device=dev)
    maxes = torch.full((2,), -math.inf, dtype=torch.float64, device=dev)  # [-ratio_min, ratio_max]
    for r in results:
        mb = micro_batches[r.index]
        mask = mb.mask.to(dev, torch.float64)
        n = mask.sum()
        lp = r.logprobs.to(dev, torch.float64)
        sums[0] += r.loss.to(dev, torch.float64) * mb.scale
        sums[1] += n
        for j, k in enumerate(keys):
            sums[2 + j] += r.metrics[k].to(dev, torch.float64) * n
        sums[n_fixed] += (lp * mask).sum()
        if rollout_mismatch and mb.rollout_logprobs is not None:
            ro = mb.rollout_logprobs.to(dev, torch.float64)
            sums[n_fixed + 1] += ((lp - ro).abs() * mask).sum()
            sums[n_fixed + 2] += n
        if int(mb.mask.sum()) > 0:  # empty micro-batches report ratio 0: not a min/max
            maxes[0] = torch.maximum(maxes[0], -r.metrics["ratio_min"].to(dev, torch.float64))
            maxes[1] = torch.maximum(maxes[1], r.metrics["ratio_max"].to(dev, torch.float64))
    sums, maxes = engine.reduce_metrics(sums, maxes)
    s, mx = sums.tolist(), maxes.tolist()
    total_loss, ntok = s[0], s[1]
    out: dict[str, float] = {k: s[2 + j] / max(ntok, 1.0) for j, k in enumerate(keys)}
    out["ratio_min"] = -mx[0] if math.isfinite(mx[0]) else 0.0
    out["ratio_max"] = mx[1] if math.isfinite(mx[1]) else 0.0
    out["logprob_mean"] = s[n_fixed] / max(ntok, 1.0)
    if rollout_mismatch and s[n_fixed + 2] > 0:
        out["rollout_logprob_abs_diff"] = s[n_fixed + 1] / s[n_fixed + 2]

    out.update(loss=total_loss, tokens=ntok)
    out.update(finish_update(engine, total_loss, lr, grad_clip))
    return out


def finish_update(engine: TrainEngine, total_loss: float, lr: float, grad_clip: float
                  ) -> dict[str, float]:
    """Steps 3–5 of the module docstring, after the gradients of an update are accumulated:
    the global gradient norm, the non-finite skip (``total_loss`` or the norm), global-norm
    clipping, the optimizer step at ``lr`` and the update-to-weight ratio; gradients are dropped
    at the end. Returns ``grad_norm``, ``skipped`` (0/1) and ``update/rel_change``. Collective."""
    gnorm = engine.grad_norm()
    skipped = not (math.isfinite(total_loss) and math.isfinite(gnorm))
    rel_change = 0.0
    if not skipped:
        coef = min(1.0, grad_clip / (gnorm + 1e-6)) if grad_clip > 0 else 1.0
        masters = engine.main_params()
        before = [p.detach().clone() for p in masters]
        engine.step(lr, coef)
        stats = torch.zeros(2, dtype=torch.float64, device=engine.device)
        if masters:
            stats[1] = _sum_sq(before)
            torch._foreach_sub_(before, [p.detach() for p in masters])
            stats[0] = _sum_sq(before)
        del before
        delta_sq, norm_sq = engine.reduce_param_stats(stats).tolist()
        rel_change = math.sqrt(delta_sq / norm_sq) if norm_sq > 0 else 0.0
    engine.zero_grad()
    return {"grad_norm": gnorm, "skipped": float(skipped), "update/rel_change": rel_change}


class SFTLoss:
    """Supervised cross-entropy of one micro-batch, for the same engines (:mod:`mixed_r1.sft`):

        loss_m = − Σ_{b,t} mask[b, t] · log p(targets[b, t]) / N

    with ``N = mb.num_items``, the completion tokens of the whole optimizer step (all
    micro-batches, all data-parallel replicas), so ``Σ_m loss_m`` is the step's token-mean NLL and
    gradient accumulation over micro-batches is exact (``mb.scale`` is 1). ``token_accuracy``
    asks the engines for ``hits`` [B, T] (1 where the target is the argmax of the logits; they
    compute it from the logits or the vocab shards). Metrics: ``token_acc`` (0-d, the
    micro-batch's masked mean of hits). Log-probs at temperature 1."""

    token_accuracy = True

    def __init__(self) -> None:
        self.cfg = LossConfig(temperature=1.0)  # the engines read cfg.temperature

    def from_logprobs(self, logp: torch.Tensor, mb: PolicyBatch,
                      entropy: torch.Tensor | None = None, hits: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if hits is None:
            raise ValueError("SFTLoss needs the engine's hits (token accuracy) of every "
                             "micro-batch")
        mask = mb.mask.to(logp.device, logp.dtype)
        n = mask.sum()
        denom = float(mb.num_items) if mb.num_items else n.clamp(min=1.0)
        loss = -(logp * mask).sum() / denom
        acc = (hits.to(mask) * mask).sum() / n.clamp(min=1.0)
        return loss, {"token_acc": acc.detach()}

    def from_logits(self, logits: torch.Tensor, mb: PolicyBatch
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        from mixed_r1.kernels import token_logprobs

        hits = (logits.detach().argmax(-1) == mb.targets).float()
        logp = token_logprobs(logits, mb.targets, 1.0) * mb.mask.to(logits.device)
        loss, metrics = self.from_logprobs(logp, mb, hits=hits)
        return loss, metrics, logp


def run_sft_update(engine: TrainEngine, micro_batches: Sequence[PolicyBatch | None], lr: float,
                   *, grad_clip: float = 1.0) -> dict[str, float]:
    """One supervised optimizer step over ``micro_batches`` (:class:`SFTLoss`; each micro-batch's
    ``num_items`` = the step's completion tokens): forward + backward on every micro-batch (each
    data-parallel replica its share, :meth:`~TrainEngine.local_indices`; the others may be None),
    metrics reduced over the replicas, then :func:`finish_update` (skip, clip, step). Returns
    ``loss`` (the token-mean NLL of the step's completion tokens under the weights before the
    step), ``token_acc`` (their argmax accuracy), ``tokens``, ``grad_norm``, ``skipped`` and
    ``update/rel_change``; the same on every rank."""
    dev = engine.device
    engine.zero_grad()
    results = engine.forward_backward(micro_batches, SFTLoss())
    sums = torch.zeros(3, dtype=torch.float64, device=dev)  # [Σ loss_m, tokens, Σ hits]
    for r in results:
        mb = micro_batches[r.index]
        n = mb.mask.to(dev, torch.float64).sum()
        sums[0] += r.loss.to(dev, torch.float64) * mb.scale
        sums[1] += n
        sums[2] += r.metrics["token_acc"].to(dev, torch.float64) * n
    maxes = torch.full((1,), -math.inf, dtype=torch.float64, device=dev)
    sums, _ = engine.reduce_metrics(sums, maxes)
    total_loss, ntok, hits = sums.tolist()
    out = {"loss": total_loss, "token_acc": hits / max(ntok, 1.0), "tokens": ntok}
    out.update(finish_update(engine, total_loss, lr, grad_clip))
    return out


def _sum_sq(tensors: list[torch.Tensor], chunk: int = 1 << 16) -> torch.Tensor:
    """Σ‖t‖² over ``tensors`` as a float64 0-d tensor: fused fp32 norms of chunks of at most
    ``chunk`` elements (one fp32 sum over millions of elements is off by ~1e-4 relative), their
    squares summed in float64 — without a float64 copy of the weights."""
    chunks = [c for t in tensors for c in t.reshape(-1).split(chunk)]
    return torch.stack(torch._foreach_norm(chunks)).double().square().sum()


__all__ = ["IS_METRICS", "MEAN_METRICS", "PolicyLoss", "SFTLoss", "finish_update", "run_sft_update",
           "run_update"]

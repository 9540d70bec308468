"""vocab_parallel_token_logprobs: token log-probs from vocab-sharded (tensor-parallel) logits.

Each rank holds logits[..., vocab_start : vocab_start + V_local]. Per row it computes its partial max m_r,
sum-exp s_r (relative to m_r) and, on the rank that owns the target, the target logit; then
M = all_reduce_max(m_r), S = all_reduce_sum(s_r * exp(m_r - M)), tx = all_reduce_sum(tx_r), and
logp = tx - M - log S. Backward is local: d logits_r = g/T * (onehot_r - exp(x_r/T - lse)).
The full-vocab logits are never gathered (megatron's vocab_parallel_cross_entropy pattern).

With ``return_entropy`` the same pass also gives the entropy of softmax(logits/T) per row:
each rank's z_r = sum_v exp(x_v/T - m_r) x_v/T is rescaled like s_r and summed, Z = sum_r z_r exp(m_r - M),
and H = lse - Z / S (a metric: not differentiated).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ._backend import rows_view
from ._common import check_logits_targets, grad_buffer, impl


class VocabParallelTokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, vocab_start: int, group, temperature: float, inplace: bool,
                want_entropy: bool):
        x = rows_view(logits)
        ops = impl(x)
        m, s, z, tx = ops.row_stats(x, targets, temperature, vocab_start=vocab_start,
                                    want_z=want_entropy)
        gmax = m.clone()
        dist.all_reduce(gmax, op=dist.ReduceOp.MAX, group=group)
        tg = targets.reshape(-1)
        owned = ((tg >= vocab_start) & (tg < vocab_start + x.shape[-1])).to(s.dtype)
        rescale = torch.exp(m - gmax)
        parts = [s * rescale, tx, owned] + ([z * rescale] if want_entropy else [])
        st = torch.stack(parts)  # one all-reduce for all of them
        dist.all_reduce(st, op=dist.ReduceOp.SUM, group=group)
        if not bool((st[2] == 1).all()):  # every target must lie in exactly one rank's shard
            bad = int((st[2] != 1).nonzero()[0])
            raise ValueError(f"vocab_parallel_token_logprobs: target {int(tg[bad])} (row {bad}) is "
                             "owned by no rank's vocab shard (out of range, or shards overlap/miss)")
        lse = gmax + torch.log(st[0])
        ctx.save_for_backward(x, targets, lse)
        ctx.cfg = (vocab_start, temperature, inplace)
        logp = (st[1] - lse).view(logits.shape[:2])
        if not want_entropy:
            return logp, None
        entropy = (lse - st[3] / st[0]).view(logits.shape[:2])
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy=None):
        x, targets, lse = ctx.saved_tensors
        vocab_start, temperature, inplace = ctx.cfg
        out = grad_buffer(x, inplace)
        impl(x).softmax_grad(x, out, targets, lse, grad_logp, temperature, vocab_start=vocab_start)
        return out, None, None, None, None, None, None


def vocab_parallel_token_logprobs(
    logits: torch.Tensor,
    targets: torch.Tensor,
    vocab_start: int | None = None,
    group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    *,
    inplace_backward: bool = False,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, T] (float32) from this rank's vocab shard ``logits`` [B, T, V_local].

    ``targets`` are global vocab ids. ``vocab_start`` defaults to rank_in_group * V_local (equal shards,
    as megatron's VocabParallelEmbedding/ColumnParallelLinear lay them out). ``group`` defaults to the
    world group; pass megatron's tensor-model-parallel group under TP. Every rank gets the same result.
    ``return_entropy``: also return the per-token entropy [B, T] (float32, nats, not differentiable) of
    softmax(logits / T) over the whole vocab, from the same pass.
    """
    check_logits_targets(logits, targets, temperature)
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("vocab_parallel_token_logprobs needs an initialized torch.distributed process group")
    if vocab_start is None:
        vocab_start = dist.get_rank(group) * logits.shape[-1]
    if vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0, got {vocab_start}")
    logp, entropy = VocabParallelTokenLogprobsFunction.apply(
        logits, targets, int(vocab_start), group, float(temperature), inplace_backward, return_entropy)
    return (logp, entropy) if return_entropy else logp

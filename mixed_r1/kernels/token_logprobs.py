"""token_logprobs: logp[b,t] = log softmax(logits[b,t]/T)[targets[b,t]] without a [B, T, V] float32 buffer."""
from __future__ import annotations

import torch

from ._common import check_logits_targets, check_target_range, grad_buffer, impl
from ._backend import rows_view


class TokenLogprobsFunction(torch.autograd.Function):
    """Forward: one online max/sum-exp pass per row (float32 accumulation), gather the target.
    Backward: d logits = g/T * (onehot - softmax(logits/T)), optionally written into the logits buffer."""

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, inplace: bool):
        x = rows_view(logits)
        ops = impl(x)
        m, s, _, tx = ops.row_stats(x, targets, temperature, want_z=False)
        lse = m + torch.log(s)
        ctx.save_for_backward(x, targets, lse)
        ctx.temperature, ctx.inplace = temperature, inplace
        return (tx - lse).view(logits.shape[:2])

    @staticmethod
    def backward(ctx, grad_logp):
        x, targets, lse = ctx.saved_tensors
        out = grad_buffer(x, ctx.inplace)
        impl(x).softmax_grad(x, out, targets, lse, grad_logp, ctx.temperature)
        return out, None, None, None


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, *,
                   inplace_backward: bool = False) -> torch.Tensor:
    """Per-token log-probs [B, T] (float32, differentiable) of ``targets`` under softmax(logits / T).

    ``inplace_backward``: write the logits gradient into the logits buffer (saves one [B, T, V] buffer;
    the logits values are destroyed by backward, so only use when nothing else needs them).
    """
    check_logits_targets(logits, targets, temperature)
    check_target_range(targets, logits.shape[-1])
    return TokenLogprobsFunction.apply(logits, targets, float(temperature), inplace_backward)

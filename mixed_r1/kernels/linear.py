"""linear_token_logprobs: log-probs through the LM head without materializing [B, T, V] logits.

Tokens are processed in chunks of C rows: logits_c = hidden_c @ weight^T ([C, V]), its row statistics
give logp_c and lse_c; only lse is kept. Backward recomputes logits_c per chunk, turns it (in place) into
d logits_c = g_c/T * (onehot - softmax(logits_c/T)), and accumulates d hidden_c = d logits_c @ weight and
d weight += d logits_c^T @ hidden_c (float32 accumulator for low-precision weights). At most one chunk of
logits exists at a time, forward and backward.
"""
from __future__ import annotations

import torch

from ._common import check_target_range, check_targets, impl


def default_chunk_tokens(V: int, device: torch.device) -> int:
    """Rows per chunk: ~2M logits (8 MB float32) on CPU, ~64M (128 MB bf16) on GPU."""
    budget = (1 << 26) if device.type == "cuda" else (1 << 21)
    return max(1, budget // max(V, 1))


class LinearTokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int):
        H = hidden.shape[-1]
        h = hidden.reshape(-1, H)
        tg = targets.reshape(-1)
        N = h.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=h.device)
        lse = torch.empty_like(logp)
        for i in range(0, N, chunk):
            lg = (h[i:i + chunk] @ weight.t()).unsqueeze(0)  # [1, C, V]
            m, s, _, tx = impl(lg).row_stats(lg, tg[i:i + chunk].unsqueeze(0), temperature, want_z=False)
            lse[i:i + chunk] = m + torch.log(s)
            logp[i:i + chunk] = tx - lse[i:i + chunk]
            del lg
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.cfg = (temperature, chunk)
        return logp.view(targets.shape)

    @staticmethod
    def backward(ctx, grad_logp):
        hidden, weight, targets, lse = ctx.saved_tensors
        temperature, chunk = ctx.cfg
        H = hidden.shape[-1]
        h = hidden.reshape(-1, H)
        tg = targets.reshape(-1)
        g = grad_logp.reshape(-1)
        N = h.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(h) if need_h else None
        acc_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        dw = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None
        for i in range(0, N, chunk):
            hc = h[i:i + chunk]
            lg = (hc @ weight.t()).unsqueeze(0)
            impl(lg).softmax_grad(lg, lg, tg[i:i + chunk].unsqueeze(0), lse[i:i + chunk], g[i:i + chunk],
                                  temperature)
            dl = lg[0]
            if need_h:
                dh[i:i + chunk] = dl @ weight
            if need_w:
                if dw.dtype == dl.dtype:
                    dw.addmm_(dl.t(), hc)
                else:
                    dw.add_((dl.t() @ hc).to(dw.dtype))
            del lg, dl
        return (dh.view(hidden.shape) if need_h else None, dw.to(weight.dtype) if need_w else None, None, None, None)


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0, *, chunk_tokens: int | None = None) -> torch.Tensor:
    """logp[b,t] = log softmax(hidden[b,t] @ weight^T / T)[targets[b,t]] (float32, differentiable in
    hidden and weight), chunked over tokens (``chunk_tokens`` rows at a time)."""
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H={hidden.shape[-1]}], got shape {tuple(weight.shape)}")
    check_targets(targets, hidden.shape[:2], temperature)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    check_target_range(targets, weight.shape[0])
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0], hidden.device)
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk}")
    return LinearTokenLogprobsFunction.apply(hidden, weight, targets, float(temperature), int(chunk))

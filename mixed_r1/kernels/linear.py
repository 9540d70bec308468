"""linear_token_logprobs: log-probs through the LM head without materializing [B, T, V] logits.

Tokens are processed in chunks of C rows: logits_c = hidden_c @ weight^T ([C, V]), its row statistics
give logp_c and lse_c; only lse is kept. Backward recomputes logits_c per chunk, turns it (in place) into
d logits_c = g_c/T * (onehot - softmax(logits_c/T)), and accumulates d hidden_c = d logits_c @ weight and
d weight += d logits_c^T @ hidden_c (float32 accumulator for low-precision weights). At most one chunk of
logits exists at a time, forward and backward.

Cost: the recompute is a fourth GEMM of the size of the three that naive autograd runs (forward, d hidden,
d weight), so a chunked forward + backward costs about 4/3 of naive's GEMM time, less the naive path's
full-size elementwise passes (log-softmax, gather/scatter, their gradients). When all tokens fit in one
chunk (N·V ≤ 2^26 on the torch path) there is nothing to save: the softmax is kept for the backward
(memory equal to the logits, like naive) and the recompute skipped, so small batches run at naive speed
or better. Liger-Kernel's fused linear cross-entropy avoids the recompute by computing gradients in the
forward, which needs the loss's gradient up front; a log-prob op cannot know it.
"""
from __future__ import annotations

import math

import torch

from ._backend import use_triton
from ._common import check_target_range, check_targets, impl

CHUNK_ELEMS = 1 << 26  # 256 MiB of float32 logits per chunk at most (128 MiB bf16 on the GPU)
CPU_CHUNKS = 14  # multi-chunk: a chunk holds at most ~1/14 of the logits (extra memory ≈ 0.07× the logits)


def default_chunk_tokens(V: int, device: torch.device, n_tokens: int | None = None) -> int:
    """Rows per chunk. GPU (Triton path): 2^26 logits (128 MB bf16). Torch path: all ``n_tokens`` when
    n_tokens·V ≤ 2^26, else ceil(n_tokens / 14) rows (extra memory ≈ 1/14 of the logits), at most
    2^26 / V."""
    cap = max(1, CHUNK_ELEMS // max(V, 1))
    if device.type == "cuda" or n_tokens is None:
        return cap
    if n_tokens * V <= CHUNK_ELEMS:
        return max(n_tokens, 1)
    return min(math.ceil(n_tokens / CPU_CHUNKS), cap)


def _logits_into(buf: torch.Tensor, hc: torch.Tensor, weight: torch.Tensor, inv_t: float) -> torch.Tensor:
    """buf[:C] = (hc @ weight^T) / T in float32 (the GEMM in the weight's dtype, as on the GPU)."""
    lg = buf[:hc.shape[0]]
    if weight.dtype == lg.dtype:
        torch.mm(hc, weight.t(), out=lg)
    else:
        lg.copy_(hc @ weight.t())
    if inv_t != 1.0:
        lg.mul_(inv_t)
    return lg


ENTROPY_ROWS = 64  # rows per x·log x pass of the entropy (a [64, V] temporary)


class LinearTokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, chunk: int, keep: bool,
                want_entropy: bool):
        H = hidden.shape[-1]
        h = hidden.reshape(-1, H)
        tg = targets.reshape(-1)
        N = h.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=h.device)
        lse = torch.empty_like(logp)
        ent = torch.empty(N if want_entropy else 0, dtype=torch.float32, device=h.device)
        triton = use_triton(hidden)
        keep = keep and not triton and chunk >= N
        probs = None
        if triton:
            for i in range(0, N, chunk):
                lg = (h[i:i + chunk] @ weight.t()).unsqueeze(0)  # [1, C, V]
                m, s, z, tx = impl(lg).row_stats(lg, tg[i:i + chunk].unsqueeze(0), temperature,
                                                 want_z=want_entropy)
                lse[i:i + chunk] = m + torch.log(s)
                logp[i:i + chunk] = tx - lse[i:i + chunk]
                if want_entropy:  # H = lse - Σ p·x, z = Σ exp(x - m)·x
                    ent[i:i + chunk] = lse[i:i + chunk] - z / s
                del lg
        else:
            # torch path: one float32 chunk buffer reused; four in-place passes per chunk
            buf = torch.empty(min(chunk, N), weight.shape[0], dtype=torch.float32, device=h.device)
            for i in range(0, N, chunk):
                lg = _logits_into(buf, h[i:i + chunk], weight, 1.0 / temperature)
                tx = lg.gather(1, tg[i:i + chunk, None].long())[:, 0]
                m = lg.amax(1)
                s = lg.sub_(m[:, None]).exp_().sum(1)
                lse[i:i + chunk] = m + torch.log(s)
                logp[i:i + chunk] = tx - lse[i:i + chunk]
                if want_entropy:  # e = exp(x - m): H = log s - Σ e·log e / s (xlogy: 0 at e = 0)
                    for j in range(0, lg.shape[0], ENTROPY_ROWS):
                        e, sj = lg[j:j + ENTROPY_ROWS], s[j:j + ENTROPY_ROWS]
                        ent[i + j:i + j + e.shape[0]] = torch.log(sj) - torch.xlogy(e, e).sum(1) / sj
                if keep:
                    probs = lg.div_(s[:, None])  # softmax, for the backward
            del buf
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.probs = probs  # an intermediate the backward consumes in place (not a saved tensor)
        ctx.cfg = (temperature, chunk, triton)
        ctx.mark_non_differentiable(ent)
        return logp.view(targets.shape), ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        probs, ctx.probs = ctx.probs, None  # a second backward (retain_graph) recomputes instead
        temperature, chunk, triton = ctx.cfg
        H = hidden.shape[-1]
        h = hidden.reshape(-1, H)
        tg = targets.reshape(-1)
        g = grad_logp.reshape(-1)
        N = h.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dh = torch.empty_like(h) if need_h else None
        acc_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        dw = torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device) if need_w else None
        if triton:
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
        else:
            buf = probs if probs is not None else torch.empty(min(chunk, N), weight.shape[0],
                                                               dtype=torch.float32, device=h.device)
            gt = g.float() / temperature
            for i in range(0, N, chunk):
                hc = h[i:i + chunk]
                n = hc.shape[0]
                if probs is None:  # recompute the softmax of this chunk
                    lg = _logits_into(buf, hc, weight, 1.0 / temperature)
                    p = lg.sub_(lse[i:i + chunk, None]).exp_()
                else:
                    p = buf[i:i + chunk]
                dl = p.mul_(-gt[i:i + chunk, None])  # d logits = g/T (onehot - p), in place
                dl[torch.arange(n, device=dl.device), tg[i:i + chunk].long()] += gt[i:i + chunk]
                if need_h:  # the GEMM in the weight's dtype (a no-op cast for float32)
                    torch.mm(dl.to(weight.dtype), weight, out=dh[i:i + chunk])
                if need_w:
                    dw.addmm_(dl.t(), hc.to(dw.dtype))
            del buf
        return (dh.view(hidden.shape) if need_h else None, dw.to(weight.dtype) if need_w else None,
                None, None, None, None, None)


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0, *, chunk_tokens: int | None = None,
                          return_entropy: bool = False):
    """logp[b,t] = log softmax(hidden[b,t] @ weight^T / T)[targets[b,t]], without the [B, T, V] logits.

    hidden: [B, T, H]; weight: [V, H] (the LM head, same dtype as hidden); targets: integer [B, T] in
    [0, V). Returns float32 [B, T], differentiable in hidden and weight (gradients in their dtypes;
    the weight's accumulated in float32). ``chunk_tokens`` rows go through the head at a time (default:
    ``default_chunk_tokens``); when one chunk holds every token its softmax is kept for the backward
    instead of recomputed (memory as naive, time at most naive's). ``return_entropy``: also the
    per-token entropy of ``softmax(logits / T)`` in nats, float32 [B, T], not differentiable (a
    metric), from the same chunk pass (``lse − Σ p·x``). Raises ValueError on bad shapes, dtypes,
    targets out of range or temperature ≤ 0.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H={hidden.shape[-1]}], got shape {tuple(weight.shape)}")
    check_targets(targets, hidden.shape[:2], temperature)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    check_target_range(targets, weight.shape[0])
    n_tokens = hidden.shape[0] * hidden.shape[1]
    chunk = chunk_tokens or default_chunk_tokens(weight.shape[0], hidden.device, n_tokens)
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk}")
    keep = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logp, ent = LinearTokenLogprobsFunction.apply(hidden, weight, targets, float(temperature),
                                                  int(chunk), keep, bool(return_entropy))
    return (logp, ent.view(targets.shape)) if return_entropy else logp

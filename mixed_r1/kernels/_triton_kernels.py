"""Triton kernels shared by the ops. One program per row of logits [B, T, V] (row = b*T + t; the row
start is b*stride_b + t*stride_t, the vocab axis must have unit stride). All math in float32.

- ``row_stats``:    one online pass: m = max(x/T), s = sum exp(x/T - m), z = sum exp(x/T - m) * x/T,
                    tx = x[target - vocab_start]/T (0 where the target is not in this shard).
- ``softmax_grad``: grad[v] = d * (onehot[v] - exp(x_v/T - lse)), d = dlogp/T per row; may write in place.
- ``grpo_fused``:   row_stats + clipped-surrogate/k3-KL coefficient + softmax_grad in one program; masked
                    rows (weight 0) are skipped, the k3 log-ratio is clamped to +-kl_bound before exp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_stats_kernel(X, TGT, M, S, Z, TX, stride_b, stride_t, T_len, V, vocab_start, inv_temp,
                      BLOCK_V: tl.constexpr, WANT_Z: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    X += (row // T_len) * stride_b + (row % T_len) * stride_t
    m = float("-inf")
    s = 0.0
    z = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        valid = cols < V
        x = tl.load(X + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(x, axis=0))
        alpha = tl.exp(m - m_new)
        e = tl.exp(x - m_new)
        s = s * alpha + tl.sum(e, axis=0)
        if WANT_Z:
            z = z * alpha + tl.sum(e * tl.where(e > 0.0, x, 0.0), axis=0)  # -inf logits: 0
        m = m_new
    tgt = tl.load(TGT + row).to(tl.int64) - vocab_start
    own = (tgt >= 0) & (tgt < V)
    tx = tl.load(X + tgt, mask=own, other=0.0).to(tl.float32) * inv_temp
    tl.store(M + row, m)
    tl.store(S + row, s)
    tl.store(TX + row, tx)
    if WANT_Z:
        tl.store(Z + row, z)


@triton.jit
def _softmax_grad_kernel(X, G, TGT, LSE, D, stride_b, stride_t, gstride_b, gstride_t, T_len, V, vocab_start,
                         inv_temp, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // T_len
    t = row % T_len
    X += b * stride_b + t * stride_t
    G += b * gstride_b + t * gstride_t
    d = tl.load(D + row).to(tl.float32) * inv_temp
    if d == 0.0:  # masked or clipped token: zeros, without reading the row
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            tl.store(G + cols, tl.zeros([BLOCK_V], dtype=tl.float32).to(G.dtype.element_ty), mask=cols < V)
    else:
        lse = tl.load(LSE + row)
        tgt = tl.load(TGT + row).to(tl.int64) - vocab_start
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            x = tl.load(X + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
            p = tl.exp(x - lse)
            g = tl.where(cols == tgt, 1.0 - p, -p) * d
            tl.store(G + cols, g.to(G.dtype.element_ty), mask=valid)


@triton.jit
def _grpo_fused_kernel(X, G, TGT, ADV, OLD, REF, W, LOGP, LSE, ENT,
                       stride_b, stride_t, gstride_b, gstride_t, T_len, V, inv_temp, beta, eps_low, eps_high,
                       kl_bound, HAS_OLD: tl.constexpr, HAS_REF: tl.constexpr, WRITE_GRAD: tl.constexpr,
                       BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // T_len
    t = row % T_len
    X += b * stride_b + t * stride_t
    G += b * gstride_b + t * gstride_t
    w = tl.load(W + row).to(tl.float32)  # aggregation weight, 0 where masked
    if w == 0.0:
        tl.store(LOGP + row, 0.0)
        tl.store(LSE + row, 0.0)
        tl.store(ENT + row, 0.0)
        if WRITE_GRAD:
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                tl.store(G + cols, tl.zeros([BLOCK_V], dtype=tl.float32).to(G.dtype.element_ty), mask=cols < V)
    else:
        m = float("-inf")
        s = 0.0
        z = 0.0
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            x = tl.load(X + cols, mask=valid, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(x, axis=0))
            alpha = tl.exp(m - m_new)
            e = tl.exp(x - m_new)
            s = s * alpha + tl.sum(e, axis=0)
            z = z * alpha + tl.sum(e * tl.where(e > 0.0, x, 0.0), axis=0)  # -inf logits: 0
            m = m_new
        lse = m + tl.log(s)
        tgt = tl.load(TGT + row).to(tl.int64)
        logp = tl.load(X + tgt, mask=(tgt >= 0) & (tgt < V), other=0.0).to(tl.float32) * inv_temp - lse
        tl.store(LOGP + row, logp)
        tl.store(LSE + row, lse)
        tl.store(ENT + row, lse - z / s)
        if WRITE_GRAD:
            adv = tl.load(ADV + b).to(tl.float32)
            if HAS_OLD:
                ratio = tl.exp(logp - tl.load(OLD + row).to(tl.float32))
            else:  # on-policy: r = exp(logp - sg(logp)) == 1
                ratio = tl.exp(logp - logp)
            clipped = tl.minimum(tl.maximum(ratio, 1.0 - eps_low), 1.0 + eps_high)
            # d/dlogp of -min(r A, clip(r) A): -A r where the unclipped term is the min, else 0
            dlogp = tl.where(ratio * adv <= clipped * adv, -adv * ratio, 0.0)
            if HAS_REF:  # d k3 / d logp = 1 - exp(d), d = ref - logp clamped to +-kl_bound (0 outside)
                d_ref = tl.load(REF + row).to(tl.float32) - logp
                inside = (d_ref >= -kl_bound) & (d_ref <= kl_bound)
                d_ref = tl.minimum(tl.maximum(d_ref, -kl_bound), kl_bound)
                dlogp += tl.where(inside, beta * (1.0 - tl.exp(d_ref)), 0.0)
            d = dlogp * w * inv_temp
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                valid = cols < V
                x = tl.load(X + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
                p = tl.exp(x - lse)
                g = tl.where(cols == tgt, 1.0 - p, -p) * d
                tl.store(G + cols, g.to(G.dtype.element_ty), mask=valid)


def block_v(V: int) -> int:
    """Vocab tile: one tile for small vocabularies, 4096 (8192 under the interpreter) otherwise."""
    import os
    cap = 8192 if os.environ.get("TRITON_INTERPRET") == "1" else 4096
    return min(cap, triton.next_power_of_2(max(V, 16)))


def _warps(bv: int) -> int:
    return 16 if bv >= 4096 else (8 if bv >= 1024 else 4)


def row_stats(x: torch.Tensor, targets: torch.Tensor, temperature: float, vocab_start: int = 0, want_z: bool = True):
    """x [B, T, V] (unit vocab stride). Returns float32 [B*T] tensors m, s, z, tx."""
    B, T, V = x.shape
    N = B * T
    f = dict(dtype=torch.float32, device=x.device)
    m, s, tx = torch.empty(N, **f), torch.empty(N, **f), torch.empty(N, **f)
    z = torch.empty(N, **f) if want_z else m
    bv = block_v(V)
    if N:
        _row_stats_kernel[(N,)](x, targets.reshape(-1), m, s, z, tx, x.stride(0), x.stride(1), T, V, vocab_start,
                                1.0 / temperature, BLOCK_V=bv, WANT_Z=want_z, num_warps=_warps(bv))
    return m, s, (z if want_z else None), tx


def softmax_grad(x: torch.Tensor, out: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dlogp: torch.Tensor,
                 temperature: float, vocab_start: int = 0) -> torch.Tensor:
    """out[b,t,:] = dlogp[b,t]/T * (onehot(target - vocab_start) - exp(x/T - lse)); out may be x."""
    B, T, V = x.shape
    bv = block_v(V)
    if B * T:
        _softmax_grad_kernel[(B * T,)](x, out, targets.reshape(-1), lse.reshape(-1).float().contiguous(),
                                       dlogp.reshape(-1).float().contiguous(), x.stride(0), x.stride(1),
                                       out.stride(0), out.stride(1), T, V, vocab_start, 1.0 / temperature,
                                       BLOCK_V=bv, num_warps=_warps(bv))
    return out


def grpo_fused(x, grad_out, targets, advantages, old, ref, weights, temperature, beta, eps_low, eps_high,
               kl_bound=20.0):
    """Forward stats and (when grad_out is not None) the loss gradient in one pass per row.
    Rows with weight 0 (masked) are not read and get a zero gradient; the k3 log-ratio is clamped to
    +-kl_bound as in ``mixed_r1.algo`` (``KL_LOG_RATIO_BOUND``). Returns float32 [B*T] logp, lse, entropy."""
    B, T, V = x.shape
    N = B * T
    f = dict(dtype=torch.float32, device=x.device)
    logp, lse, ent = torch.empty(N, **f), torch.empty(N, **f), torch.empty(N, **f)
    bv = block_v(V)
    g = grad_out if grad_out is not None else x
    dummy = logp
    if N:
        _grpo_fused_kernel[(N,)](
            x, g, targets.reshape(-1), advantages.float().contiguous(),
            old.reshape(-1).float().contiguous() if old is not None else dummy,
            ref.reshape(-1).float().contiguous() if ref is not None else dummy,
            weights.reshape(-1).float().contiguous(), logp, lse, ent,
            x.stride(0), x.stride(1), g.stride(0), g.stride(1), T, V, 1.0 / temperature, float(beta),
            float(eps_low), float(eps_high), float(kl_bound), HAS_OLD=old is not None,
            HAS_REF=ref is not None and beta != 0, WRITE_GRAD=grad_out is not None, BLOCK_V=bv,
            num_warps=_warps(bv))
    return logp, lse, ent

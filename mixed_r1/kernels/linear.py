"""linear_token_logprobs: log-probs through the LM head without materializing [B, T, V] logits.

Torch path (CPU): the [N, V] logits are walked in tiles of R token rows × C vocab columns, one float32
tile buffer reused. Forward: logits_tile = hidden_rows @ weight_cols^T, each row's max, Σ exp and (for the
entropy) Σ e·log e combined across the vocabulary tiles by the online-softmax rescaling (Milakov &
Gimelshein 2018, "Online normalizer calculation for softmax"); only lse [N] is kept. Backward: each tile is
recomputed, turned in place into d logits = g/T · (onehot − softmax), and d hidden_rows += d logits @
weight_cols, d weight_cols (+)= d logits^T @ hidden_rows. The last tile of the forward is kept (as
exp(x − m_tile)) and is the first one the backward consumes, so a single-tile plan never recomputes.

Default plan: one tile (everything; memory like naive's, no recompute) while N·V ≤ 2^26; else the whole
token range against vocabulary slices of ⌈V/14⌉ columns (0.07× the logits per tile), rows cut only when
one slice would be narrower than 4,096 columns. Vocabulary slices (rather than token chunks) make d weight
one full-depth GEMM per slice, written once, instead of 14 read-modify-writes of the whole [V, H]
gradient with a 1/14-deep inner dimension; with low-precision weights no float32 [V, H] accumulator is
needed. Cost: a fourth GEMM (the recompute) beside naive autograd's three (forward, d hidden, d weight),
against naive's full-size passes and first touches of several [N, V] buffers (docs/benchmarks.md).

Triton path (GPU): token chunks of 2^26 logits over the whole vocabulary, row statistics and the softmax
gradient in the Triton kernels. Liger-Kernel's fused linear cross-entropy avoids the recompute by
computing gradients in the forward, which needs the loss's gradient up front; a log-prob op cannot know it.
"""
from __future__ import annotations

import math

import torch

from ._backend import use_triton
from ._common import check_target_range, check_targets, impl

CHUNK_ELEMS = 1 << 26  # 256 MiB of float32 logits per tile at most (128 MiB bf16 on the GPU)
CPU_TILES = 14  # multi-tile: a tile holds at most ~1/14 of the logits (extra memory ≈ 0.07× the logits)
MIN_COLS = 4096  # narrowest vocabulary slice the default plan cuts before it cuts token rows
ENTROPY_ROWS = 64  # rows per x·log x pass of the entropy (a [64, C] temporary)


def default_tiles(V: int, device: torch.device, n_tokens: int) -> tuple[int, int]:
    """(rows, cols) of a logits tile. GPU (Triton path): (2^26 // V, V), token chunks over the whole
    vocabulary. Torch path: (n_tokens, V) when n_tokens·V ≤ 2^26 (one tile, softmax kept); else a budget
    E = min(2^26, ⌈n_tokens·V/14⌉) logits per tile, all n_tokens rows by ⌈V/k⌉ columns with the smallest k
    that fits E, unless that would be narrower than 4,096 columns (then E // 4,096 rows by 4,096)."""
    n_tokens = max(int(n_tokens), 1)
    if device.type == "cuda":
        return max(1, CHUNK_ELEMS // max(V, 1)), V
    if n_tokens * V <= CHUNK_ELEMS:
        return n_tokens, V
    budget = min(CHUNK_ELEMS, math.ceil(n_tokens * V / CPU_TILES))
    if budget // n_tokens >= min(MIN_COLS, V):
        return n_tokens, math.ceil(V / math.ceil(V / (budget // n_tokens)))
    cols = min(MIN_COLS, V)
    return max(1, budget // cols), cols


def _logits_into(flat: torch.Tensor, hc: torch.Tensor, wc: torch.Tensor, inv_t: float) -> torch.Tensor:
    """A contiguous [R, C] float32 view at the start of ``flat`` = (hc @ wc^T) / T (the GEMM in the
    weight's dtype, as on the GPU)."""
    lg = flat[:hc.shape[0] * wc.shape[0]].view(hc.shape[0], wc.shape[0])
    if wc.dtype == lg.dtype:
        torch.mm(hc, wc.t(), out=lg)
    else:
        lg.copy_(hc @ wc.t())
    if inv_t != 1.0:
        lg.mul_(inv_t)
    return lg


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(i, min(i + step, n)) for i in range(0, n, step)]


class LinearTokenLogprobsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature: float, tiles: tuple[int, int], keep: bool,
                want_entropy: bool):
        H = hidden.shape[-1]
        h = hidden.reshape(-1, H)
        tg = targets.reshape(-1)
        N = h.shape[0]
        logp = torch.empty(N, dtype=torch.float32, device=h.device)
        lse = torch.empty_like(logp)
        ent = torch.empty(N if want_entropy else 0, dtype=torch.float32, device=h.device)
        triton = use_triton(hidden)
        ctx.tail = None  # the forward's last tile, for the backward (an intermediate, not a saved tensor)
        if triton:
            chunk = tiles[0]
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
            rows, cols = tiles
            V = weight.shape[0]
            flat = torch.empty(min(rows, N) * min(cols, V), dtype=torch.float32, device=h.device)
            tx = torch.empty_like(logp)
            for a, b in _spans(N, rows):
                tr = tg[a:b].long()
                m = s = q = None  # running max, Σ exp(x - m), Σ exp(x - m)·(x - m) of rows a:b
                for c, d in _spans(V, cols):
                    lg = _logits_into(flat, h[a:b], weight[c:d], 1.0 / temperature)
                    sel = ((tr >= c) & (tr < d)).nonzero()[:, 0]
                    tx[a + sel] = lg[sel, tr[sel] - c]
                    mb = lg.amax(1)
                    e = lg.sub_(mb[:, None]).exp_()  # in place: the tile now holds exp(x - m_tile)
                    sb = e.sum(1)
                    qb = None
                    if want_entropy:  # Σ e·log e, with log e = x - m_tile (xlogy: 0 where e = 0)
                        qb = torch.cat([torch.xlogy(e[j:j + ENTROPY_ROWS], e[j:j + ENTROPY_ROWS]).sum(1)
                                        for j in range(0, e.shape[0], ENTROPY_ROWS)])
                    if m is None:
                        m, s, q = mb, sb, qb
                    else:  # online-softmax merge onto the new max mn
                        mn = torch.maximum(m, mb)
                        r, rb = torch.exp(m - mn), torch.exp(mb - mn)
                        if want_entropy:
                            q = r * (q + (m - mn) * s) + rb * (qb + (mb - mn) * sb)
                        s, m = r * s + rb * sb, mn
                lse[a:b] = m + torch.log(s)
                logp[a:b] = tx[a:b] - lse[a:b]
                if want_entropy:  # H = log s - Σ e·log e / s
                    ent[a:b] = torch.log(s) - q / s
            if keep:  # (buffer, tile view holding exp(x - m_tile), m_tile, span)
                ctx.tail = (flat, e, mb, (a, b, c, d))
            del flat
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.cfg = (temperature, tiles, triton)
        ctx.mark_non_differentiable(ent)
        return logp.view(targets.shape), ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, targets, lse = ctx.saved_tensors
        tail, ctx.tail = ctx.tail, None  # consumed in place: a second backward (retain_graph) recomputes
        temperature, tiles, triton = ctx.cfg
        H = hidden.shape[-1]
        h = hidden.reshape(-1, H)
        tg = targets.reshape(-1)
        g = grad_logp.reshape(-1)
        N, V = h.shape[0], weight.shape[0]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc_dtype = torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        if triton:
            chunk = tiles[0]
            dh = torch.empty_like(h) if need_h else None
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
            return (dh.view(hidden.shape) if need_h else None, dw.to(weight.dtype) if need_w else None,
                    None, None, None, None, None)
        rows, cols = tiles
        row_spans, col_spans = _spans(N, rows), _spans(V, cols)
        flat = tail[0] if tail is not None else torch.empty(min(rows, N) * min(cols, V), dtype=torch.float32,
                                                             device=h.device)
        gt = g.float() / temperature
        dh = torch.zeros(N, H, dtype=torch.float32, device=h.device) if need_h else None
        h32 = h if h.dtype == torch.float32 else h.float()
        # one row span: each vocabulary slice of d weight is one GEMM, written once in the weight's dtype
        once = len(row_spans) == 1
        if need_w:
            dw = (torch.empty(weight.shape, dtype=weight.dtype, device=weight.device) if once
                  else torch.zeros(weight.shape, dtype=acc_dtype, device=weight.device))
        for a, b in reversed(row_spans):  # the forward's last tile first: it may be kept
            tr = tg[a:b].long()
            for c, d in reversed(col_spans):
                wc = weight[c:d]
                if tail is not None and tail[3] == (a, b, c, d):
                    p = tail[1].mul_(torch.exp(tail[2] - lse[a:b])[:, None])  # exp(x - m_t)·exp(m_t - lse)
                    tail = None
                else:  # recompute this tile's softmax
                    p = _logits_into(flat, h[a:b], wc, 1.0 / temperature).sub_(lse[a:b, None]).exp_()
                dl = p.mul_(-gt[a:b, None])  # d logits = g/T (onehot - p), in place
                sel = ((tr >= c) & (tr < d)).nonzero()[:, 0]
                dl[sel, tr[sel] - c] += gt[a + sel]
                if need_h:  # the GEMM in the weight's dtype (no cast for float32)
                    if wc.dtype == torch.float32:
                        dh[a:b].addmm_(dl, wc)
                    else:
                        dh[a:b].add_(dl.to(wc.dtype) @ wc)
                if need_w:
                    if not once:
                        dw[c:d].addmm_(dl.t(), h32[a:b])
                    elif dw.dtype == torch.float32:
                        torch.mm(dl.t(), h32[a:b], out=dw[c:d])
                    else:
                        dw[c:d] = dl.t() @ h32[a:b]
        del flat
        return (dh.to(hidden.dtype).view(hidden.shape) if need_h else None,
                dw.to(weight.dtype) if need_w else None, None, None, None, None, None)


def linear_token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0, *, chunk_tokens: int | None = None,
                          chunk_vocab: int | None = None, return_entropy: bool = False):
    """logp[b,t] = log softmax(hidden[b,t] @ weight^T / T)[targets[b,t]], without the [B, T, V] logits.

    hidden: [B, T, H]; weight: [V, H] (the LM head, same dtype as hidden); targets: integer [B, T] in
    [0, V). Returns float32 [B, T], differentiable in hidden and weight (gradients in their dtypes).
    The logits go through the head in tiles of ``chunk_tokens`` rows × ``chunk_vocab`` columns (default:
    ``default_tiles``; giving only ``chunk_tokens`` means whole-vocabulary rows); the Triton path tiles
    token rows only. When one tile holds everything its softmax is kept for the backward instead of
    recomputed (memory as naive, time at most naive's). ``return_entropy``: also the per-token entropy
    of ``softmax(logits / T)`` in nats, float32 [B, T], not differentiable (a metric), from the same
    pass (``lse − Σ p·x``). Raises ValueError on bad shapes, dtypes, targets out of range, temperature
    ≤ 0 or tile sizes < 1.
    """
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got shape {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, H={hidden.shape[-1]}], got shape {tuple(weight.shape)}")
    check_targets(targets, hidden.shape[:2], temperature)
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden and weight dtypes differ: {hidden.dtype} vs {weight.dtype}")
    check_target_range(targets, weight.shape[0])
    V = weight.shape[0]
    if chunk_tokens is None and chunk_vocab is None:
        rows, cols = default_tiles(V, hidden.device, hidden.shape[0] * hidden.shape[1])
    else:
        rows = chunk_tokens if chunk_tokens is not None else max(1, hidden.shape[0] * hidden.shape[1])
        cols = chunk_vocab if chunk_vocab is not None else V
    if rows < 1 or cols < 1:
        raise ValueError(f"chunk_tokens and chunk_vocab must be >= 1, got {rows}, {cols}")
    keep = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    logp, ent = LinearTokenLogprobsFunction.apply(hidden, weight, targets, float(temperature),
                                                  (int(rows), int(min(cols, V))), keep, bool(return_entropy))
    return (logp, ent.view(targets.shape)) if return_entropy else logp

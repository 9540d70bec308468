"""Torch twins of the Triton kernels, chunked over rows so no float32 [rows, V] temporary larger than
``torch_chunk_rows`` rows exists at a time."""
from __future__ import annotations

import torch

from ._backend import torch_chunk_rows


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])  # a view for contiguous rows; a copy otherwise (torch path only)


def row_stats(x: torch.Tensor, targets: torch.Tensor, temperature: float, vocab_start: int = 0, want_z: bool = True):
    """Same outputs as _triton_kernels.row_stats: float32 [N] m, s, z, tx."""
    xf = _flat(x)
    N, V = xf.shape
    tg = targets.reshape(-1).long() - vocab_start
    own = (tg >= 0) & (tg < V)
    m = torch.empty(N, dtype=torch.float32, device=x.device)
    s, tx = torch.empty_like(m), torch.empty_like(m)
    z = torch.empty_like(m) if want_z else None
    step = torch_chunk_rows(V)
    for i in range(0, N, step):
        c = xf[i:i + step].float() / temperature
        mc = c.max(-1).values
        c.sub_(mc.unsqueeze(-1))
        tx[i:i + step] = torch.where(own[i:i + step], c.gather(-1, tg[i:i + step].clamp(0, V - 1).unsqueeze(-1))
                                     .squeeze(-1) + mc, torch.zeros_like(mc))
        if want_z:  # z = sum e * x with x = c + m
            e = c.exp()
            # -inf logits (a padded vocab) add 0, not 0 * -inf
            z[i:i + step] = (e * torch.where(e > 0, c, 0.0)).sum(-1) + mc * e.sum(-1)
            s[i:i + step] = e.sum(-1)
            del e
        else:
            s[i:i + step] = c.exp_().sum(-1)
        m[i:i + step] = mc
        del c
    return m, s, z, tx


def softmax_grad(x: torch.Tensor, out: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, dlogp: torch.Tensor,
                 temperature: float, vocab_start: int = 0) -> torch.Tensor:
    """out[b,t,:] = dlogp/T * (onehot(target - vocab_start) - exp(x/T - lse)); out may be x."""
    V = x.shape[-1]
    xf, of = _flat(x), out.view(-1, V)
    N = xf.shape[0]
    tg = targets.reshape(-1).long() - vocab_start
    own = (tg >= 0) & (tg < V)
    d = dlogp.reshape(-1).float() / temperature
    lse = lse.reshape(-1).float()
    step = torch_chunk_rows(V)
    for i in range(0, N, step):
        c = xf[i:i + step].float() / temperature
        c.sub_(lse[i:i + step].unsqueeze(-1)).exp_().neg_()  # -p
        ow = own[i:i + step]
        rows = torch.arange(c.shape[0], device=c.device)[ow]
        c[rows, tg[i:i + step][ow]] += 1.0
        c.mul_(d[i:i + step].unsqueeze(-1))
        of[i:i + step] = c
        del c
    return out

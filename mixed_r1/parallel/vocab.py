"""Vocab-parallel ops on the logits shard a tensor-parallel rank holds ([.., V_padded / TP]).

Megatron pads the vocab to a multiple of TP; rank r holds ids ``[r·V_p/TP, (r+1)·V_p/TP)``, and the
pad ids (>= the HF vocab size) are masked to -inf before any softmax, so the pad never changes a
probability. ``arch`` is anything with ``vocab_size`` and ``padded_vocab_size(tp)``
(:class:`mixed_r1.models.config.LMArch`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from . import state


def vocab_range(arch: Any) -> tuple[int, int]:
    """[start, stop) of the (padded) vocab held by this TP rank."""
    per = arch.padded_vocab_size(state.tp_size()) // state.tp_size()
    return state.tp_rank() * per, (state.tp_rank() + 1) * per


def mask_vocab_padding(logits: torch.Tensor, arch: Any) -> torch.Tensor:
    """Set logits of pad vocab ids (>= the HF vocab size) to -inf on this rank's shard."""
    start, stop = vocab_range(arch)
    if stop <= arch.vocab_size:
        return logits
    ids = torch.arange(start, stop, device=logits.device)
    return logits.masked_fill(ids >= arch.vocab_size, float("-inf"))


def shard_token_logprobs(logits_shard: torch.Tensor, targets: torch.Tensor, arch: Any,
                         temperature: float = 1.0, return_entropy: bool = False):
    """log p(targets) [b, s] from the vocab-parallel logits shard, never gathering [tokens, vocab]
    (with ``return_entropy``: and the per-token entropy [b, s] over the whole vocab)."""
    from mixed_r1.kernels import vocab_parallel_token_logprobs

    start, _ = vocab_range(arch)
    return vocab_parallel_token_logprobs(mask_vocab_padding(logits_shard, arch), targets, vocab_start=start,
                                         group=state.tp_group(), temperature=temperature,
                                         return_entropy=return_entropy)


def shard_argmax(logits_shard: torch.Tensor, arch: Any) -> torch.Tensor:
    """Global argmax over the vocab [..] from TP logits shards (ties -> lowest id), via one all-gather."""
    lg = mask_vocab_padding(logits_shard.float(), arch)
    val, idx = lg.max(dim=-1)
    idx = idx + vocab_range(arch)[0]
    tp = state.tp_size()
    if tp == 1:
        return idx
    vals = [torch.empty_like(val) for _ in range(tp)]
    idxs = [torch.empty_like(idx) for _ in range(tp)]
    dist.all_gather(vals, val.contiguous(), group=state.tp_group())
    dist.all_gather(idxs, idx.contiguous(), group=state.tp_group())
    v, i = torch.stack(vals), torch.stack(idxs)
    best = v.argmax(dim=0, keepdim=True)  # first max -> lowest rank -> lowest id
    return i.gather(0, best).squeeze(0)

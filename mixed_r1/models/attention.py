"""``sdpa_gqa``: transformers' SDPA attention with grouped-query heads kept grouped under a mask.

transformers' ``sdpa`` attention passes ``enable_gqa=True`` to
``torch.nn.functional.scaled_dot_product_attention`` only when no attention mask is given
(``transformers/integrations/sdpa_attention.py``, ``use_gqa_in_sdpa``: CUDA's fused kernels need
that); otherwise it first repeats every key/value head ``num_attention_heads /
num_key_value_heads`` times (``repeat_kv``), a copy of the whole KV cache at every layer of every
decode step. Left-padded batched generation always has a mask. torch's SDPA takes
``enable_gqa=True`` together with a mask on CPU (math and flash CPU kernels), giving the same
values without the copy (``tests/test_rollout_hf.py`` checks this attention against ``sdpa``).

:func:`grouped_kv_attention` switches an HF model to it for a block (its generator's decode loop)
and back; anything this function does not cover (a position bias, a paged cache, a causal
prefill over a longer cache without a mask) goes to transformers' own ``sdpa`` function.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch

from mixed_r1.parallel.platform import current_platform

NAME = "sdpa_gqa"


def sdpa_gqa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                               value: torch.Tensor, attention_mask: torch.Tensor | None,
                               dropout: float = 0.0, scaling: float | None = None,
                               is_causal: bool | None = None, **kwargs: Any
                               ) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` ``[B, H, Q, D]``, ``key``/``value``
    ``[B, KV, K, D]`` (``H`` a multiple of ``KV``), ``attention_mask`` ``[B, 1, Q, K]`` bool or
    additive float or ``None``. Returns ``([B, Q, H, D], None)`` in ``query``'s dtype."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    causal = bool(q_len > 1 and attention_mask is None and causal)
    if (kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
            or kwargs.get("output_attentions") or (causal and kv_len != q_len)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=causal, enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :data:`NAME` with transformers' attention and mask interfaces (SDPA's masks);
    idempotent. Returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_gqa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def _groups(model: torch.nn.Module) -> int:
    cfg = getattr(model, "config", None)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    heads = getattr(text, "num_attention_heads", None)
    kv = getattr(text, "num_key_value_heads", None) or heads
    return heads // kv if heads and kv else 1


@contextmanager
def grouped_kv_attention(model: torch.nn.Module) -> Iterator[bool]:
    """Run ``model`` (an HF ``PreTrainedModel``) with :data:`NAME` attention inside the block and
    restore its implementation after; yields whether it switched. Only CPU models that run
    ``sdpa`` with grouped-query heads (``num_key_value_heads < num_attention_heads``) and no
    sub-models (vision towers keep their own attention) are switched; the rest run unchanged
    (on CUDA a masked ``enable_gqa`` call leaves the fused kernels, transformers' reason for its
    rule)."""
    cfg = getattr(model, "config", None)
    first = next(model.parameters(), None)
    switch = (getattr(cfg, "_attn_implementation", None) == "sdpa" and _groups(model) > 1
              and not getattr(cfg, "sub_configs", None) and first is not None
              and current_platform().grouped_kv_decode(first.device)
              and hasattr(model, "set_attn_implementation"))
    if not switch:
        yield False
        return
    model.set_attn_implementation(register())
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")


__all__ = ["NAME", "grouped_kv_attention", "register", "sdpa_gqa_attention_forward"]

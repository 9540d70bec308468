"""The decoder-only language model on megatron-core (Qwen2/Qwen2.5 and Llama/SmolLM2: the same
decoder, Llama without the q/k/v bias): build ``GPTModel`` from an HF config and load its mcore
shards. Its logits stay vocab-sharded [b, s, V/TP]; :mod:`mixed_r1.parallel.vocab` scores them.

Layer spec: Transformer-Engine's where TE is installed (and CUDA present), megatron's local spec
(torch RMSNorm, unfused attention) otherwise. Vocab is padded to a multiple of TP (the pad columns
are masked by the vocab-parallel ops).

Packed sequences (megatron-core ``PackedSeqParams``, ``qkv_format="thd"``: rows concatenated into
one ``[1, N]`` sequence with ``cu_seqlens``) run on both specs: TE's attention takes THD itself; on
the local spec the core attention is :class:`PackedDotProductAttention`, megatron's own unfused
attention applied row by row. RoPE restarts per row in megatron's ``apply_rotary_pos_emb`` with
``cu_seqlens`` on either spec.

Pipeline split: the per-stage layer counts of
:func:`mixed_r1.models.config.resolve_pipeline_layers` (even, or uneven through megatron's
``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``); a model loaded
from an mcore checkpoint is built with the split its manifest records.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

import torch

from mixed_r1.parallel import state
from mixed_r1.parallel.platform import current_platform

from .. import convert as C
from ..config import LMArch, arch_from_hf_config, transformer_config


def has_transformer_engine() -> bool:
    """Transformer Engine is installed and usable here (the platform's answer)."""
    return current_platform().transformer_engine


@functools.cache
def _packed_dot_product_attention():
    """The :class:`PackedDotProductAttention` class (built on first use: megatron imports lazily)."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    class PackedDotProductAttention(DotProductAttention):
        """megatron-core's local ``DotProductAttention`` that also takes THD packed sequences.

        Without ``packed_seq_params`` it is the parent unchanged. With ``qkv_format="thd"``
        (query/key/value ``[t, heads/TP, head_dim]``, ``t = cu_seqlens[-1]``) every row
        ``cu_seqlens[i]:cu_seqlens[i+1]`` goes through the parent's causal attention on its own
        (``[s_i, 1, heads, d]``, no mask tensor), so each row sees exactly what it sees unpacked
        and the work is ``Σ s_i²`` rather than ``t²``. Returns ``[t, 1, heads/TP · head_dim]``.
        Raises ValueError for another ``qkv_format`` or unequal query/key ``cu_seqlens``
        (cross-attention packs are not built here).
        """

        def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                    attention_bias=None, packed_seq_params=None):
            if packed_seq_params is None:
                return super().forward(query, key, value, attention_mask,
                                       attn_mask_type=attn_mask_type, attention_bias=attention_bias)
            psp = packed_seq_params
            if psp.qkv_format != "thd":
                raise ValueError(f"packed sequences need qkv_format='thd', got {psp.qkv_format!r}")
            cu_q = psp.cu_seqlens_q_padded if psp.cu_seqlens_q_padded is not None else psp.cu_seqlens_q
            cu_k = psp.cu_seqlens_kv_padded if psp.cu_seqlens_kv_padded is not None else psp.cu_seqlens_kv
            if cu_k is not None and not torch.equal(cu_q, cu_k):
                raise ValueError("packed self-attention needs cu_seqlens_q == cu_seqlens_kv")
            bounds = cu_q.tolist()
            outs = [super(PackedDotProductAttention, self).forward(
                        query[a:b].unsqueeze(1), key[a:b].unsqueeze(1), value[a:b].unsqueeze(1),
                        None, attn_mask_type=AttnMaskType.causal, attention_bias=attention_bias)
                    for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
            return torch.cat(outs, dim=0)

    return PackedDotProductAttention


def layer_spec(arch: LMArch):
    """TE layer spec when TE + CUDA are present, else the local spec (RMSNorm via torch) with
    :class:`PackedDotProductAttention` as its core attention (packed THD rows as well as padded)."""
    from megatron.core.models.gpt import gpt_layer_specs as S

    if has_transformer_engine():
        return S.get_gpt_layer_with_transformer_engine_spec(qk_layernorm=False)
    spec = S.get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = _packed_dot_product_attention()
    return spec


def build_gpt_model(arch: LMArch, *, params_dtype: torch.dtype = torch.float32,
                    pipeline_layers: Sequence[int] | None = None, **config_overrides: Any):
    """GPTModel for this rank's (TP rank, PP stage); parallel sizes come from ``parallel_state``.

    ``pipeline_layers``: transformer layers per stage (None = even), resolved by
    :func:`~mixed_r1.models.config.resolve_pipeline_layers` and handed to megatron as
    ``num_layers_in_first/last_pipeline_stage`` (megatron/core/transformer/transformer_block.py
    ``get_num_layers_to_build``: first and last stage as given, the middle stages even), so this
    stage's ``decoder.layers.<i>`` are the global layers ``sum(layers[:stage]) + i``.
    ``parallel_output=True``: the last stage returns this TP rank's logits shard [b, s, V_pad/TP].
    """
    from megatron.core.models.gpt import GPTModel

    tp, pp = state.tp_size(), state.pp_size()
    cfg = transformer_config(arch, tp, pp, params_dtype=params_dtype,
                             pipeline_layers=pipeline_layers, **config_overrides)
    model = GPTModel(
        config=cfg, transformer_layer_spec=layer_spec(arch), vocab_size=arch.padded_vocab_size(tp),
        max_sequence_length=arch.max_position_embeddings, pre_process=state.is_first_stage(),
        post_process=state.is_last_stage(), parallel_output=True,
        share_embeddings_and_output_weights=arch.tie_embeddings,
        position_embedding_type="mrope" if arch.mrope_section else "rope", rotary_base=int(arch.rope_theta),
    )
    return model.cuda() if current_platform().move_model_to_device else model


_TE_RENAMES = {"input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
               "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight"}


def te_name(name: str) -> str:
    """Local-spec name -> TE-spec name (TE fuses the pre-attention/pre-MLP norms into the next linear)."""
    for local, te in _TE_RENAMES.items():
        if name.endswith("." + local) and name.startswith("decoder.layers."):
            return name[: -len(local)] + te
    return name


def model_pipeline_layers(model: torch.nn.Module) -> tuple[int, ...]:
    """The per-stage layer counts ``model`` (a GPTModel or a wrapper with its ``config``) was built
    with, as megatron itself computes them (``get_num_layers_to_build`` for every stage)."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    cfg = model.config
    if cfg.virtual_pipeline_model_parallel_size is not None:
        raise C.UnsupportedConfigError("virtual pipeline parallelism is not supported")
    pp = cfg.pipeline_model_parallel_size
    return tuple(get_num_layers_to_build(cfg, pp_rank=s) for s in range(pp))


def load_mcore_shard(model: torch.nn.Module, mcore_dir: str | Path) -> dict[str, Any]:
    """Copy this rank's verified shard into ``model``; raise naming any missing/unexpected/
    mis-shaped tensor, or both splits when the model's pipeline split is not the checkpoint's."""
    man = C.read_manifest(mcore_dir)
    tp, pp = state.tp_size(), state.pp_size()
    if (man["tp"], man["pp"]) != (tp, pp):
        raise C.CheckpointError(f"{mcore_dir}: checkpoint is tp={man['tp']} pp={man['pp']}, model is tp={tp} pp={pp}"
                                " (reshard it with `mixed-r1 convert reshard`)")
    ckpt_layers, model_layers = C.manifest_pipeline_layers(man), model_pipeline_layers(model)
    if ckpt_layers != model_layers:
        flag = ",".join(map(str, model_layers))
        raise C.CheckpointError(
            f"{mcore_dir}: checkpoint has pipeline_layers={list(ckpt_layers)}, the model was built "
            f"with pipeline_layers={list(model_layers)} (build it with the checkpoint's split, or "
            f"reshard with `mixed-r1 convert reshard --pp {pp} --pipeline-layers {flag}`)")
    params = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    seen = set()
    with torch.no_grad():
        for name, t in C.iter_shard_tensors(mcore_dir, state.tp_rank(), state.pp_rank()):
            name = te_name(name) if name not in params else name
            if name not in params:
                raise C.CheckpointError(f"tensor {name} in the checkpoint has no parameter in the model")
            if params[name].shape != t.shape:
                raise C.CheckpointError(f"tensor {name} is {list(t.shape)}, model expects {list(params[name].shape)}")
            params[name].copy_(t)
            seen.add(name)
    missing = sorted(set(params) - seen)
    if missing:
        raise C.CheckpointError(f"tensor {missing[0]} is missing from the checkpoint ({len(missing)} missing)")
    return man


def load_policy(mcore_dir: str | Path, *, pipeline_layers: Sequence[int] | None = None, **kw: Any):
    """Build the model for this rank from an mcore checkpoint's manifest and load its shard.

    The model gets the checkpoint's pipeline split (manifest ``pipeline_layers``; even for old
    manifests) unless ``pipeline_layers`` asks for another, which then fails in
    :func:`load_mcore_shard` naming both splits."""
    man = C.read_manifest(mcore_dir)
    arch = arch_from_hf_config(man["hf_config"])
    layers = C.manifest_pipeline_layers(man, arch) if pipeline_layers is None else pipeline_layers
    model = build_gpt_model(arch, pipeline_layers=layers, **kw)
    load_mcore_shard(model, mcore_dir)
    return model, arch

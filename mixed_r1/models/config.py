"""HF config -> the architecture facts the megatron model and the weight mapping need.

Supported: Qwen2 / Qwen2.5 (``model_type`` qwen2: q/k/v bias), Llama family (``llama``: no bias, incl.
SmolLM2), and Qwen2.5-VL (``qwen2_5_vl``: the Qwen2 LM in ``text_config`` + an HF vision tower,
3-D mrope). Anything the mapping cannot represent exactly raises :class:`UnsupportedConfigError`
naming the offending key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "qwen2_5_vl")


class UnsupportedConfigError(ValueError):
    """The HF config asks for something the megatron mapping cannot represent exactly."""


@dataclass(frozen=True)
class HFNames:
    """Where the LM's tensors live in the HF checkpoint (prefixes differ per family)."""

    layers: str = "model.layers"            # + ".{i}.self_attn.q_proj.weight" ...
    embed: str = "model.embed_tokens.weight"
    final_norm: str = "model.norm.weight"
    lm_head: str = "lm_head.weight"
    vision_prefix: str | None = None        # tensors under it are carried as is (Qwen2.5-VL)


@dataclass(frozen=True)
class LMArch:
    """The language model's shape facts, read from an HF config (see :func:`arch_from_hf_config`)."""

    model_type: str
    architecture: str
    vocab_size: int
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    qkv_bias: bool
    tie_embeddings: bool
    max_position_embeddings: int
    mrope_section: tuple[int, ...] | None = None
    names: HFNames = field(default_factory=HFNames)

    @property
    def heads_per_group(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def qkv_rows(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    @property
    def is_vl(self) -> bool:
        return self.names.vision_prefix is not None

    def padded_vocab_size(self, tp: int) -> int:
        """Vocab rows megatron holds: the HF vocab rounded up to a multiple of TP (pad rows are zero)."""
        return int(math.ceil(self.vocab_size / tp) * tp)

    def check_parallel(self, tp: int, pp: int) -> None:
        """Raise UnsupportedConfigError unless heads, KV groups, FFN and layers split evenly."""
        if tp < 1 or pp < 1:
            raise UnsupportedConfigError(f"tp and pp must be >= 1, got tp={tp} pp={pp}")
        for key, val, by in (("num_attention_heads", self.num_heads, tp), ("num_key_value_heads", self.num_kv_heads, tp),
                             ("intermediate_size", self.ffn_hidden_size, tp), ("num_hidden_layers", self.num_layers, pp)):
            if val % by:
                raise UnsupportedConfigError(f"{key}={val} is not divisible by {'tp' if by == tp and key != 'num_hidden_layers' else 'pp'}={by}")

    def layer_range(self, pp_rank: int, pp: int) -> tuple[int, int]:
        """Global layer indices [start, stop) held by pipeline stage ``pp_rank`` (even split)."""
        per = self.num_layers // pp
        return pp_rank * per, (pp_rank + 1) * per


def _rope_theta(cfg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    return float(theta), rp


def arch_from_hf_config(cfg: dict[str, Any]) -> LMArch:
    """Read an HF ``config.json`` dict (transformers 4.x or 5.x spelling) into :class:`LMArch`."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedConfigError(f"model_type={model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    archs = cfg.get("architectures") or []
    names = HFNames()
    text = cfg
    mrope = None
    if model_type == "qwen2_5_vl":
        text = dict(cfg.get("text_config") or cfg)
        names = HFNames(layers="model.language_model.layers", embed="model.language_model.embed_tokens.weight",
                        final_norm="model.language_model.norm.weight", lm_head="lm_head.weight",
                        vision_prefix="model.visual.")
        if text.get("tie_word_embeddings") is None:
            text["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    theta, rp = _rope_theta(text)
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if model_type == "qwen2_5_vl":
        sec = rp.get("mrope_section")
        if not sec:
            raise UnsupportedConfigError("qwen2_5_vl config lacks rope_parameters.mrope_section")
        mrope = tuple(int(x) for x in sec)
        if rope_type not in ("default", "mrope"):
            raise UnsupportedConfigError(f"rope_type={rope_type!r} is not supported")
    elif rope_type not in ("default", None):
        raise UnsupportedConfigError(f"rope_type={rope_type!r} (rope scaling) is not supported")
    act = text.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedConfigError(f"hidden_act={act!r} is not supported (SwiGLU needs silu)")
    if text.get("mlp_bias"):
        raise UnsupportedConfigError("mlp_bias=True is not supported")
    if model_type == "llama" and text.get("attention_bias"):
        raise UnsupportedConfigError("attention_bias=True is not supported for llama (o_proj bias)")
    if text.get("use_sliding_window"):
        raise UnsupportedConfigError("use_sliding_window=True is not supported")
    nh = int(text["num_attention_heads"])
    nkv = int(text.get("num_key_value_heads") or nh)
    hidden = int(text["hidden_size"])
    head_dim = int(text.get("head_dim") or hidden // nh)
    if nh % nkv:
        raise UnsupportedConfigError(f"num_attention_heads={nh} is not a multiple of num_key_value_heads={nkv}")
    return LMArch(
        model_type=model_type, architecture=archs[0] if archs else model_type,
        vocab_size=int(text["vocab_size"]), hidden_size=hidden, ffn_hidden_size=int(text["intermediate_size"]),
        num_layers=int(text["num_hidden_layers"]), num_heads=nh, num_kv_heads=nkv, head_dim=head_dim,
        rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)), rope_theta=theta,
        qkv_bias=model_type in ("qwen2", "qwen2_5_vl"),
        tie_embeddings=bool(text.get("tie_word_embeddings", cfg.get("tie_word_embeddings", False))),
        max_position_embeddings=int(text.get("max_position_embeddings", 4096)), mrope_section=mrope, names=names,
    )


LEGACY_VL_NAMES = HFNames(layers="model.layers", embed="model.embed_tokens.weight", final_norm="model.norm.weight",
                          lm_head="lm_head.weight", vision_prefix="visual.")


def resolve_hf_names(arch: LMArch, tensor_names) -> LMArch:
    """Qwen2.5-VL checkpoints come in two spellings: transformers-5 (``model.language_model.*``,
    ``model.visual.*``) and the released/legacy one (``model.layers.*``, ``visual.*``); pick the one present."""
    from dataclasses import replace

    if arch.is_vl and arch.names.embed not in tensor_names and LEGACY_VL_NAMES.embed in tensor_names:
        return replace(arch, names=LEGACY_VL_NAMES)
    return arch


def transformer_config(arch: LMArch, tp: int = 1, pp: int = 1, params_dtype=None, **overrides: Any):
    """megatron-core ``TransformerConfig`` for ``arch``: RMSNorm, SwiGLU, GQA, rope, no dropout.

    Float32 by default (``bf16=False``) so logits match HF; pass ``params_dtype``/``bf16`` to change.
    Attention is megatron's unfused local path unless ``attention_backend`` is overridden.
    """
    import torch
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.enums import AttnBackend

    arch.check_parallel(tp, pp)
    kw: dict[str, Any] = dict(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads, num_query_groups=arch.num_kv_heads, kv_channels=arch.head_dim,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps, gated_linear_unit=True,
        add_bias_linear=False, add_qkv_bias=arch.qkv_bias, bias_activation_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=params_dtype or torch.float32,
        bf16=False, fp16=False, use_cpu_initialization=not torch.cuda.is_available(),
        attention_backend=AttnBackend.local if not torch.cuda.is_available() else AttnBackend.auto,
        pipeline_dtype=params_dtype or torch.float32,
        batch_p2p_comm=torch.cuda.is_available(), attention_softmax_in_fp32=True,
    )
    import torch.nn.functional as F
    kw["activation_func"] = F.silu
    if arch.mrope_section is not None:
        kw["mrope_section"] = list(arch.mrope_section)
    kw.update(overrides)
    return TransformerConfig(**kw)

"""HF config -> the architecture facts the megatron model and the weight mapping need.

Supported: Qwen2 / Qwen2.5 (``model_type`` qwen2: q/k/v bias), Llama family (``llama``: no bias, incl.
SmolLM2), and Qwen2.5-VL (``qwen2_5_vl``: the Qwen2 LM in ``text_config`` + an HF vision tower,
3-D mrope). Anything the mapping cannot represent exactly raises :class:`UnsupportedConfigError`
naming the offending key.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any, Sequence

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "qwen2_5_vl")


class UnsupportedConfigError(ValueError):
    """The HF config asks for something the megatron mapping cannot represent exactly."""


class PipelineLayersError(UnsupportedConfigError):
    """A pipeline split (``pp`` / ``pipeline_layers``) that is invalid or megatron cannot build."""


# ------------------------------------------------------------------------- pipeline layer split
MEGATRON_SPLIT_RULE = (
    "megatron-core builds the first stage with num_layers_in_first_pipeline_stage, the last with "
    "num_layers_in_last_pipeline_stage and splits the remaining layers evenly over the middle "
    "stages (TransformerConfig; megatron/core/transformer/transformer_block.py "
    "get_num_layers_to_build), so only the first and the last stage may differ from the others")


def _suggest_split(num_layers: int, pp: int) -> tuple[int, ...] | None:
    """A representable split close to even (remainder on the first and last stage), or None."""
    base, rem = divmod(num_layers, pp)
    if base < 1:
        return None
    if pp == 1:
        return (num_layers,)
    return (base + (rem + 1) // 2,) + (base,) * (pp - 2) + (base + rem // 2,)


def resolve_pipeline_layers(num_layers: int, pp: int,
                            pipeline_layers: Sequence[int] | None = None) -> tuple[int, ...]:
    """Per-stage transformer-layer counts ("pipeline layers") of a ``pp``-stage pipeline, e.g.
    (2, 1) for 3 layers on 2 stages. The one place that decides the split; all others call it.

    * ``pipeline_layers=None``: the even split ``(num_layers // pp,) * pp``; raises
      :class:`PipelineLayersError` naming ``num_hidden_layers`` and ``pp`` when ``pp`` does not
      divide the layers (suggesting ``pipeline_layers``).
    * an explicit sequence needs one positive integer per stage (length ``pp``), must sum to
      ``num_layers`` and be expressible by megatron-core, whose rule is: stage 0 holds
      ``num_layers_in_first_pipeline_stage``, stage ``pp-1`` holds
      ``num_layers_in_last_pipeline_stage``, and the middle stages ``1 .. pp-2`` split the rest
      evenly (megatron/core/transformer/transformer_block.py ``get_num_layers_to_build``; the
      layer offsets in megatron/core/transformer/transformer_layer.py
      ``get_transformer_layer_offset``). So any positive split works for ``pp <= 2``, and for
      ``pp >= 3`` the middle entries must be equal: 28 layers on 3 stages as (10, 9, 9), not
      (9, 10, 9). Anything else raises :class:`PipelineLayersError` naming the list.

    Stage ``s`` holds global layers ``[sum(layers[:s]), sum(layers[:s + 1]))``, named
    ``decoder.layers.0 ..`` in its state_dict (see :func:`stage_of_layer`).
    """
    if isinstance(pp, bool) or not isinstance(pp, int) or pp < 1:
        raise PipelineLayersError(f"pp must be an integer >= 1, got pp={pp!r}")
    if pipeline_layers is None:
        if num_layers % pp:
            hint = _suggest_split(num_layers, pp)
            example = f", e.g. pipeline_layers={list(hint)}" if hint else ""
            raise PipelineLayersError(
                f"num_hidden_layers={num_layers} is not divisible by pp={pp}: pass pipeline_layers "
                f"(--pipeline-layers) with one layer count per stage for an uneven split{example}")
        return (num_layers // pp,) * pp
    raw = list(pipeline_layers)
    try:
        if any(isinstance(x, bool) for x in raw):
            raise TypeError
        layers = tuple(operator.index(x) for x in raw)
    except TypeError:
        raise PipelineLayersError(f"pipeline_layers={raw!r} must be a list of integers") from None
    shown = list(layers)
    if len(layers) != pp:
        raise PipelineLayersError(f"pipeline_layers={shown} has {len(layers)} entries, expected "
                                  f"one per pipeline stage (pp={pp})")
    if any(n < 1 for n in layers):
        raise PipelineLayersError(f"pipeline_layers={shown}: every stage needs at least one layer")
    if sum(layers) != num_layers:
        raise PipelineLayersError(f"pipeline_layers={shown} sums to {sum(layers)}, but the model "
                                  f"has num_hidden_layers={num_layers}")
    if len(set(layers[1:-1])) > 1:
        raise PipelineLayersError(
            f"pipeline_layers={shown} cannot be represented by megatron-core: "
            f"{MEGATRON_SPLIT_RULE} (stages 1..{pp - 2} hold {list(layers[1:-1])})")
    return layers


def megatron_pipeline_kwargs(layers: Sequence[int]) -> dict[str, int]:
    """TransformerConfig keywords that make megatron-core build the split ``layers`` (as returned
    by :func:`resolve_pipeline_layers`): none for an even split, else
    ``num_layers_in_first_pipeline_stage=layers[0]`` and
    ``num_layers_in_last_pipeline_stage=layers[-1]`` (megatron splits the rest evenly over the
    middle stages, which :func:`resolve_pipeline_layers` has checked)."""
    layers = tuple(layers)
    if len(set(layers)) <= 1:
        return {}
    return {"num_layers_in_first_pipeline_stage": layers[0],
            "num_layers_in_last_pipeline_stage": layers[-1]}


def stage_of_layer(layers: Sequence[int], layer: int) -> tuple[int, int]:
    """(pipeline stage, stage-local index) of global transformer layer ``layer`` under the
    per-stage counts ``layers``."""
    start = 0
    for stage, n in enumerate(layers):
        if 0 <= layer < start + n:
            return stage, layer - start
        start += n
    raise IndexError(f"layer {layer} is outside the pipeline split {list(layers)}")


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

    def check_parallel(self, tp: int, pp: int,
                       pipeline_layers: Sequence[int] | None = None) -> tuple[int, ...]:
        """Raise UnsupportedConfigError unless heads, KV groups and FFN split evenly over TP and the
        layers over PP as :func:`resolve_pipeline_layers` allows; returns the per-stage counts."""
        if tp < 1 or pp < 1:
            raise UnsupportedConfigError(f"tp and pp must be >= 1, got tp={tp} pp={pp}")
        for key, val in (("num_attention_heads", self.num_heads),
                         ("num_key_value_heads", self.num_kv_heads),
                         ("intermediate_size", self.ffn_hidden_size)):
            if val % tp:
                raise UnsupportedConfigError(f"{key}={val} is not divisible by tp={tp}")
        return self.stage_layers(pp, pipeline_layers)

    def stage_layers(self, pp: int,
                     pipeline_layers: Sequence[int] | None = None) -> tuple[int, ...]:
        """Per-stage layer counts on ``pp`` stages (:func:`resolve_pipeline_layers`, this model)."""
        return resolve_pipeline_layers(self.num_layers, pp, pipeline_layers)

    def layer_range(self, pp_rank: int, pp: int,
                    pipeline_layers: Sequence[int] | None = None) -> tuple[int, int]:
        """Global layer indices [start, stop) held by pipeline stage ``pp_rank`` (even split unless
        ``pipeline_layers`` is given; see :func:`resolve_pipeline_layers`)."""
        layers = self.stage_layers(pp, pipeline_layers)
        if not 0 <= pp_rank < pp:
            raise IndexError(f"pipeline stage {pp_rank} is outside pp={pp}")
        start = sum(layers[:pp_rank])
        return start, start + layers[pp_rank]


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


def transformer_config(arch: LMArch, tp: int = 1, pp: int = 1, params_dtype=None,
                       pipeline_layers: Sequence[int] | None = None, **overrides: Any):
    """megatron-core ``TransformerConfig`` for ``arch``: RMSNorm, SwiGLU, GQA, rope, no dropout.

    Float32 by default (``bf16=False``) so logits match HF; pass ``params_dtype``/``bf16`` to change.
    Attention is megatron's unfused local path unless ``attention_backend`` is overridden.
    ``pipeline_layers`` (per-stage layer counts, None = even) goes through
    :func:`resolve_pipeline_layers`; an uneven split sets ``num_layers_in_first_pipeline_stage`` /
    ``num_layers_in_last_pipeline_stage`` (:func:`megatron_pipeline_kwargs`), so megatron's layer
    offsets (transformer_layer.py ``get_transformer_layer_offset``) match the stage-local names of
    a checkpoint converted with the same split.
    """
    import torch
    from megatron.core.transformer import TransformerConfig

    from mixed_r1.parallel.platform import current_platform

    layers = arch.check_parallel(tp, pp, pipeline_layers)
    kw: dict[str, Any] = dict(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_heads, num_query_groups=arch.num_kv_heads, kv_channels=arch.head_dim,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        normalization="RMSNorm", layernorm_epsilon=arch.rms_norm_eps, gated_linear_unit=True,
        add_bias_linear=False, add_qkv_bias=arch.qkv_bias, bias_activation_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        hidden_dropout=0.0, attention_dropout=0.0, params_dtype=params_dtype or torch.float32,
        bf16=False, fp16=False, pipeline_dtype=params_dtype or torch.float32,
        attention_softmax_in_fp32=True,
        **current_platform().megatron_config_kwargs(),
        **megatron_pipeline_kwargs(layers),
    )
    import torch.nn.functional as F
    kw["activation_func"] = F.silu
    if arch.mrope_section is not None:
        kw["mrope_section"] = list(arch.mrope_section)
    kw.update(overrides)
    return TransformerConfig(**kw)

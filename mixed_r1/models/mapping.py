"""HF <-> megatron-core weight mapping for Qwen2 / Llama / Qwen2.5-VL language models.

Three layouts of the same numbers:

* **HF**: ``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, norms, embed, lm_head.
* **canonical**: megatron-core's tensor names (local layer spec) with *global* layer indices and
  *unsplit* tensors: ``decoder.layers.{i}.self_attention.linear_qkv.weight`` fused per query group —
  for each of the G KV groups, [its q heads (heads_per_group*head_dim rows); k (head_dim); v (head_dim)];
  ``mlp.linear_fc1.weight`` = [gate; up]; the embedding/output layer unpadded [vocab, hidden].
* **shard** (tp_rank, pp_stage): what ``GPTModel.state_dict()`` holds on that rank: stage-local layer
  indices, and the TP slice of each tensor by its :data:`SplitKind`. Which layers a stage holds
  is the pipeline split (per-stage layer counts: even, or megatron's uneven first/last-stage
  form) decided by :func:`mixed_r1.models.config.resolve_pipeline_layers`.

TP split rules (megatron's): ``col`` splits dim 0 (QKV: whole query groups per rank), ``row`` dim 1,
``fc1`` splits gate and up separately and stacks [gate_r; up_r], ``vocab`` pads dim 0 with zero rows to a
multiple of TP then splits it, ``rep`` is replicated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch

from .config import LMArch, stage_of_layer

SplitKind = Literal["col", "row", "fc1", "vocab", "rep"]

EMBED = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"


@dataclass(frozen=True)
class TensorSpec:
    """One canonical tensor: its megatron name (global layer index), full shape and TP split kind."""

    name: str
    shape: tuple[int, ...]
    kind: SplitKind
    layer: int | None = None   # global layer index, None for embedding/head tensors


# ---------------------------------------------------------------------------------------- units
def units(arch: LMArch) -> list[str]:
    """Conversion units in checkpoint order: ``embed``, ``layer.0`` .. ``layer.{L-1}``, ``head``."""
    return ["embed"] + [f"layer.{i}" for i in range(arch.num_layers)] + ["head"]


def unit_specs(arch: LMArch, unit: str) -> list[TensorSpec]:
    """Canonical tensors of one unit (``head`` holds the output layer only when untied)."""
    h = arch.hidden_size
    if unit == "embed":
        return [TensorSpec(EMBED, (arch.vocab_size, h), "vocab")]
    if unit == "head":
        specs = [TensorSpec(FINAL_NORM, (h,), "rep")]
        if not arch.tie_embeddings:
            specs.append(TensorSpec(OUTPUT, (arch.vocab_size, h), "vocab"))
        return specs
    i = int(unit.split(".")[1])
    p = f"decoder.layers.{i}."
    specs = [TensorSpec(p + "input_layernorm.weight", (h,), "rep", i),
             TensorSpec(p + "self_attention.linear_qkv.weight", (arch.qkv_rows, h), "col", i)]
    if arch.qkv_bias:
        specs.append(TensorSpec(p + "self_attention.linear_qkv.bias", (arch.qkv_rows,), "col", i))
    specs += [TensorSpec(p + "self_attention.linear_proj.weight", (h, arch.num_heads * arch.head_dim), "row", i),
              TensorSpec(p + "pre_mlp_layernorm.weight", (h,), "rep", i),
              TensorSpec(p + "mlp.linear_fc1.weight", (2 * arch.ffn_hidden_size, h), "fc1", i),
              TensorSpec(p + "mlp.linear_fc2.weight", (h, arch.ffn_hidden_size), "row", i)]
    return specs


def unit_stage(arch: LMArch, unit: str, pp: int,
               pipeline_layers: Sequence[int] | None = None) -> int:
    """Pipeline stage that owns a unit (embed: first, head: last, layers: by the split
    :func:`~mixed_r1.models.config.resolve_pipeline_layers` makes of ``pp``/``pipeline_layers``)."""
    layers = arch.stage_layers(pp, pipeline_layers)
    if unit == "embed":
        return 0
    if unit == "head":
        return pp - 1
    return stage_of_layer(layers, int(unit.split(".")[1]))[0]


def local_name(arch: LMArch, name: str, pp: int,
               pipeline_layers: Sequence[int] | None = None) -> str:
    """Canonical name -> the name in its stage's state_dict (layer index made stage-local: the
    global index minus the earlier stages' layers, megatron's ``get_transformer_layer_offset``)."""
    if name.startswith("decoder.layers."):
        rest = name[len("decoder.layers."):]
        idx, tail = rest.split(".", 1)
        _, local = stage_of_layer(arch.stage_layers(pp, pipeline_layers), int(idx))
        return f"decoder.layers.{local}.{tail}"
    return name


# ------------------------------------------------------------------------------------ HF names
def hf_unit_names(arch: LMArch, unit: str) -> list[str]:
    """HF tensor names a unit reads (for tied models ``head`` does not read lm_head)."""
    n = arch.names
    if unit == "embed":
        return [n.embed]
    if unit == "head":
        return [n.final_norm] + ([] if arch.tie_embeddings else [n.lm_head])
    i = int(unit.split(".")[1])
    p = f"{n.layers}.{i}."
    names = [p + "input_layernorm.weight", p + "self_attn.q_proj.weight", p + "self_attn.k_proj.weight",
             p + "self_attn.v_proj.weight"]
    if arch.qkv_bias:
        names += [p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias", p + "self_attn.v_proj.bias"]
    names += [p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight", p + "mlp.gate_proj.weight",
              p + "mlp.up_proj.weight", p + "mlp.down_proj.weight"]
    return names


def hf_expected_shapes(arch: LMArch, unit: str) -> dict[str, tuple[int, ...]]:
    """Shape every HF tensor of a unit must have."""
    h, hd = arch.hidden_size, arch.head_dim
    q, kv, f = arch.num_heads * hd, arch.num_kv_heads * hd, arch.ffn_hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for name in hf_unit_names(arch, unit):
        leaf = name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1]
        shapes[name] = {
            "q_proj.weight": (q, h), "k_proj.weight": (kv, h), "v_proj.weight": (kv, h),
            "q_proj.bias": (q,), "k_proj.bias": (kv,), "v_proj.bias": (kv,), "o_proj.weight": (h, q),
            "gate_proj.weight": (f, h), "up_proj.weight": (f, h), "down_proj.weight": (h, f),
        }.get(leaf, (arch.vocab_size, h) if name in (arch.names.embed, arch.names.lm_head) else (h,))
    return shapes


# --------------------------------------------------------------------------------- QKV / fc1
def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, arch: LMArch) -> torch.Tensor:
    """[q; k; v] (HF, heads contiguous) -> megatron's per-group [q_g; k_g; v_g] rows (weight or bias)."""
    g, hd, hpg = arch.num_kv_heads, arch.head_dim, arch.heads_per_group
    tail = q.shape[1:]
    qg = q.reshape(g, hpg * hd, *tail)
    kg = k.reshape(g, hd, *tail)
    vg = v.reshape(g, hd, *tail)
    return torch.cat([qg, kg, vg], dim=1).reshape(arch.qkv_rows, *tail)


def split_qkv(fused: torch.Tensor, arch: LMArch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`fuse_qkv`."""
    g, hd, hpg = arch.num_kv_heads, arch.head_dim, arch.heads_per_group
    tail = fused.shape[1:]
    x = fused.reshape(g, (hpg + 2) * hd, *tail)
    q, k, v = torch.split(x, [hpg * hd, hd, hd], dim=1)
    return (q.reshape(arch.num_heads * hd, *tail).contiguous(), k.reshape(g * hd, *tail).contiguous(),
            v.reshape(g * hd, *tail).contiguous())


def hf_to_canonical(arch: LMArch, unit: str, get: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Build one unit's canonical tensors from HF tensors fetched by ``get(hf_name)``."""
    n = arch.names
    if unit == "embed":
        return {EMBED: get(n.embed)}
    if unit == "head":
        out = {FINAL_NORM: get(n.final_norm)}
        if not arch.tie_embeddings:
            out[OUTPUT] = get(n.lm_head)
        return out
    i = int(unit.split(".")[1])
    hp, mp = f"{n.layers}.{i}.", f"decoder.layers.{i}."
    out = {mp + "input_layernorm.weight": get(hp + "input_layernorm.weight"),
           mp + "self_attention.linear_qkv.weight": fuse_qkv(get(hp + "self_attn.q_proj.weight"),
                                                             get(hp + "self_attn.k_proj.weight"),
                                                             get(hp + "self_attn.v_proj.weight"), arch)}
    if arch.qkv_bias:
        out[mp + "self_attention.linear_qkv.bias"] = fuse_qkv(get(hp + "self_attn.q_proj.bias"),
                                                              get(hp + "self_attn.k_proj.bias"),
                                                              get(hp + "self_attn.v_proj.bias"), arch)
    out[mp + "self_attention.linear_proj.weight"] = get(hp + "self_attn.o_proj.weight")
    out[mp + "pre_mlp_layernorm.weight"] = get(hp + "post_attention_layernorm.weight")
    out[mp + "mlp.linear_fc1.weight"] = torch.cat([get(hp + "mlp.gate_proj.weight"), get(hp + "mlp.up_proj.weight")])
    out[mp + "mlp.linear_fc2.weight"] = get(hp + "mlp.down_proj.weight")
    return out


def canonical_to_hf(arch: LMArch, unit: str, t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`hf_to_canonical` (``head`` of a tied model yields only the final norm)."""
    n = arch.names
    if unit == "embed":
        return {n.embed: t[EMBED]}
    if unit == "head":
        out = {n.final_norm: t[FINAL_NORM]}
        if not arch.tie_embeddings:
            out[n.lm_head] = t[OUTPUT]
        return out
    i = int(unit.split(".")[1])
    hp, mp = f"{n.layers}.{i}.", f"decoder.layers.{i}."
    q, k, v = split_qkv(t[mp + "self_attention.linear_qkv.weight"], arch)
    out = {hp + "input_layernorm.weight": t[mp + "input_layernorm.weight"],
           hp + "self_attn.q_proj.weight": q, hp + "self_attn.k_proj.weight": k, hp + "self_attn.v_proj.weight": v}
    if arch.qkv_bias:
        qb, kb, vb = split_qkv(t[mp + "self_attention.linear_qkv.bias"], arch)
        out.update({hp + "self_attn.q_proj.bias": qb, hp + "self_attn.k_proj.bias": kb, hp + "self_attn.v_proj.bias": vb})
    gate, up = torch.chunk(t[mp + "mlp.linear_fc1.weight"], 2, dim=0)
    out.update({hp + "self_attn.o_proj.weight": t[mp + "self_attention.linear_proj.weight"],
                hp + "post_attention_layernorm.weight": t[mp + "pre_mlp_layernorm.weight"],
                hp + "mlp.gate_proj.weight": gate.contiguous(), hp + "mlp.up_proj.weight": up.contiguous(),
                hp + "mlp.down_proj.weight": t[mp + "mlp.linear_fc2.weight"]})
    return out


# --------------------------------------------------------------------------------- TP split
def tp_shard_shape(spec: TensorSpec, tp: int, arch: LMArch) -> tuple[int, ...]:
    """Shape of one TP rank's slice of a canonical tensor."""
    s = list(spec.shape)
    if spec.kind in ("col", "fc1"):
        s[0] //= tp
    elif spec.kind == "row":
        s[1] //= tp
    elif spec.kind == "vocab":
        s[0] = arch.padded_vocab_size(tp) // tp
    return tuple(s)


def tp_split(t: torch.Tensor, kind: SplitKind, tp: int, arch: LMArch) -> list[torch.Tensor]:
    """Split a canonical tensor into TP slices (contiguous clones, see module doc for the rule)."""
    if tp == 1 and kind != "vocab":
        return [t.contiguous()]
    if kind == "rep":
        return [t.contiguous() for _ in range(tp)]
    if kind == "col":
        return [c.contiguous() for c in torch.chunk(t, tp, dim=0)]
    if kind == "row":
        return [c.contiguous() for c in torch.chunk(t, tp, dim=1)]
    if kind == "fc1":
        gate, up = torch.chunk(t, 2, dim=0)
        return [torch.cat([g, u]) for g, u in zip(torch.chunk(gate, tp), torch.chunk(up, tp))]
    if kind == "vocab":
        pad = arch.padded_vocab_size(tp) - t.shape[0]
        if pad:
            t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])])
        return [c.contiguous() for c in torch.chunk(t, tp, dim=0)]
    raise ValueError(f"unknown split kind {kind!r}")


def tp_merge(parts: list[torch.Tensor], kind: SplitKind, arch: LMArch) -> torch.Tensor:
    """Inverse of :func:`tp_split` (``rep`` takes rank 0's copy; ``vocab`` drops the pad rows)."""
    if kind == "rep" or len(parts) == 1 and kind != "vocab":
        return parts[0]
    if kind == "col":
        return torch.cat(parts, dim=0)
    if kind == "row":
        return torch.cat(parts, dim=1)
    if kind == "fc1":
        gates, ups = zip(*(torch.chunk(p, 2, dim=0) for p in parts))
        return torch.cat(list(gates) + list(ups), dim=0)
    if kind == "vocab":  # one part: a view, no copy
        return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=0))[: arch.vocab_size]
    raise ValueError(f"unknown split kind {kind!r}")


def shard_specs(arch: LMArch, tp: int, pp: int, pp_rank: int,
                pipeline_layers: Sequence[int] | None = None
                ) -> Iterator[tuple[str, TensorSpec, str]]:
    """(unit, canonical spec, local name) of every tensor a (any tp rank, ``pp_rank``) shard holds,
    for the split of ``pp``/``pipeline_layers`` (even when None; ``resolve_pipeline_layers``).

    A tied model with pp > 1 also stores the embedding on the last stage as ``output_layer.weight``
    (megatron keeps that copy in sync); with pp == 1 the output layer reuses the embedding.
    """
    layers = arch.stage_layers(pp, pipeline_layers)
    for unit in units(arch):
        if unit_stage(arch, unit, pp, layers) != pp_rank:
            continue
        for spec in unit_specs(arch, unit):
            yield unit, spec, local_name(arch, spec.name, pp, layers)
    if arch.tie_embeddings and pp > 1 and pp_rank == pp - 1:
        yield "embed", unit_specs(arch, "embed")[0], OUTPUT

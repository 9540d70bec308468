"""Weight sync: stream the megatron policy's shards to the generator as HF-named tensors.

The stream walks the model unit by unit (embedding, each layer, final norm/head — the
converter's units, :mod:`mixed_r1.models.mapping`). For one bucket of units (``bucket_bytes``
of this rank's shards) the stage that owns them

1. flattens its local shards into one buffer and all-gathers it over the TP group,
2. merges the TP slices into canonical tensors (``tp_merge``: QKV groups, [gate; up], vocab
   padding dropped) and maps them to HF names (``canonical_to_hf``),

and the pipeline stages take turns: the owner broadcasts the bucket's canonical tensors over
the PP group, so the generator on every stage receives the whole model. No rank ever holds
more than one bucket of gathered weights on top of its own shards; the generator consumes the
stream lazily (one ``reload_weights`` pass), so no full-model copy exists anywhere.

Every rank must iterate the stream (it runs collectives); ranks without a generator drain it
with :func:`sync_weights` and ``generator=None``.

Frozen parts (``model.freeze_*``) never change, so a generator that keeps its weights between
updates (:func:`~mixed_r1.rollout.backends.accepts_partial_updates`: HF generate) is sent them
once (at build or resume) and then only the trainable ones (``sync_weights(..., partial=True)``;
the stream built with ``lm=False`` and/or without the frozen vision tensors); vLLM gets every
weight at every sync (its sleep discards them).

Pipeline split: the stage owning each layer, and its stage-local name, follow the split the model
was built with, as megatron reports it from the model's config (``get_num_layers_to_build`` per
stage: even, or ``num_layers_in_first/last_pipeline_stage`` with even middle stages; see
:func:`mixed_r1.models.config.resolve_pipeline_layers`).

:func:`sync_weights` is also the one place that orders the GPU memory dance around an update:
the generator slept with vLLM sleep level 2 (weights and KV cache released) while the policy
trained; then ``wake_up(tags=["weights"])`` → load the new weights in place → empty the CUDA
cache → ``wake_up(tags=["kv_cache"])``. (Waking before the load matters: with level 1 the old
weights are offloaded and restored by the wake-up, overwriting a load made while asleep.)

:meth:`MegatronWeightStream.retarget` renames what it sends to the target checkpoint's spelling
(Qwen2.5-VL: transformers 5's ``model.language_model.*``/``model.visual.*`` or the released
``model.layers.*``/``visual.*``), so a generator built from either accepts the stream.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mixed_r1.models.config import LMArch
from mixed_r1.models.mapping import (TensorSpec, canonical_to_hf, hf_expected_shapes,
                                     local_name, tp_merge, tp_shard_shape, unit_specs,
                                     unit_stage, units)
from mixed_r1.parallel import state
from mixed_r1.rollout.base import sync_weights  # noqa: F401  (the sync cycle, see above)
from mixed_r1.models.qwen2.model import model_pipeline_layers, te_name


@dataclass
class _Bucket:
    stage: int
    units: list[str]
    specs: list[tuple[str, TensorSpec]]  # (unit, spec)


class MegatronWeightStream:
    """Iterable of ``(hf_name, tensor)`` from a megatron ``GPTModel`` shard on every rank.

    ``specs()`` lists every HF name and full shape up front (from the architecture, and for the
    extras one object broadcast at construction), so a generator can validate the whole update
    before loading anything. ``dtype`` casts what is sent (e.g. bf16 for a bf16 engine);
    ``extra`` are named tensors held whole by the pipeline stage ``extra_stage`` (e.g. the
    replicated vision tower on the first stage; empty on the other stages), sent after the LM:
    with PP > 1 that stage broadcasts them over the pipeline group in buckets of
    ``bucket_bytes``, so every stage's generator receives them. ``lm=False`` leaves the language
    model out (a frozen one: nothing of it is gathered or sent), so the stream is the extras
    alone; every rank must pass the same.
    """

    def __init__(self, model: torch.nn.Module, arch: LMArch, *, bucket_bytes: int = 256 << 20,
                 dtype: torch.dtype | None = None,
                 pipeline_layers: Sequence[int] | None = None,
                 extra: dict[str, torch.Tensor] | None = None, extra_stage: int = 0,
                 lm: bool = True) -> None:
        self.model, self.arch = model, arch
        self.lm = bool(lm)
        self.bucket_bytes = int(bucket_bytes)
        self.dtype = dtype
        self.extra = extra or {}
        self.extra_stage = int(extra_stage)
        self.tp, self.pp = state.tp_size(), state.pp_size()
        self.layers = stream_pipeline_layers(model, arch, self.pp, pipeline_layers)
        self.bytes_sent = 0
        self._extra_specs = {k: (tuple(v.shape), v.dtype) for k, v in self.extra.items()}
        if self.pp > 1:  # the other stages learn names, shapes and dtypes from the owner
            box = [self._extra_specs]
            dist.broadcast_object_list(box, src=dist.get_global_rank(state.pp_group(),
                                                                     self.extra_stage),
                                       group=state.pp_group())
            self._extra_specs = box[0]

    # ------------------------------------------------------------------------ planning
    def specs(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, tuple[int, ...]] = {}
        for unit in units(self.arch) if self.lm else ():
            out.update(hf_expected_shapes(self.arch, unit))
        out.update({k: shape for k, (shape, _) in self._extra_specs.items()})
        return out

    def _buckets(self) -> Iterator[_Bucket]:
        current: _Bucket | None = None
        size = 0
        for unit in units(self.arch):
            stage = unit_stage(self.arch, unit, self.pp, self.layers)
            specs = [(unit, s) for s in unit_specs(self.arch, unit)]
            nbytes = sum(_numel(tp_shard_shape(s, self.tp, self.arch)) for _, s in specs) * 4
            if current is not None and (current.stage != stage or size >= self.bucket_bytes):
                yield current
                current, size = None, 0
            if current is None:
                current = _Bucket(stage, [], [])
            current.units.append(unit)
            current.specs.extend(specs)
            size += nbytes
        if current is not None:
            yield current

    # ----------------------------------------------------------------------- streaming
    def _local(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if not k.endswith("_extra_state")}

    def _canonical(self, bucket: _Bucket, params: dict[str, torch.Tensor], device: torch.device,
                   dtype: torch.dtype) -> Iterator[tuple[TensorSpec, Callable[[], torch.Tensor]]]:
        """Per spec of the bucket, a function making its canonical (TP-merged) tensor, on every
        stage of the pipeline group.

        The bucket's buffer is spec-major, ``[spec 0: TP slices][spec 1: TP slices]…``: each shard
        is all-gathered over TP straight into its block (``all_gather_into_tensor``, no copy of
        the shard), and the owning stage broadcasts the buffer over PP. A row-stacked tensor
        (``col``/``vocab`` kinds: embedding, QKV, output layer) is then a view of its block; the
        others (``row``, ``fc1``) are merged into one new tensor, made only when asked for. TP = PP
        = 1 needs no buffer at all: the shards are the canonical tensors."""
        mine = state.pp_rank() == bucket.stage
        specs = [spec for _, spec in bucket.specs]
        shards = []
        if mine:
            for spec in specs:
                name = local_name(self.arch, spec.name, self.pp, self.layers)
                shards.append(params[name if name in params else te_name(name)].detach())
        if self.tp == 1 and self.pp == 1:
            for spec, t in zip(specs, shards):
                yield spec, (lambda t=t, spec=spec: tp_merge([t], spec.kind, self.arch))
            return
        shapes = [tp_shard_shape(spec, self.tp, self.arch) for spec in specs]
        sizes = [_numel(sh) for sh in shapes]
        out = torch.empty(self.tp * sum(sizes), dtype=dtype, device=device)  # the model's dtype
        offset = 0
        for t, k in zip(shards, sizes):  # empty on the other stages
            block = out[offset:offset + self.tp * k]
            if self.tp > 1:
                dist.all_gather_into_tensor(block, t.contiguous().reshape(-1).to(dtype),
                                            group=state.tp_group())
            else:
                block.copy_(t.reshape(-1))
            offset += self.tp * k
        if self.pp > 1:
            group = state.pp_group()
            dist.broadcast(out, src=dist.get_global_rank(group, bucket.stage), group=group)
        offset = 0
        for spec, sh, k in zip(specs, shapes, sizes):
            block = out[offset:offset + self.tp * k]
            offset += self.tp * k
            if spec.kind in ("col", "vocab"):  # rank slices stacked along dim 0: a view
                full = block.view(self.tp * sh[0], *sh[1:])
                merged = full[: self.arch.vocab_size] if spec.kind == "vocab" else full
                yield spec, (lambda m=merged: m)
            else:
                parts = [p.view(sh) for p in block.view(self.tp, k)]
                yield spec, (lambda parts=parts, spec=spec: tp_merge(parts, spec.kind, self.arch))

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Bucket by bucket: the bucket's gather buffer, then unit by unit the merged canonical
        tensors under HF names — at most one bucket plus one unit on a rank (module docstring)."""
        params = self._local()
        first = next(iter(params.values()))
        for bucket in self._buckets() if self.lm else ():
            makers = {spec.name: make for spec, make in
                      self._canonical(bucket, params, first.device, first.dtype)}
            for unit in bucket.units:
                canonical = {s.name: makers[s.name]() for s in unit_specs(self.arch, unit)}
                for name, tensor in canonical_to_hf(self.arch, unit, canonical).items():
                    yield self._send(name, tensor)
                del canonical
            del makers
        yield from self._extras(first.device)

    def _extras(self, device: torch.device) -> Iterator[tuple[str, torch.Tensor]]:
        """The extra tensors; with PP > 1 broadcast from their stage in flat per-dtype buckets."""
        if self.pp == 1:
            for name, tensor in self.extra.items():
                yield self._send(name, tensor.detach())
            return
        group = state.pp_group()
        src = dist.get_global_rank(group, self.extra_stage)
        mine = state.pp_rank() == self.extra_stage
        bucket: list[tuple[str, tuple[int, ...]]] = []
        size, dtype = 0, None
        items = list(self._extra_specs.items())
        for i, (name, (shape, dt)) in enumerate(items):
            bucket.append((name, shape))
            size += _numel(shape) * dt.itemsize
            dtype = dt
            nxt = items[i + 1][1][1] if i + 1 < len(items) else None
            if size < self.bucket_bytes and nxt == dtype:
                continue
            if mine:
                flat = torch.cat([self.extra[n].detach().reshape(-1) for n, _ in bucket])
            else:
                flat = torch.empty(sum(_numel(s) for _, s in bucket), dtype=dtype, device=device)
            dist.broadcast(flat, src=src, group=group)
            offset = 0
            for n, s in bucket:
                k = _numel(s)
                yield self._send(n, flat[offset:offset + k].view(s))
                offset += k
            bucket, size = [], 0

    def retarget(self, tensor_names) -> "MegatronWeightStream":
        """Send names in the spelling of a checkpoint holding ``tensor_names`` (see the module
        docstring); returns self."""
        from mixed_r1.models.config import resolve_hf_names

        new = resolve_hf_names(self.arch, set(tensor_names))
        old, prefix = self.arch.names.vision_prefix, new.names.vision_prefix
        if old and prefix and old != prefix:
            def rename(k: str) -> str:
                return prefix + k[len(old):] if k.startswith(old) else k

            self.extra = {rename(k): v for k, v in self.extra.items()}
            self._extra_specs = {rename(k): v for k, v in self._extra_specs.items()}
        self.arch = new
        return self

    def _send(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
        if self.dtype is not None:
            tensor = tensor.to(self.dtype)
        self.bytes_sent += tensor.numel() * tensor.element_size()
        return name, tensor


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def stream_pipeline_layers(model: torch.nn.Module, arch: LMArch, pp: int,
                           pipeline_layers: Sequence[int] | None = None) -> tuple[int, ...]:
    """Per-stage layer counts of ``model``: megatron's own count from ``model.config`` (see
    :func:`mixed_r1.models.qwen2.model.model_pipeline_layers`), or, for a model without a megatron
    config, ``resolve_pipeline_layers(pp, pipeline_layers)``. A ``pipeline_layers`` that differs
    from the model's split raises ValueError naming both."""
    asked = None if pipeline_layers is None else arch.stage_layers(pp, pipeline_layers)
    if getattr(model, "config", None) is None:
        return asked if asked is not None else arch.stage_layers(pp)
    built = arch.stage_layers(pp, model_pipeline_layers(model))
    if asked is not None and asked != built:
        raise ValueError(f"pipeline_layers={list(asked)} was asked for, but the model was built "
                         f"with pipeline_layers={list(built)}")
    return built

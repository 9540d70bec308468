"""Per-GPU memory budget of a training layout, from the real parameter shapes of a model's config.

Static memory of the update phase on one rank (TP rank, PP stage, DP rank), in bytes:

- **weights**: this rank's parameters in the compute dtype — its TP shard of the stage's
  language-model tensors (:func:`mixed_r1.models.mapping.shard_specs`, with megatron's vocab
  padding and, for a tied model with PP > 1, the last stage's copy of the embedding) plus, on
  the first stage, the whole (replicated) Qwen2.5-VL vision tower;
- **grads**: megatron-core DDP's contiguous gradient buffer, fp32 (``grad_reduce_in_fp32``),
  one element per parameter (not sharded, also with the distributed optimizer);
- **masters**: fp32 main parameters — only for bf16 weights (fp32 weights are their own
  masters); divided by DP with the distributed optimizer;
- **optimizer**: Adam's two fp32 moments, divided by DP with the distributed optimizer;
- **update snapshot**: the transient fp32 copy of this rank's masters that ``update/rel_change``
  takes during a step (:func:`mixed_r1.engine.run_update`).

Bytes per parameter therefore: bf16 = 2 + 4 + (4 + 8 + 4)/d, fp32 = 4 + 4 + (8 + 4)/d with
d = DP for the distributed optimizer, else 1 (megatron-core's accounting, e.g. its
``--use-distributed-optimizer`` documentation: 18 → 6 + 12/d bytes per parameter for bf16 with
fp32 grads and masters, plus our snapshot).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

GIB = 1 << 30


@dataclass
class StaticMemory:
    """Static update-phase memory of one rank of one pipeline stage (bytes); see the module doc."""

    stage: int
    params: int  # elements held by this rank
    weights: int
    grads: int
    masters: int
    optimizer: int
    update_snapshot: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.masters + self.optimizer + self.update_snapshot


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` (or a model directory holding one) as a dict."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no model config (config.json)")
    return json.loads(p.read_text())


def vision_params(hf_config: dict[str, Any]) -> int:
    """Elements of the Qwen2.5-VL vision tower (0 for a text LM), counted from the real module
    built on the meta device (no memory)."""
    if hf_config.get("model_type") != "qwen2_5_vl":
        return 0
    import torch

    from mixed_r1.parallel.multimodal import build_vision_tower

    with torch.device("meta"):
        tower = build_vision_tower(hf_config, dtype=torch.float32, attn_implementation="sdpa",
                                   device="meta")
    return sum(p.numel() for p in tower.parameters())


def stage_params(hf_config: dict[str, Any], tp: int, pp: int,
                 pipeline_layers: Sequence[int] | None = None) -> list[int]:
    """Parameters held by one TP rank of each pipeline stage (the most loaded TP rank: they are
    equal up to replicated norms and biases)."""
    from mixed_r1.models.config import arch_from_hf_config
    from mixed_r1.models.mapping import shard_specs, tp_shard_shape

    arch = arch_from_hf_config(hf_config)
    arch.check_parallel(tp, pp, pipeline_layers)
    out = []
    for stage in range(pp):
        n = 0
        for _, spec, _ in shard_specs(arch, tp, pp, stage, pipeline_layers):
            k = 1
            for d in tp_shard_shape(spec, tp, arch):
                k *= int(d)
            n += k
        out.append(n)
    out[0] += vision_params(hf_config)
    return out


def static_memory(hf_config: dict[str, Any], *, tp: int, pp: int, dp: int, dtype: str = "bfloat16",
                  distributed_optimizer: bool = False,
                  pipeline_layers: Sequence[int] | None = None) -> list[StaticMemory]:
    """:class:`StaticMemory` of each pipeline stage's ranks (see the module docstring)."""
    wbytes = {"bfloat16": 2, "float32": 4}[dtype]
    shard = dp if distributed_optimizer else 1
    rows = []
    for stage, n in enumerate(stage_params(hf_config, tp, pp, pipeline_layers)):
        masters = n * 4 // shard if dtype == "bfloat16" else 0
        rows.append(StaticMemory(stage=stage, params=n, weights=n * wbytes, grads=n * 4,
                                 masters=masters, optimizer=2 * 4 * n // shard,
                                 update_snapshot=4 * n // shard))
    return rows


def format_static(rows: Sequence[StaticMemory]) -> str:
    """A table (GiB) of :func:`static_memory` rows."""
    cols = ("weights", "grads", "masters", "optimizer", "update_snapshot", "total")
    lines = [f"{'stage':<7}{'params':>14}" + "".join(f"{c:>17}" for c in cols)]
    for r in rows:
        lines.append(f"{r.stage:<7}{r.params:>14,}" + "".join(
            f"{getattr(r, c) / GIB:>17.2f}" for c in cols))
    return "\n".join(lines)


__all__ = ["StaticMemory", "format_static", "read_model_config", "stage_params", "static_memory",
           "vision_params"]

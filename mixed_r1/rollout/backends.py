"""Rollout backends by name (``rollout.backend``): a registry of generator builders, filled by
decorators as the advantage estimators are (:class:`mixed_r1.algo.registry.Registry`), so a new
backend is one decorated builder and the config validates ``rollout.backend`` against
``ROLLOUT_BACKENDS.names()``.

A builder is ``build(cfg, model, processor, *, model_dir=None, dims=None) -> Generator``:
``cfg`` the run's :class:`mixed_r1.config.TrainConfig`, ``model`` the policy's HF model (None
where the backend loads its own copy from ``model_dir``), ``processor`` the model's own
processor/tokenizer, ``dims`` the job's :class:`~mixed_r1.parallel.dims.ParallelDims`
(``mixed_r1.config.parallel_dims``: ranks per rollout replica and replicas; None: one process). The heavy backend modules (vLLM, transformers' generate) are imported on build only.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mixed_r1.algo.registry import Registry
from mixed_r1.parallel.dims import ParallelDims

ROLLOUT_BACKENDS = Registry("rollout backend")


def max_model_len(cfg: Any) -> int:
    """The generator's context: ``rollout.max_model_len``, else prompt budget + new tokens."""
    r = cfg.rollout
    return r.max_model_len or r.max_prompt_length + r.max_new_tokens


@ROLLOUT_BACKENDS.register("vllm")
def build_vllm(cfg: Any, model: Any, processor: Any, *, model_dir: str | Path | None = None,
               dims: ParallelDims | None = None):
    """A colocated vLLM engine (:class:`~mixed_r1.rollout.vllm_backend.VLLMGenerator`) loaded from
    ``model_dir`` (default ``model.path``; a tiny model is written to ``<out>/init_model``), one
    engine of ``dims.rollout_tp`` ranks per rollout replica under torchrun, with the trainer's
    pixel budget."""
    dims = dims or ParallelDims()
    from mixed_r1.models.processor import pixel_budget, tokenizer_of
    from mixed_r1.rollout.vllm_backend import VLLMGenerator

    if model_dir is None:
        model_dir = cfg.model.path
        if cfg.model.kind != "pretrained":  # the engine loads from a directory: write one
            model_dir = str(Path(cfg.out_dir) / "init_model")
            model.save_pretrained(model_dir, safe_serialization=True)
    return VLLMGenerator(str(model_dir), dtype=cfg.model.dtype, seed=cfg.seed,
                         tensor_parallel_size=int(dims.rollout_tp), replicas=dims.replicas,
                         gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                         enable_sleep_mode=cfg.rollout.enable_sleep_mode,
                         max_model_len=max_model_len(cfg), image_budget=pixel_budget(processor),
                         tokenizer=tokenizer_of(processor))


@ROLLOUT_BACKENDS.register("hf")
def build_hf(cfg: Any, model: Any, processor: Any, *, model_dir: str | Path | None = None,
             dims: ParallelDims | None = None):
    """transformers' generate (:class:`~mixed_r1.rollout.hf.HFGenerator`) over a frozen copy of
    ``model`` (its own weights, synced after every update); ``model_dir``/``dims`` unused: a
    multi-rank job runs one per replica leader."""
    from mixed_r1.rollout.hf import HFGenerator

    gen_model = copy.deepcopy(model).eval()
    for p in gen_model.parameters():
        p.requires_grad_(False)
    return HFGenerator(gen_model, processor, batch_size=cfg.rollout.batch_size)


# which backends keep the weights they hold between updates, so that an update may leave frozen
# parameters out (mixed_r1.models.freeze): HF generate does. vLLM gets every weight at every
# sync: asleep at level 2 during the update it discards its weights, and its in-place layerwise
# reload (reload_weights) expects the whole model in one call.
build_hf.partial_updates = True  # type: ignore[attr-defined]
build_vllm.partial_updates = False  # type: ignore[attr-defined]


def accepts_partial_updates(backend: str) -> bool:
    """Whether the generators of rollout backend ``backend`` take updates that leave frozen
    parameters out (decided from the config, so every rank of a job streams the same)."""
    return bool(getattr(ROLLOUT_BACKENDS.get(backend), "partial_updates", False))


def build_generator(cfg: Any, model: Any, processor: Any, *, model_dir: str | Path | None = None,
                    dims: ParallelDims | None = None):
    """The generator of ``cfg.rollout.backend`` (see the module docstring); ValueError naming the
    registered backends for an unknown name."""
    return ROLLOUT_BACKENDS.get(cfg.rollout.backend)(cfg, model, processor, model_dir=model_dir,
                                                     dims=dims)


__all__ = ["ROLLOUT_BACKENDS", "accepts_partial_updates", "build_generator", "build_hf",
           "build_vllm", "max_model_len"]

"""Parallelism: the job's layout (:class:`ParallelDims`, pure Python), process groups
(:mod:`.state`: torch.distributed + megatron-core ``parallel_state``), torch.distributed helpers
(:mod:`.dist`), the vocab-parallel ops on logits shards (:mod:`.vocab`), megatron's pipeline
schedule (:mod:`.schedule`) and the CPU shim (:mod:`.cpu_shim`). Model code lives in
:mod:`mixed_r1.models` (``models/<family>/``).

    from mixed_r1.parallel import ParallelDims, init_parallel, pipeline_logprobs

Names are loaded on first use, so ``ParallelDims`` costs no torch import.
"""
from .dims import ParallelDims, ParallelDimsError

_LAZY = {
    "state": ("state", None), "cpu_shim": ("cpu_shim", None),
    "init_parallel": ("state", "init_parallel"), "destroy_parallel": ("state", "destroy_parallel"),
    "single_process_env": ("state", "single_process_env"),
    "barrier": ("dist", "barrier"), "broadcast_object": ("dist", "broadcast_object"),
    "is_main_rank": ("dist", "is_main_rank"),
    "mask_vocab_padding": ("vocab", "mask_vocab_padding"), "shard_argmax": ("vocab", "shard_argmax"),
    "shard_token_logprobs": ("vocab", "shard_token_logprobs"), "vocab_range": ("vocab", "vocab_range"),
    "PipelineResult": ("schedule", "PipelineResult"), "greedy_generate": ("schedule", "greedy_generate"),
    "masked_nll": ("schedule", "masked_nll"), "pipeline_logprobs": ("schedule", "pipeline_logprobs"),
}

__all__ = ["ParallelDims", "ParallelDimsError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(name)
    import importlib

    module, attr = _LAZY[name]
    mod = importlib.import_module(f"{__name__}.{module}")
    return mod if attr is None else getattr(mod, attr)

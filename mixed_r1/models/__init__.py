"""Models: what is generic here, one folder per family below (torchtitan's per-model folders).

Generic: ``config.py`` (an HF config → :class:`LMArch`, the shape facts every family shares),
``mapping.py`` (the decoder's HF ⇄ megatron tensor mapping), ``convert.py`` (checkpoint
conversion and resharding, any TP/PP), ``cache.py`` (a job's cached conversion), ``gguf.py``,
``processor.py`` (a model directory's own processor and the one prompt encoder),
``safetensors_io.py``. Families (``model_type`` → folder): ``qwen2`` and ``llama`` →
:mod:`mixed_r1.models.qwen2` (the megatron decoder), ``qwen2_5_vl`` →
:mod:`mixed_r1.models.qwen25vl` (vision tower + decoder, its processor, a tiny checkpoint).

    from mixed_r1.models import hf_to_mcore, mcore_to_hf, reshard, arch_from_hf_config
"""
from .config import (LMArch, PipelineLayersError, UnsupportedConfigError, arch_from_hf_config,
                     resolve_pipeline_layers)
from .convert import (hf_to_mcore, iter_shard_tensors, manifest_pipeline_layers, mcore_to_hf,
                      read_manifest, reshard)
from .safetensors_io import CheckpointError

__all__ = ["LMArch", "UnsupportedConfigError", "PipelineLayersError", "CheckpointError",
           "arch_from_hf_config", "resolve_pipeline_layers", "hf_to_mcore", "mcore_to_hf",
           "reshard", "read_manifest", "manifest_pipeline_layers", "iter_shard_tensors"]

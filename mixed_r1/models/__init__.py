"""HF <-> megatron-core weight mapping and checkpoint conversion (Qwen2, Llama, Qwen2.5-VL).

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

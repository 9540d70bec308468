"""megatron-core glue: process groups, the CPU shim, the policy model and the pipeline schedule.

    from mixed_r1.parallel import ParallelConfig, init_parallel, load_policy, pipeline_logprobs
"""
from . import cpu_shim, state
from .model import (build_gpt_model, layer_spec, load_mcore_shard, load_policy, mask_vocab_padding, shard_argmax,
                    shard_token_logprobs)
from .multimodal import Qwen25VLPolicy, load_vl_policy, mrope_position_ids
from .schedule import PipelineResult, greedy_generate, masked_nll, pipeline_logprobs
from .state import ParallelConfig, destroy_parallel, init_parallel

__all__ = ["cpu_shim", "state", "ParallelConfig", "init_parallel", "destroy_parallel", "build_gpt_model", "layer_spec",
           "load_mcore_shard", "load_policy", "mask_vocab_padding", "shard_argmax", "shard_token_logprobs",
           "PipelineResult", "greedy_generate", "masked_nll", "pipeline_logprobs", "Qwen25VLPolicy", "load_vl_policy",
           "mrope_position_ids"]

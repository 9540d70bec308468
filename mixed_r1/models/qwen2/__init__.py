"""The Qwen2 decoder family (``model_type`` qwen2, and llama: the same decoder without q/k/v bias,
SmolLM2 included) on megatron-core. Its HF ⇄ megatron mapping is :mod:`mixed_r1.models.mapping`
(the decoder's, shared with Qwen2.5-VL's language model) and its processor is the model
directory's own tokenizer (:func:`mixed_r1.models.processor.load_processor`).

    from mixed_r1.models.qwen2 import build_gpt_model, load_policy
"""
from .model import (build_gpt_model, has_transformer_engine, layer_spec, load_mcore_shard, load_policy,
                    model_pipeline_layers, te_name)

__all__ = ["build_gpt_model", "has_transformer_engine", "layer_spec", "load_mcore_shard", "load_policy",
           "model_pipeline_layers", "te_name"]

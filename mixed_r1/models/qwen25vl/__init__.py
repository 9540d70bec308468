"""The Qwen2.5-VL family (``model_type`` qwen2_5_vl): the megatron-core policy (HF vision tower +
the Qwen2 decoder with 3-D mrope, :mod:`.model`), the offline tokenizer and images-only processor
(:mod:`.processor`) and a tiny random checkpoint for CPU runs (:mod:`.tiny`). Its language model
uses the decoder mapping of :mod:`mixed_r1.models.mapping` under Qwen2.5-VL's HF names; the vision
tower is carried as is (``vision.safetensors``).

    from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl, load_vl_policy

The megatron module is imported on first use (it loads megatron-core); the processor and the tiny
model need only transformers.
"""
from .processor import (DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, IMAGE_PAD_ID, QWEN25VL_CHAT_TEMPLATE,
                        VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID, VISION_TOKEN_IDS, VOCAB_SIZE,
                        build_image_processor, build_qwen25vl_processor, build_qwen25vl_tokenizer,
                        qwen25vl_processor_class)
from .tiny import build_tiny_qwen25vl, tiny_qwen25vl_config

_MODEL = ("Qwen25VLPolicy", "load_vl_policy", "mrope_position_ids", "build_vision_tower",
          "vision_from_hf_model")

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MIN_PIXELS", "IMAGE_PAD_ID", "QWEN25VL_CHAT_TEMPLATE", "VIDEO_PAD_ID", "VISION_END_ID", "VISION_START_ID", "VISION_TOKEN_IDS",
           "VOCAB_SIZE", "build_image_processor", "build_qwen25vl_processor", "build_qwen25vl_tokenizer",
           "build_tiny_qwen25vl", "qwen25vl_processor_class", "tiny_qwen25vl_config", *_MODEL]


def __getattr__(name: str):
    if name in _MODEL:
        from . import model

        return getattr(model, name)
    raise AttributeError(name)

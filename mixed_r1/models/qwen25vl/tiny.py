"""A tiny random Qwen2.5-VL (HF ``Qwen2_5_VLForConditionalGeneration``) with the real token ids and
patch geometry: the CPU demo's and the tests' stand-in for a released checkpoint."""
from __future__ import annotations

from typing import Any

from .processor import IMAGE_PAD_ID, VIDEO_PAD_ID, VISION_END_ID, VISION_START_ID, VOCAB_SIZE


def tiny_qwen25vl_config(hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                         num_kv_heads: int = 2, intermediate_size: int = 128,
                         vision_hidden: int = 32, vision_depth: int = 2,
                         vocab_size: int = VOCAB_SIZE) -> Any:
    """A small random Qwen2.5-VL config that keeps the real token ids and patch geometry."""
    from transformers import Qwen2_5_VLConfig

    head_dim = hidden_size // num_heads
    text = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [head_dim // 8, head_dim // 8 * 3 // 2,
                                           head_dim // 2 - head_dim // 8 - head_dim // 8 * 3 // 2]},
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
    )
    vision = dict(
        depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
        num_heads=2, out_hidden_size=hidden_size, patch_size=14, spatial_merge_size=2,
        temporal_patch_size=2, window_size=112, fullatt_block_indexes=[vision_depth - 1],
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=IMAGE_PAD_ID, video_token_id=VIDEO_PAD_ID,
                            vision_start_token_id=VISION_START_ID, vision_end_token_id=VISION_END_ID,
                            bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)


def build_tiny_qwen25vl(seed: int = 0, **config_kwargs: Any):
    """A random tiny ``Qwen2_5_VLForConditionalGeneration`` (float32, eval mode), seeded."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    cfg = tiny_qwen25vl_config(**config_kwargs)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = [151645, 151643]
    model.generation_config.pad_token_id = 151643
    return model.eval()

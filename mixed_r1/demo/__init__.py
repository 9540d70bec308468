"""``mixed-r1 demo``: GRPO with Mixed-Reward end to end on a CPU.

- :func:`run_text_demo` (the default, :mod:`mixed_r1.demo.text`): a real model,
  SmolLM2-135M-Instruct, learns the text mixed set; held-out accuracy before and after.
- :func:`run_multimodal_demo` (``--multimodal``, :mod:`mixed_r1.demo.multimodal`): the
  multimodal pipeline (real images, a tiny Qwen2.5-VL-architecture policy with the real Qwen2.5
  tokenizer, warm start, GRPO over all six task types); it checks the pipeline, it does not learn
  the tasks.

Both modules import torch and transformers inside their functions, so importing this package
stays light.
"""
from mixed_r1.demo.multimodal import run_multimodal_demo
from mixed_r1.demo.text import paired_change, run_text_demo

__all__ = ["paired_change", "run_multimodal_demo", "run_text_demo"]

"""Rollout: the Generator protocol and its backends (HF generate here; vLLM in a later module).

``HFGenerator`` is imported lazily (it needs torch/transformers).
"""
from mixed_r1.rollout.base import Completion, Generator, Prompt, SamplingParams

__all__ = ["Completion", "Generator", "HFGenerator", "Prompt", "SamplingParams"]


def __getattr__(name: str):
    if name == "HFGenerator":
        from mixed_r1.rollout.hf import HFGenerator

        return HFGenerator
    raise AttributeError(name)

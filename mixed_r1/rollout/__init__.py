"""Rollout: the Generator protocol and its backends — ``HFGenerator`` (transformers generate,
multimodal) and ``VLLMGenerator`` (colocated vLLM). Both are imported lazily."""
from mixed_r1.rollout.base import Completion, Generator, Prompt, SamplingParams

__all__ = ["Completion", "Generator", "HFGenerator", "Prompt", "SamplingParams", "VLLMGenerator"]


def __getattr__(name: str):
    if name == "HFGenerator":
        from mixed_r1.rollout.hf import HFGenerator

        return HFGenerator
    if name == "VLLMGenerator":
        from mixed_r1.rollout.vllm_backend import VLLMGenerator

        return VLLMGenerator
    raise AttributeError(name)

"""mixed-r1: GRPO post-training for multimodal LLMs with the Mixed-R1 unified reward."""

__version__ = "0.1.0"

"""Fused log-prob / GRPO-loss kernels: Triton on CUDA tensors, chunked torch elsewhere, same numbers.

One public function per op (each an autograd.Function with its own backward):
token_logprobs, grpo_loss, vocab_parallel_token_logprobs, linear_token_logprobs.
"""
from ._backend import HAS_TRITON, force_backend
from .grpo_loss import grpo_loss
from .linear import linear_token_logprobs
from .token_logprobs import token_logprobs
from .vocab_parallel import vocab_parallel_token_logprobs

__all__ = ["token_logprobs", "grpo_loss", "vocab_parallel_token_logprobs", "linear_token_logprobs",
           "force_backend", "HAS_TRITON"]

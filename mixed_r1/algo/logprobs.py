"""Reference per-token log-probs and entropy (materializes the full log-softmax; for tests)."""
from __future__ import annotations

import torch


def token_logprobs_ref(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """logp[b,t] = log softmax(logits[b,t] / T)[targets[b,t]], computed in ``dtype``."""
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def entropy_ref(logits: torch.Tensor, temperature: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """H[b,t] = -sum_v p_v log p_v with p = softmax(logits[b,t] / T)."""
    logp = torch.log_softmax(logits.to(dtype) / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)

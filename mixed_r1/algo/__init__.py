"""GRPO math in plain torch (the reference the kernels are tested against)."""
from .advantages import ADVANTAGE_ESTIMATORS, compute_advantages, grpo_advantages
from .logprobs import entropy_ref, token_logprobs_ref
from .policy_loss import (
                          KL_ESTIMATORS,
                          KL_LOG_RATIO_BOUND,
                          LOSS_AGGREGATIONS,
                          LOSS_TYPES,
                          aggregate_loss,
                          aggregation_weights,
                          clipped_surrogate,
                          compute_policy_loss,
                          importance_ratio,
                          kl_k1,
                          kl_k2,
                          kl_k3,
                          kl_log_ratio,
                          kl_penalty,
                          masked_mean,
                          policy_metrics,
)
from .registry import Registry

__all__ = [
    "ADVANTAGE_ESTIMATORS", "compute_advantages", "grpo_advantages", "entropy_ref", "token_logprobs_ref",
    "KL_ESTIMATORS", "KL_LOG_RATIO_BOUND", "LOSS_AGGREGATIONS", "LOSS_TYPES", "Registry", "aggregate_loss", "aggregation_weights",
    "clipped_surrogate", "compute_policy_loss", "importance_ratio", "kl_k1", "kl_k2", "kl_k3",
    "kl_log_ratio", "kl_penalty", "masked_mean", "policy_metrics",
]

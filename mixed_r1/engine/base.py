"""The seam between the GRPO update and a policy backend (verl's ``workers/engine/base.py`` idea).

A backend (:class:`~mixed_r1.engine.hf.HFEngine`, :class:`~mixed_r1.engine.megatron.MegatronEngine`)
knows how to run its model — one process, or megatron-core shards over TP/PP/DP — and nothing about
GRPO. :func:`mixed_r1.engine.update.run_update` is the one place that knows the update: the learning
rate, the per-micro-batch loss scales, the token-weighted metric reduction, the non-finite skip,
global-norm clipping and the update-to-weight ratio. Between them sits :class:`TrainEngine`.

Mixed precision (both backends, as megatron-core and verl do it): with ``model.dtype: bfloat16`` the
model computes in bf16, while the optimizer updates fp32 *main* parameters with fp32 Adam moments;
gradients are accumulated over micro-batches (and reduced over data-parallel replicas) in fp32, and
the bf16 weights are refreshed from the fp32 masters after every step. Checkpoints hold the masters.
With ``float32`` the model parameters are their own masters.

A :class:`PolicyBatch` is one micro-batch: each row is a prompt (left-padded to ``P``) followed by its
sampled completion (right-padded to ``T``), so the logits at positions ``P-1 .. P+T-2`` score the
completion tokens ``targets[:, 0 .. T-1]``. Packed (``algo.pack_sequences``, HF backend): the rows
are one sequence ``[1, N]`` without padding, positions restarting per row, and ``logit_index``
[B, T] names the position that scores each target; ``targets``/``mask`` keep the [B, T] layout.
Shared prefix (``algo.shared_prefix``, HF backend): one row per distinct prompt, ``[prompt, c_1,
.., c_k]``, a [n, 1, W, W] boolean attention mask letting each completion see only the prompt and
itself; ``logit_index`` then indexes the flattened ``[n · W]`` positions
(:func:`mixed_r1.data.prompts.pack_shared_prefix_rows`).
Log-probs are ``log_softmax(logits / temperature)[targets]``, the quantity the sampler reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch


class ModelMismatchError(ValueError):
    """Weights on disk do not fit the configured model (missing/unexpected key, shape)."""


def check_param_groups_fit(saved: list[dict], groups: list[dict], source: str) -> None:
    """ModelMismatchError unless the optimizer param groups of a checkpoint (``saved``, a torch
    ``state_dict()``'s ``param_groups``) hold as many parameters, group by group, as ``groups``:
    torch would refuse another count with a bare ValueError, and the same counts split otherwise
    would load moments into the wrong parameters. Another split comes from changing which parts
    have their own learning rate (``optim.vision_lr`` / ``optim.merger_lr``) or freeze."""
    have = [len(g["params"]) for g in saved]
    want = [len(g["params"]) for g in groups]
    if have != want or [g.get("lr_mult", 1.0) != 1.0 for g in saved] != \
            [g.get("lr_mult", 1.0) != 1.0 for g in groups]:
        raise ModelMismatchError(
            f"{source}: the optimizer state's param groups (parameters per group {have}) do not "
            f"fit this run's ({want}): was the checkpoint written with other "
            "optim.vision_lr / optim.merger_lr (set vs unset) or model.freeze_* settings?")


def load_optimizer_state(optimizer: Any, state: dict) -> None:
    """``optimizer.load_state_dict(state)`` keeping each param group's ``lr_mult`` (the run's
    ``optim.vision_lr`` / ``merger_lr`` over ``optim.lr``), not the checkpoint's: torch restores
    the saved group settings, but the step's rate comes from this run's config."""
    mults = [g.get("lr_mult", 1.0) for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, mult in zip(optimizer.param_groups, mults):
        group["lr_mult"] = mult


@dataclass
class LossConfig:
    """Arguments of the GRPO loss shared by all micro-batches of an update
    (:func:`mixed_r1.kernels.grpo_loss` / :func:`mixed_r1.algo.compute_policy_loss`)."""

    beta: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    temperature: float = 1.0
    loss_type: str = "dapo"
    importance_level: str = "token"
    max_completion_length: int | None = None
    rollout_is_cap: float | None = None  # truncated importance sampling against the sampler


@dataclass
class PolicyBatch:
    """One micro-batch (see the module docstring). ``scale`` weights this micro-batch's loss in
    the accumulated update; ``num_items`` is the global masked-token count (``dapo``)."""

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor  # [B, T] completion token ids (pad where mask is 0)
    mask: torch.Tensor  # [B, T] float 1 on completion tokens
    advantages: torch.Tensor  # [B]
    rollout_logprobs: torch.Tensor | None = None  # [B, T] the sampler's log-probs
    old_logprobs: torch.Tensor | None = None  # [B, T]
    ref_logprobs: torch.Tensor | None = None  # [B, T]
    scale: float = 1.0
    num_items: float | None = None
    rows: list[int] = field(default_factory=list)  # row indices into the step's rollouts
    # packed rows (inputs of shape [1, N], no padding): the position whose logits score
    # targets[b, t]; None for the padded layout (see mixed_r1.data.prompts.encode_packed_rows)
    logit_index: torch.Tensor | None = None
    # real (non-padding) input positions where the attention mask does not say it (the
    # shared-prefix layout's mask is [n, 1, W, W]); None: from the 2-D mask or all positions
    input_tokens: int | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum().item())

    @property
    def real_input_tokens(self) -> int:
        """Input positions that hold a token (prompt or completion), not padding."""
        if self.input_tokens is not None:
            return int(self.input_tokens)
        am = self.inputs.get("attention_mask")
        if am is not None and am.dim() == 2:
            return int(am.sum())
        return int(self.inputs["input_ids"].numel())  # packed: all


@dataclass
class MicroBatchResult:
    """What a backend hands back for one micro-batch whose loss it computed (the last pipeline stage
    of the data-parallel replica that owns the micro-batch).

    ``loss``: the micro-batch's GRPO loss before its ``scale`` (0-d, detached); ``metrics``: 0-d
    detached token means over the micro-batch (clip fractions, ratio mean/min/max, KL, entropy);
    ``logprobs``: [B, T] float32 detached log-probs of the targets under the weights before this update.
    """

    index: int
    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    logprobs: torch.Tensor


class LossFn(Protocol):
    """The per-micro-batch loss a backend calls (:class:`mixed_r1.engine.update.PolicyLoss`,
    GRPO's; :class:`~mixed_r1.engine.update.SFTLoss`, supervised): ``from_logits`` where the
    backend holds full-vocab logits (the fused kernel), ``from_logprobs`` where it holds log-probs
    already reduced over vocab shards (tensor parallelism). A loss whose ``token_accuracy`` is
    true also gets ``hits=`` [B, T] float (1 where the target is the argmax of the logits) in
    ``from_logprobs``; it reads the temperature from ``cfg.temperature``."""

    def from_logits(self, logits: torch.Tensor, mb: PolicyBatch
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]: ...

    def from_logprobs(self, logp: torch.Tensor, mb: PolicyBatch, entropy: torch.Tensor | None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@runtime_checkable
class TrainEngine(Protocol):
    """What :func:`mixed_r1.engine.update.run_update` and the trainer need from a policy backend.

    Every method is collective over the backend's ranks (a single process for HF): all ranks call
    it in the same order. Tensors handed to collectives live on ``device``.
    """

    device: torch.device

    def forward_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] float32 log-probs of ``batch.targets`` under the current weights (no grad)."""

    def local_indices(self, n: int) -> list[int]:
        """Which of ``n`` micro-batches this rank computes (its data-parallel share); the others
        may be passed as None to :meth:`forward_backward`."""

    def forward_backward(self, micro_batches: Sequence[PolicyBatch | None], loss_fn: LossFn
                         ) -> list[MicroBatchResult]:
        """Forward + backward of this rank's share of ``micro_batches`` (:meth:`local_indices`;
        entries outside it may be None); the gradient of ``Σ_m scale_m · loss_m`` accumulates in
        fp32. Returns the results computed on this rank."""

    def reduce_metrics(self, sums: torch.Tensor, maxes: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum ``sums`` and take the max of ``maxes`` over the ranks that hold distinct micro-batches;
        every rank gets the result (device tensors)."""

    def zero_grad(self) -> None:
        """Drop all accumulated gradients (model and main)."""

    def grad_norm(self) -> float:
        """Finish the gradients (reduce over replicas, tied copies) into the fp32 main gradients and
        return their global L2 norm over the whole model (inf/nan when any gradient is)."""

    def main_params(self) -> list[torch.Tensor]:
        """This rank's fp32 main parameters, each element of the model counted once over all ranks
        (no tensor-parallel duplicates or shared copies) — for update statistics."""

    def reduce_param_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Sum per-rank statistics of :meth:`main_params` over every rank holding distinct masters."""

    def step(self, lr: float, grad_scale: float) -> None:
        """Scale the main gradients by ``grad_scale`` (clipping), take one optimizer step at ``lr``
        on the fp32 masters and refresh the compute weights from them."""

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """``{"model": {name: tensor}, "optimizer": state incl. fp32 masters}``."""

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
             source: str = "<memory>") -> None:
        """Restore weights (checked against the model; mismatches raise) and optimizer state."""

    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, tensor)`` pairs for the generator's ``update_weights``."""


__all__ = ["LossConfig", "LossFn", "MicroBatchResult", "ModelMismatchError", "PolicyBatch",
           "TrainEngine", "check_param_groups_fit", "load_optimizer_state"]

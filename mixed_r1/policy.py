"""The trainable policy: a backend protocol and the single-process Hugging Face implementation.

A :class:`PolicyBatch` is one micro-batch: each row is a prompt (left-padded to ``P``) followed
by its sampled completion (right-padded to ``T``), so the logits at positions ``P-1 .. P+T-2``
score the completion tokens ``targets[:, 0 .. T-1]``. Log-probs are
``log_softmax(logits / temperature)[targets]`` — the quantity the sampler reports — computed by
:mod:`mixed_r1.kernels` without building the ``[B, T, V]`` float32 log-softmax.

:class:`PolicyBackend` is what the trainer calls; a megatron-core TP/PP backend implements the
same five methods (its ``export_hf_weights`` streams HF-named tensors from the shards).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import torch

from mixed_r1.kernels import grpo_loss, token_logprobs


class ModelMismatchError(ValueError):
    """Weights on disk do not fit the configured model (missing/unexpected key, shape)."""


@dataclass
class LossConfig:
    """Arguments of :func:`mixed_r1.kernels.grpo_loss` shared by all micro-batches of an update."""

    beta: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    temperature: float = 1.0
    loss_type: str = "dapo"
    importance_level: str = "token"
    max_completion_length: int | None = None


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

    @property
    def num_tokens(self) -> int:
        return int(self.mask.sum().item())


@runtime_checkable
class PolicyBackend(Protocol):
    """What the trainer needs from a policy (single-process HF here; megatron-core TP/PP later)."""

    def forward_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] float32 log-probs of ``batch.targets`` under the current weights (no grad)."""

    def train_step(self, micro_batches: Sequence[PolicyBatch], loss: LossConfig,
                   lr: float) -> dict[str, Any]:
        """One optimizer update accumulated over ``micro_batches``; returns metrics
        (``skipped`` = 1.0 when the loss or the gradient was non-finite and nothing changed)."""

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """``{"model": {name: tensor}, "optimizer": optimizer state}``."""

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
             source: str = "<memory>") -> None:
        """Restore weights (checked against the model; mismatches raise) and optimizer state."""

    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, tensor)`` pairs for the generator's ``update_weights``."""


# ------------------------------------------------------------------------------- batching
def encode_rows(processor: Any, prompt_texts: Sequence[str], images: Sequence[Sequence[Any]],
                completions: Sequence[Sequence[int]], pad_id: int,
                device: str | torch.device = "cpu") -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Processor inputs for ``prompt + completion`` rows, plus ``targets`` and ``mask`` [B, T].

    Prompts are rendered texts (the chat template with the generation prompt) and are encoded
    exactly as the generator encodes them (left padding); completions are appended right-padded.
    """
    from mixed_r1.data.prompts import load_images

    kwargs: dict[str, Any] = {"text": list(prompt_texts), "return_tensors": "pt",
                              "padding": True, "padding_side": "left"}
    flat = [im for row in images for im in row]
    if flat and hasattr(processor, "image_processor"):
        kwargs["images"] = [load_images([str(im)])[0] if isinstance(im, (str, Path))
                            else im.convert("RGB") for im in flat]
    enc = dict(processor(**kwargs))
    B = len(completions)
    T = max(1, max(len(c) for c in completions))
    targets = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.float32)
    for i, ids in enumerate(completions):
        targets[i, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, :len(ids)] = 1.0
    enc["input_ids"] = torch.cat([enc["input_ids"], targets], dim=1)
    enc["attention_mask"] = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    if "mm_token_type_ids" in enc:  # text tokens are type 0 (needed for 3-D rope positions)
        enc["mm_token_type_ids"] = torch.cat(
            [enc["mm_token_type_ids"], torch.zeros(B, T, dtype=enc["mm_token_type_ids"].dtype)], 1)
    enc = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    return enc, targets.to(device), mask.to(device)


def rows_tensor(values: Sequence[Sequence[float]], T: int) -> torch.Tensor:
    """Ragged per-token floats → [B, T] float32 (zero-padded)."""
    out = torch.zeros(len(values), T, dtype=torch.float32)
    for i, v in enumerate(values):
        n = min(len(v), T)
        if n:
            out[i, :n] = torch.tensor(list(v)[:n], dtype=torch.float32)
    return out


# ------------------------------------------------------------------------------- HF policy
def build_optimizer(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float],
                    eps: float, weight_decay: float) -> torch.optim.Optimizer:
    """torch AdamW, fused where the device supports it, else foreach."""
    try:
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps,
                                 weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps,
                                 weight_decay=weight_decay, foreach=True)


def prepare_trainable(model: torch.nn.Module, trainable: bool, lr: float,
                      betas: tuple[float, float], eps: float, weight_decay: float
                      ) -> torch.optim.Optimizer | None:
    """Train mode and an AdamW over the trainable parameters, or eval mode with every
    parameter frozen (a reference policy) and no optimizer."""
    if not trainable:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return None
    model.train()
    return build_optimizer([p for p in model.parameters() if p.requires_grad], lr, betas, eps,
                           weight_decay)


class HFPolicy:
    """A single-process HF model as a :class:`PolicyBackend` (plus save/load helpers).

    ``trainable=False`` makes a frozen policy (the reference model): no optimizer, eval mode.
    """

    def __init__(self, model: torch.nn.Module, *, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, grad_clip: float = 1.0,
                 trainable: bool = True) -> None:
        self.model = model
        self.grad_clip = grad_clip
        self.device = next(model.parameters()).device
        self.optimizer = prepare_trainable(model, trainable, lr, betas, eps, weight_decay)

    # ---------------------------------------------------------------- forward
    def _logits(self, batch: PolicyBatch) -> torch.Tensor:
        """[B, T, V] logits scoring ``batch.targets`` (only the completion positions)."""
        T = batch.targets.shape[1]
        out = self.model(**batch.inputs, logits_to_keep=T + 1, use_cache=False)
        return out.logits[:, :-1]

    def forward_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()  # no dropout in scoring passes
        try:
            with torch.no_grad():
                logits = self._logits(batch)
                return token_logprobs(logits, batch.targets, temperature) * batch.mask
        finally:
            self.model.train(was_training)

    def loss(self, batch: PolicyBatch, cfg: LossConfig) -> tuple[torch.Tensor, dict]:
        """The GRPO loss of one micro-batch (differentiable when grads are enabled)."""
        logits = self._logits(batch)
        return grpo_loss(logits, batch.targets, batch.advantages, batch.mask,
                         batch.old_logprobs, batch.ref_logprobs, beta=cfg.beta,
                         eps_low=cfg.eps_low, eps_high=cfg.eps_high,
                         temperature=cfg.temperature, loss_type=cfg.loss_type,
                         importance_level=cfg.importance_level,
                         max_completion_length=cfg.max_completion_length,
                         num_items=batch.num_items)

    # ---------------------------------------------------------------- update
    def train_step(self, micro_batches: Sequence[PolicyBatch], loss: LossConfig,
                   lr: float) -> dict[str, Any]:
        """loss = Σ_m scale_m · grpo_loss(m); backward per micro-batch (gradient accumulation);
        clip to ``grad_clip``; AdamW step — unless the loss or the grad norm is non-finite, in
        which case gradients are dropped and ``skipped`` is 1."""
        if self.optimizer is None:
            raise RuntimeError("train_step on a frozen policy")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, ntok = 0.0, 0
        sums: dict[str, float] = {}
        logprobs: list[torch.Tensor] = []
        for mb in micro_batches:
            value, metrics = self.loss(mb, loss)
            (value * mb.scale).backward()
            total_loss += float(value.detach()) * mb.scale
            n = mb.num_tokens
            ntok += n
            for k, v in metrics.items():
                if k == "logprobs":
                    logprobs.append(v)
                elif v.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(v) * n
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.grad_clip if self.grad_clip > 0 else float("inf")
        gnorm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        skipped = not (math.isfinite(total_loss) and math.isfinite(gnorm))
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        out: dict[str, Any] = {k: v / max(ntok, 1) for k, v in sums.items()}
        out.update(loss=total_loss, grad_norm=gnorm, skipped=float(skipped), tokens=float(ntok),
                   logprobs=logprobs)
        return out

    # ---------------------------------------------------------------- weights
    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters by their HF names (tied weights once), detached, no copy."""
        for name, p in self.model.named_parameters():
            yield name, p.detach()

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        return {"model": {k: v.detach() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
             source: str = "<memory>") -> None:
        check_state_fits(self.model, model_state, source)
        self.model.load_state_dict(model_state, strict=False)
        if optimizer_state is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer_state)

    def frozen_copy(self) -> "HFPolicy":
        """A frozen deep copy (the KL reference)."""
        return HFPolicy(copy.deepcopy(self.model), trainable=False)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """``config.json`` + safetensors weights (loadable by :func:`load_pretrained_model`)."""
        self.model.save_pretrained(str(out_dir), safe_serialization=True)


def _tied_keys(model: torch.nn.Module) -> set[str]:
    """State-dict keys whose tensor shares storage with an earlier key (tied weights)."""
    seen: dict[int, str] = {}
    tied = set()
    for k, v in model.state_dict().items():
        ptr = v.data_ptr()
        if ptr in seen and v.numel():
            tied.add(k)
        else:
            seen[ptr] = k
    return tied


def check_state_fits(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`ModelMismatchError` naming the first missing/unexpected key or bad shape."""
    own = model.state_dict()
    tied = _tied_keys(model)
    persistent = set(own)
    for k, v in state.items():
        if k not in persistent:
            raise ModelMismatchError(f"{source}: tensor '{k}' is not a parameter of the configured "
                                     f"model ({type(model).__name__}); is model.* in the config "
                                     "the model these weights came from?")
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelMismatchError(f"{source}: tensor '{k}' has shape {tuple(v.shape)} but the "
                                     f"configured model expects {tuple(own[k].shape)}")
    missing = [k for k in own if k not in state and k not in tied]
    if missing:
        raise ModelMismatchError(f"{source}: no tensor for '{missing[0]}' ({len(missing)} missing); "
                                 "the weights do not belong to the configured model")


def load_pretrained_model(path: str | Path, dtype: torch.dtype = torch.float32):
    """A local HF model directory → model (Qwen2.5-VL or any causal LM); no hub access."""
    from transformers import AutoConfig

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{p}: not a model directory (no config.json)")
    cfg = AutoConfig.from_pretrained(str(p), local_files_only=True)
    if cfg.model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    else:
        from transformers import AutoModelForCausalLM as cls
    model = cls.from_pretrained(str(p), dtype=dtype, local_files_only=True)
    return model


__all__ = ["HFPolicy", "LossConfig", "ModelMismatchError", "PolicyBackend", "PolicyBatch",
           "build_optimizer", "check_state_fits", "encode_rows", "load_pretrained_model",
           "rows_tensor"]

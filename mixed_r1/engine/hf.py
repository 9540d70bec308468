"""The single-process Hugging Face policy backend (:class:`HFEngine`).

Mixed precision as megatron-core's ``Float16OptimizerWithFloat16Params`` does it, on a plain HF
model: with bf16 parameters, each trainable parameter gets an fp32 *main* copy that the optimizer
(torch AdamW, fused where the device supports it, else foreach) updates with fp32 moments. A
post-accumulate-grad hook adds each micro-batch's bf16 gradient into the fp32 main gradient and
frees the bf16 one, so gradients accumulate over micro-batches in fp32. After every step the bf16
weights are refreshed from the masters (round to nearest). A float32 model is its own master.

Frozen parameters (``requires_grad`` False before the engine is built, e.g. by
:func:`mixed_r1.models.freeze.apply_freeze`) are left out: no fp32 master, no AdamW state.

Weight decay follows the usual convention (megatron-core's default param groups, HF Trainer): none on
biases and norm weights (1-D parameters).

The input embedding's ``padding_idx`` is cleared for training. HF builds ``nn.Embedding`` with
``padding_idx = config.pad_token_id``, which zeroes that row's gradient; but pad positions are
masked out of attention and the loss anyway, and many chat models set the pad id to a real token
(SmolLM2: ``<|im_end|>``, the end of every turn and completion), whose embedding then could not
learn. megatron-core's embedding has no padding row, so both backends now train the same thing.

Only the real completion tokens go through the LM head: with a plain ``hidden · Wᵀ`` head
(:func:`check_chunkable_head`) the decoder's hidden states at those ``n`` positions are gathered
and give ``[n, V]`` logits (:meth:`HFEngine.completion_logprobs`), not ``[B, T, V]`` with every
row padded to the longest completion; other heads (soft-capped or scaled logits) get the positions
``L-T-1 .. L-2`` through the model's own head (``logits_to_keep``). With ``chunked_lm_head``
(config ``model.chunked_lm_head``) even those logits are never materialized: the hidden states
go through :func:`mixed_r1.kernels.linear_token_logprobs` with the head's weight, chunk by chunk
(log-probs and entropy; the backward recomputes each chunk), so the head's extra memory is about
0.07× the float32 ``[B, T, V]`` logits instead of several times them — for a 151k vocabulary the
difference between a micro-batch that fits and one that does not. It costs time where the logits
would fit (docs/benchmarks.md: 1.1–1.4× naive at 2,048 tokens of a 151k vocabulary on CPU; 1.37×
the completion-only HF update of a SmolLM2-shaped policy).

Shared prefixes (``shared_prefix``, config ``algo.shared_prefix``): a micro-batch laid out by
:func:`mixed_r1.data.prompts.pack_shared_prefix_rows` — one batch row per prompt and a 4-D
boolean mask, passed to the model as the additive mask of its dtype
(:func:`check_shared_prefix_model`).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from mixed_r1.engine.base import (LossFn, MicroBatchResult, ModelMismatchError, PolicyBatch,
                                  check_param_groups_fit, load_optimizer_state)


def build_adamw(groups: list[dict], lr: float, betas: tuple[float, float], eps: float
                ) -> torch.optim.Optimizer:
    """torch AdamW, fused where the device supports it, else foreach."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


def decay_groups(named: list[tuple[str, torch.Tensor]], weight_decay: float,
                 lr_mults: list[float] | None = None) -> list[dict]:
    """AdamW param groups: weight decay on matrices, none on biases and norm weights (1-D); with
    ``lr_mults`` (one per entry of ``named``) each distinct multiplier gets its own pair of groups,
    whose ``lr_mult`` :meth:`HFEngine.step` applies to the step's rate."""
    mults = lr_mults if lr_mults is not None else [1.0] * len(named)
    groups = []
    for mult in sorted(set(mults)):
        part = [(n, p) for (n, p), m in zip(named, mults) if m == mult]
        decay = [p for n, p in part if p.dim() > 1 and not n.endswith(".bias")]
        no_decay = [p for n, p in part if not (p.dim() > 1 and not n.endswith(".bias"))]
        groups += [g for g in ({"params": decay, "weight_decay": weight_decay, "lr_mult": mult},
                               {"params": no_decay, "weight_decay": 0.0, "lr_mult": mult})
                   if g["params"]]
    return groups


def check_chunkable_head(model: torch.nn.Module, key: str = "model.chunked_lm_head") -> None:
    """Raise ValueError (naming config ``key``) unless ``model``'s logits are exactly
    ``model.model(...)``'s last hidden state times the output embedding's weight (no bias, no logit
    scaling or soft-capping), the form :func:`mixed_r1.kernels.linear_token_logprobs` computes."""
    cfg = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    name = type(model).__name__
    if head is None or not hasattr(model, "model") or getattr(head, "weight", None) is None:
        raise ValueError(f"{key}: {name} has no decoder (.model) and LM head")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{key}: {name}'s LM head has a bias")
    text = getattr(cfg, "get_text_config", lambda: cfg)()
    for k in ("final_logit_softcapping", "logit_scale", "logits_scaling"):
        if getattr(text, k, None) not in (None, 1, 1.0):
            raise ValueError(f"{key}: {name} sets {k}; its logits are not hidden · Wᵀ")


def check_shared_prefix_model(model: torch.nn.Module) -> None:
    """Raise ValueError unless ``model`` can run the shared-prefix layout
    (:func:`mixed_r1.data.prompts.pack_shared_prefix_rows`): a custom 4-D attention mask, which
    transformers' eager and SDPA attention take (flash-attention's varlen kernels do not), and an
    LM head that is a plain ``hidden · Wᵀ`` (the logits are taken from gathered hidden states)."""
    key = "algo.shared_prefix"
    impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise ValueError(f"{key}: the model's attention implementation is {impl!r}; the "
                         "shared-prefix mask needs 'sdpa' or 'eager'")
    check_chunkable_head(model, key)


def _unflatten(sel: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """[B, T] zeros with ``values`` ([n], n = sel.sum()) at the True positions of ``sel``
    (differentiable in ``values``)."""
    return values.new_zeros(sel.shape).masked_scatter(sel, values)


class HFEngine:
    """A single-process HF model as a :class:`~mixed_r1.engine.base.TrainEngine`.

    ``trainable=False`` makes a frozen policy (the KL reference): eval mode, no grads, no optimizer.
    """

    def __init__(self, model: torch.nn.Module, *, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, trainable: bool = True,
                 chunked_lm_head: bool = False, shared_prefix: bool = False,
                 lr_mults: dict[int, float] | None = None) -> None:
        self.model = model
        self.chunked_lm_head = bool(chunked_lm_head)
        self.shared_prefix = bool(shared_prefix)
        if self.chunked_lm_head:
            check_chunkable_head(model)
        if self.shared_prefix:
            check_shared_prefix_model(model)
        try:
            check_chunkable_head(model)
            self._plain_head = True  # completion tokens only through the head
        except ValueError:
            self._plain_head = False
        self.device = next(model.parameters()).device
        self.optimizer: torch.optim.Optimizer | None = None
        self._named: list[tuple[str, torch.nn.Parameter]] = []
        self._main: list[torch.Tensor] = []
        self._hooks: list[Any] = []
        if not trainable:
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
            return
        model.train()
        embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if embed is not None and getattr(embed, "padding_idx", None) is not None:
            embed.padding_idx = None  # see the module docstring
        self._named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.mixed = any(p.dtype != torch.float32 for _, p in self._named)
        if self.mixed:
            self._main = [p.detach().float().clone() for _, p in self._named]
            for (_, p), main in zip(self._named, self._main):
                self._hooks.append(p.register_post_accumulate_grad_hook(_accumulate_into(main)))
        else:
            self._main = [p for _, p in self._named]
        named_main = [(n, m) for (n, _), m in zip(self._named, self._main)]
        mults = [float((lr_mults or {}).get(id(p), 1.0)) for _, p in self._named]
        self.optimizer = build_adamw(decay_groups(named_main, weight_decay, mults), lr, betas, eps)

    # ---------------------------------------------------------------- forward
    def _inputs(self, batch: PolicyBatch) -> dict[str, Any]:
        """The model's keyword inputs: a 4-D boolean attention mask (the shared-prefix layout)
        becomes the additive mask of the model's dtype that eager and SDPA attention take."""
        inputs = batch.inputs
        am = inputs.get("attention_mask")
        if am is not None and am.dim() == 4 and am.dtype == torch.bool:
            dtype = next(self.model.parameters()).dtype
            add = torch.zeros(am.shape, dtype=dtype, device=am.device)
            inputs = {**inputs, "attention_mask": add.masked_fill_(~am, torch.finfo(dtype).min)}
        return inputs

    def logits(self, batch: PolicyBatch) -> torch.Tensor:
        """[B, T, V] logits scoring ``batch.targets``: only the T positions ``L-T-1 .. L-2`` go
        through the LM head (``logits_to_keep`` as indices), and the result is contiguous, so the
        kernels read it without a copy. Packed rows (``batch.logit_index`` [B, T] into the
        flattened inputs, no padding or one row per shared prompt): the positions
        ``logit_index`` names, viewed as [B, T, V]."""
        if batch.logit_index is not None:
            B, T = batch.logit_index.shape
            if batch.inputs["input_ids"].shape[0] > 1:  # shared prefixes: one row per prompt
                head = self.model.get_output_embeddings()
                return head(self.head_hidden(batch))
            out = self.model(**self._inputs(batch), logits_to_keep=batch.logit_index.reshape(-1),
                             use_cache=False).logits
            return out.view(B, T, -1)
        T = batch.targets.shape[1]
        L = batch.inputs["input_ids"].shape[1]
        keep = torch.arange(L - T - 1, L - 1, device=batch.targets.device)
        return self.model(**batch.inputs, logits_to_keep=keep, use_cache=False).logits

    def head_hidden(self, batch: PolicyBatch) -> torch.Tensor:
        """[B, T, H] decoder hidden states at the positions :meth:`logits` would send through the
        LM head (the final norm applied), for :func:`mixed_r1.kernels.linear_token_logprobs`."""
        hidden = self.model.model(**self._inputs(batch), use_cache=False).last_hidden_state
        if batch.logit_index is not None:
            B, T = batch.logit_index.shape
            flat = hidden.reshape(-1, hidden.shape[-1])
            return flat[batch.logit_index.reshape(-1)].view(B, T, -1)
        T = batch.targets.shape[1]
        L = hidden.shape[1]
        return hidden[:, L - T - 1:L - 1]

    def chunked_logprobs(self, batch: PolicyBatch, temperature: float, *, hits: bool = False
                         ) -> tuple[torch.Tensor, ...]:
        """log-probs [B, T] of ``batch.targets`` and entropy [B, T] (float32) through
        :func:`~mixed_r1.kernels.linear_token_logprobs`, never materializing the logits. Only the
        ``n = mask.sum()`` real completion tokens' hidden states go through the head (as ``[1, n, H]``);
        both outputs are 0 where ``batch.mask`` is 0. A batch without a completion token goes through
        whole (its log-probs then masked), so the loss keeps its graph. With ``hits``, a third
        output: [B, T] float32, 1 where the target is the argmax of the logits
        (:func:`_argmax_hits`, chunk by chunk without a graph)."""
        from mixed_r1.kernels import linear_token_logprobs

        weight = self.model.get_output_embeddings().weight
        hidden = self.head_hidden(batch)
        sel = batch.mask.bool()
        if not bool(sel.any()):
            logp, ent = linear_token_logprobs(hidden, weight, batch.targets, temperature, return_entropy=True)
            out: tuple[torch.Tensor, ...] = (logp * batch.mask, ent * batch.mask)
            return out + (batch.mask.new_zeros(batch.mask.shape),) if hits else out
        lp, en = linear_token_logprobs(hidden[sel][None], weight, batch.targets[sel][None], temperature,
                                       return_entropy=True)
        out = (_unflatten(sel, lp[0]), _unflatten(sel, en[0]))
        if hits:
            out += (_unflatten(sel, _argmax_hits(hidden[sel], weight, batch.targets[sel])),)
        return out

    def completion_logprobs(self, batch: PolicyBatch, temperature: float, *,
                            entropy: bool = True, hits: bool = False
                            ) -> tuple[torch.Tensor, ...]:
        """log-probs [B, T] (float32, differentiable, 0 where ``batch.mask`` is 0) and, with
        ``entropy``, the entropy of softmax(logits / temperature) [B, T] (float32, detached; else
        None), with only the real completion tokens' positions through the LM head: the
        ``n = mask.sum()`` hidden states are gathered and give ``[n, V]`` logits, where
        :meth:`logits` gives ``[B, T, V]`` with every row padded to the longest completion. Needs a
        plain ``hidden · Wᵀ`` head (:func:`check_chunkable_head`); the log-probs are
        :func:`mixed_r1.kernels.token_logprobs` (its gradient written into the logits buffer).
        With ``hits``, a third output: [B, T] float32, 1 where the target is the argmax of the
        logits (token accuracy), 0 elsewhere and off the mask."""
        from mixed_r1.kernels import token_logprobs

        sel = batch.mask.bool()
        logits = self.model.get_output_embeddings()(self.head_hidden(batch)[sel])  # [n, V]
        ent = None
        if entropy:
            ent = batch.mask.new_zeros(batch.mask.shape, dtype=torch.float32)
            ent[sel] = _entropy(logits, temperature)
        hit = None
        if hits:  # before the loss: the backward writes its gradient into the logits buffer
            hit = _unflatten(sel, (logits.detach().argmax(-1) == batch.targets[sel]).float())
        lp = token_logprobs(logits[None], batch.targets[sel][None], temperature,
                            inplace_backward=torch.is_grad_enabled())[0]
        return (_unflatten(sel, lp), ent) + ((hit,) if hits else ())

    def _compact_head(self, batch: PolicyBatch) -> bool:
        """Whether :meth:`completion_logprobs` applies: a plain head and a completion token."""
        return self._plain_head and bool(batch.mask.any())

    def forward_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
        from mixed_r1.kernels import token_logprobs

        was_training = self.model.training
        self.model.eval()  # no dropout in scoring passes
        try:
            with torch.no_grad():
                if self.chunked_lm_head:
                    return self.chunked_logprobs(batch, temperature)[0]
                if self._compact_head(batch):
                    return self.completion_logprobs(batch, temperature, entropy=False)[0]
                logits = self.logits(batch)
                return token_logprobs(logits, batch.targets, temperature) * batch.mask
        finally:
            self.model.train(was_training)

    def forward_backward(self, micro_batches: Sequence[PolicyBatch], loss_fn: LossFn
                         ) -> list[MicroBatchResult]:
        if self.optimizer is None:
            raise RuntimeError("forward_backward on a frozen policy")
        self.model.train()
        # a loss that reports token accuracy gets hits [B, T] (1 where the target is the argmax)
        hits = bool(getattr(loss_fn, "token_accuracy", False))
        results = []
        for i, mb in enumerate(micro_batches):
            if mb is None:
                continue
            if self.chunked_lm_head or self._compact_head(mb):
                head = self.chunked_logprobs if self.chunked_lm_head else self.completion_logprobs
                logp, ent, *hit = head(mb, loss_fn.cfg.temperature, hits=hits)
                loss, metrics = loss_fn.from_logprobs(logp, mb, ent,
                                                      **({"hits": hit[0]} if hits else {}))
            else:
                loss, metrics, logp = loss_fn.from_logits(self.logits(mb), mb)
            if loss.requires_grad:  # else it reaches no trainable parameter (frozen parts:
                (loss * mb.scale).backward()  # a text-only row under a frozen LM): adds nothing
            results.append(MicroBatchResult(index=i, loss=loss.detach(), metrics=metrics,
                                            logprobs=logp.detach().float()))
        return results

    def reduce_metrics(self, sums: torch.Tensor, maxes: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        return sums, maxes  # one process holds every micro-batch

    # ---------------------------------------------------------------- gradients and step
    def zero_grad(self) -> None:
        for _, p in self._named:
            p.grad = None
        for m in self._main:
            m.grad = None

    def _main_grads(self) -> list[torch.Tensor]:
        if not self.mixed:
            return [p.grad for p in self._main if p.grad is not None]
        return [m.grad for m in self._main if m.grad is not None]

    def grad_norm(self) -> float:
        grads = self._main_grads()
        if not grads:
            return 0.0
        return float(torch.nn.utils.get_total_norm(grads, 2.0))

    def main_params(self) -> list[torch.Tensor]:
        return list(self._main)

    def reduce_param_stats(self, stats: torch.Tensor) -> torch.Tensor:
        return stats

    def step(self, lr: float, grad_scale: float) -> None:
        if self.optimizer is None:
            raise RuntimeError("step on a frozen policy")
        grads = self._main_grads()
        if grad_scale != 1.0 and grads:
            torch._foreach_mul_(grads, grad_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        self.optimizer.step()
        if self.mixed:
            with torch.no_grad():
                for (_, p), m in zip(self._named, self._main):
                    p.copy_(m)

    # ---------------------------------------------------------------- weights
    def export_hf_weights(self, trainable_only: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Parameters by their HF names (tied weights once), detached, no copy. ``trainable_only``:
        only those that train (frozen ones, :mod:`mixed_r1.models.freeze`, never change: a
        generator that takes partial updates keeps its copy)."""
        for name, p in self.model.named_parameters():
            if p.requires_grad or not trainable_only:
                yield name, p.detach()

    def embedding_table(self) -> torch.Tensor:
        return self.model.get_input_embeddings().weight

    def local_indices(self, n: int) -> list[int]:
        """Every micro-batch: one process computes them all."""
        return list(range(n))

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """``model``: the compute weights; ``optimizer``: AdamW state and, in mixed precision, the
        fp32 masters by parameter name (``main_params``) — resume is exact."""
        opt = None
        if self.optimizer is not None:
            opt = {"adamw": self.optimizer.state_dict()}
            if self.mixed:
                opt["main_params"] = {n: m.detach() for (n, _), m in zip(self._named, self._main)}
        return {"model": {k: v.detach() for k, v in self.model.state_dict().items()},
                "optimizer": opt}

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
             source: str = "<memory>") -> None:
        """Restore the weights and (with ``optimizer_state``) AdamW's state and fp32 masters.
        Each param group keeps this engine's ``lr_mult`` (the run's ``optim.vision_lr`` /
        ``merger_lr`` over ``optim.lr``), not the checkpoint's, as the step's rate comes from this
        run's ``optim.lr``; a checkpoint whose param groups do not fit this engine's (another
        split of the parts' learning rates) raises ModelMismatchError before anything loads."""
        check_state_fits(self.model, model_state, source)
        if self.optimizer is not None and optimizer_state is not None:
            check_param_groups_fit(optimizer_state["adamw"]["param_groups"],
                                   self.optimizer.param_groups, source)
        self.model.load_state_dict(model_state, strict=False)
        if self.optimizer is None:
            return
        masters = (optimizer_state or {}).get("main_params")
        with torch.no_grad():
            for (name, p), m in zip(self._named, self._main):
                if not self.mixed:
                    continue
                if masters is not None:
                    if name not in masters or masters[name].shape != m.shape:
                        raise ModelMismatchError(f"{source}: the optimizer state has no fp32 master "
                                                 f"of shape {tuple(m.shape)} for '{name}'")
                    m.copy_(masters[name])
                else:
                    m.copy_(p)  # fresh masters from the loaded compute weights
        if optimizer_state is not None:
            load_optimizer_state(self.optimizer, optimizer_state["adamw"])

    def frozen_copy(self) -> "HFEngine":
        """A frozen deep copy (the KL reference)."""
        return HFEngine(copy.deepcopy(self.model), trainable=False,
                        chunked_lm_head=self.chunked_lm_head, shared_prefix=self.shared_prefix)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """``config.json`` + safetensors weights (loadable by :func:`load_pretrained_model`)."""
        self.model.save_pretrained(str(out_dir), safe_serialization=True)


def _entropy(logits: torch.Tensor, temperature: float, budget: int = 1 << 22) -> torch.Tensor:
    """Entropy [n] (float32, no grad) of softmax(logits / temperature) for logits [n, V], computed
    a few rows at a time: each chunk holds at most ``budget`` logits (16 MiB of float32
    temporaries, two of them), so the head's memory stays that of the [n, V] logits."""
    n, V = logits.shape
    chunk = max(1, budget // max(V, 1))
    out = torch.empty(n, dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for s in range(0, n, chunk):
            logp = torch.log_softmax(logits[s:s + chunk].float() / temperature, -1)
            out[s:s + chunk] = -(logp.exp() * logp).sum(-1)
    return out


def _argmax_hits(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                 budget: int = 1 << 22) -> torch.Tensor:
    """[n] float32, 1 where ``targets[i]`` is the argmax of ``hidden[i] · weightᵀ``
    (hidden [n, H], weight [V, H]), computed a few rows at a time without a graph (at most ``budget`` logits per
    chunk), for the chunked head that never holds the [n, V] logits."""
    n, V = hidden.shape[0], weight.shape[0]
    chunk = max(1, budget // max(V, 1))
    out = torch.empty(n, dtype=torch.float32, device=hidden.device)
    with torch.no_grad():
        for s in range(0, n, chunk):
            pick = (hidden[s:s + chunk].detach() @ weight.detach().t()).argmax(-1)
            out[s:s + chunk] = (pick == targets[s:s + chunk]).float()
    return out


def _accumulate_into(main: torch.Tensor):
    """A post-accumulate-grad hook: ``main.grad += p.grad`` in fp32, then free ``p.grad``."""

    def hook(p: torch.Tensor) -> None:
        g = p.grad
        if g is None:
            return
        if main.grad is None:
            main.grad = g.detach().to(torch.float32)
        else:
            main.grad.add_(g.detach())
        p.grad = None

    return hook


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
    for k, v in state.items():
        if k not in own:
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
    from mixed_r1.models.safetensors_io import read_json_file

    read_json_file(p / "config.json")  # a broken one: CheckpointError naming it, not transformers'
    cfg = AutoConfig.from_pretrained(str(p), local_files_only=True)
    if cfg.model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLForConditionalGeneration as cls
    else:
        from transformers import AutoModelForCausalLM as cls
    return cls.from_pretrained(str(p), dtype=dtype, local_files_only=True)


__all__ = ["HFEngine", "build_adamw", "check_chunkable_head", "check_shared_prefix_model",
           "check_state_fits", "decay_groups", "load_pretrained_model"]

"""Pipeline-parallel scoring with megatron-core's 1F1B schedule (``get_forward_backward_func``).

Each microbatch is a dict ``{"input_ids": [b, s], "targets": [b, s], "mask": [b, s] (optional),
"position_ids": [b, s] or [3, b, s] (mrope, optional), "packed_seq_params" (megatron-core THD packed
rows, b = 1, optional), "head_index" + "head_targets" (optional: only the ``n`` positions
``(head_index[0][i], head_index[1][i])`` — sequence position, row — go through the LM head, and the
log-probs come back as [1, n] of ``head_targets`` [1, n])}``; a multimodal microbatch adds ``pixel_values``,
``image_grid_thw`` and ``mm_token_type_ids`` (handed to the model on the first stage only), and a model with a
``prepare_microbatch(mb)`` method (the Qwen2.5-VL policy: it adds the mrope ``position_ids`` every stage
needs) gets to prepare each microbatch on every stage before the schedule runs. The last stage turns its
logits shard into per-token log-probs with the vocab-parallel op; ``loss_fn(logp, mb)`` (default: masked mean NLL)
gives the loss the schedule back-propagates. Log-probs of every microbatch come back on the last stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable

import torch

from . import state
from .vocab import shard_argmax, shard_token_logprobs

LossFn = Callable[..., torch.Tensor]  # (logp [b, s], microbatch[, entropy=, hits=[b, s]]) -> loss
MM_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")


def _model_attr(model: torch.nn.Module, name: str):
    """``model.<name>`` looked up through wrappers (``.module``, as megatron's DDP/Float16Module), else None."""
    m = model
    while m is not None:
        if hasattr(m, name):
            return getattr(m, name)
        m = getattr(m, "module", None)
    return None


def masked_nll(logp: torch.Tensor, mb: dict[str, torch.Tensor]) -> torch.Tensor:
    """-sum(mask * logp) / sum(mask)  (mask defaults to all ones)."""
    mask = mb.get("mask")
    if mask is None:
        return -logp.mean()
    mask = mask.to(logp.dtype)
    return -(logp * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class PipelineResult:
    """Per-microbatch log-probs [b, s] and losses (last stage only; empty lists elsewhere)."""

    logprobs: list[torch.Tensor] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)


def find_output_layer(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head (megatron ``output_layer``) of this stage's model, through wrappers (DDP,
    ``Float16Module``) and a multimodal policy's ``language_model``; None off the last stage or
    when its input is sequence-parallel (then the head gathers the hidden states itself)."""
    lm = _model_attr(model, "language_model") or model
    head = _model_attr(lm, "output_layer")
    if head is None or getattr(head, "sequence_parallel", False):
        return None
    return head


class _HeadSelect:
    """Forward pre-hook on the output layer: hidden ``[s, b, h]`` → only the positions the loss
    reads, ``[n, 1, h]`` (megatron itself slices the hidden states before its head for inference,
    ``materialize_only_last_token_logits``). ``index`` = (sequence positions [n], rows [n]) while a
    selected micro-batch runs, else None (the hook passes the input through)."""

    def __init__(self) -> None:
        self.index: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(self, module, args, kwargs):
        if self.index is None:
            return None
        pos, row = self.index
        return (args[0][pos, row].unsqueeze(1),) + tuple(args[1:]), kwargs


def _head_select(head: torch.nn.Module) -> _HeadSelect:
    hook = getattr(head, "_mixed_r1_head_select", None)
    if hook is None:
        hook = _HeadSelect()
        head.register_forward_pre_hook(hook, with_kwargs=True)
        head._mixed_r1_head_select = hook
    return hook


def _forward_step(arch: Any, loss_fn: LossFn, temperature: float, with_entropy: bool,
                  per_token_loss: bool, with_hits: bool, data_iterator, model):
    mb = next(data_iterator)
    first = state.is_first_stage()
    ids = mb["input_ids"] if first else None
    extra = {k: mb[k] for k in MM_KEYS if first and mb.get(k) is not None}
    if mb.get("packed_seq_params") is not None:  # THD rows: every stage's attention needs them
        extra["packed_seq_params"] = mb["packed_seq_params"]
    targets = mb["targets"]
    select = None
    if mb.get("head_index") is not None and state.is_last_stage():
        head = find_output_layer(model)
        if head is None:
            raise ValueError("a microbatch with 'head_index' needs this stage's output layer "
                             "(last stage, no sequence parallelism)")
        select = _head_select(head)
        targets = mb["head_targets"]
        select.index = mb["head_index"]
    try:
        out = model(ids, mb.get("position_ids"), None, **extra)
    finally:
        if select is not None:
            select.index = None

    def loss_func(logits_shard: torch.Tensor):
        kw = {}
        if with_entropy:
            logp, kw["entropy"] = shard_token_logprobs(logits_shard, targets, arch, temperature,
                                                       return_entropy=True)
        else:
            logp = shard_token_logprobs(logits_shard, targets, arch, temperature)
        if with_hits:  # the global argmax over the vocab shards is the target (token accuracy)
            kw["hits"] = (shard_argmax(logits_shard.detach(), arch) == targets).float()
        loss = loss_fn(logp, mb, **kw)
        stats = {"logprobs": logp.detach(), "loss": loss.detach()}
        if per_token_loss:  # the loss is already normalized: megatron must not divide it again
            return loss, torch.ones((), dtype=torch.int, device=loss.device), stats
        return loss, stats

    return out, loss_func


def pipeline_logprobs(model: torch.nn.Module, arch: Any, microbatches: Iterable[dict[str, torch.Tensor]], *,
                      forward_only: bool = True, loss_fn: LossFn = masked_nll,
                      temperature: float = 1.0, with_entropy: bool = False,
                      with_hits: bool = False) -> PipelineResult:
    """Run the 1F1B schedule over ``microbatches`` (all the same shape) and collect log-probs.

    With ``forward_only=False`` gradients accumulate into the model's ``.grad`` (``main_grad`` when wrapped
    in megatron DDP). Megatron divides each microbatch loss by the number of microbatches unless the
    model's config sets ``calculate_per_token_loss`` (the trainer's policy does: its losses carry their
    own global normalization), in which case the loss is back-propagated as ``loss_fn`` returns it.
    ``with_entropy``: ``loss_fn(logp, mb, entropy=[b, s])`` also gets the per-token entropy;
    ``with_hits``: ``loss_fn(..., hits=[b, s])``, float 1 where the target is the argmax over the
    whole vocab (:func:`~mixed_r1.parallel.vocab.shard_argmax`: token accuracy).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    mbs = list(microbatches)
    prepare = _model_attr(model, "prepare_microbatch")
    if prepare is not None:
        mbs = [prepare(mb) for mb in mbs]
    b, s = mbs[0]["input_ids"].shape
    fb = get_forward_backward_func()
    config = _model_attr(model, "config")
    per_token = bool(getattr(config, "calculate_per_token_loss", False))
    step = partial(_forward_step, arch, loss_fn, temperature, with_entropy, per_token, with_hits)
    out = fb(forward_step_func=step, data_iterator=iter(mbs),
             model=[model], num_microbatches=len(mbs), seq_length=s, micro_batch_size=b, forward_only=forward_only)
    res = PipelineResult()
    for d in out or []:
        res.logprobs.append(d["logprobs"])
        res.losses.append(d["loss"])
    return res


def greedy_generate(model: torch.nn.Module, arch: Any, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding through the pipeline (no KV cache: each step re-runs the prefix).

    Every step runs the forward-only schedule on [b, s]; the last stage takes the vocab-parallel argmax of
    the last position and broadcasts it over the pipeline group. Returns [b, s + max_new_tokens] on all ranks.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from .vocab import shard_argmax

    ids = input_ids
    fb = get_forward_backward_func()
    prepare = _model_attr(model, "prepare_microbatch")  # text-only mrope positions for a VL policy
    for _ in range(max_new_tokens):
        picked: list[torch.Tensor] = []
        pos = prepare({"input_ids": ids})["position_ids"] if prepare is not None else None

        def fwd(it, m, ids=ids, picked=picked, pos=pos):
            next(it)
            out = m(ids if state.is_first_stage() else None, pos, None)

            def loss_func(lg):
                picked.append(shard_argmax(lg[:, -1], arch))
                return lg.sum() * 0, {}
            return out, loss_func

        with torch.no_grad():
            fb(forward_step_func=fwd, data_iterator=iter([None]), model=[model], num_microbatches=1,
               seq_length=ids.shape[1], micro_batch_size=ids.shape[0], forward_only=True)
        nxt = picked[0] if state.is_last_stage() else torch.empty(ids.shape[0], dtype=torch.long, device=ids.device)
        if state.pp_size() > 1:
            dist.broadcast(nxt, src=ps.get_pipeline_model_parallel_last_rank(), group=state.pp_group())
        ids = torch.cat([ids, nxt[:, None].to(ids.dtype)], dim=1)
    return ids

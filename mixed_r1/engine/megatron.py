"""The megatron-core policy backend (:class:`MegatronEngine`), built on megatron-core's own machinery.

Every rank of a ``torchrun`` job builds one engine over its (TP rank, PP stage) shard of the language
model — a megatron ``GPTModel`` (:func:`mixed_r1.parallel.load_policy`) or, for Qwen2.5-VL, the GPTModel
plus the replicated HF vision tower (:func:`mixed_r1.parallel.load_vl_policy`). The shards come from an
mcore checkpoint that global rank 0 converts once from the HF directory
(:func:`mixed_r1.models.cache.prepare_mcore_checkpoint`).

Rules:

- **Training machinery is megatron-core's.** The trainable model is wrapped in megatron-core's
  ``DistributedDataParallel`` (contiguous bucketed gradient buffers, gradients accumulated and reduced
  over DP in fp32 — ``grad_reduce_in_fp32`` — optionally overlapped with the backward), and stepped by
  ``get_megatron_optimizer``: ``Float16OptimizerWithFloat16Params`` for bf16 weights (fp32 main params
  and Adam moments), ``FP32Optimizer`` for fp32, or the ``DistributedOptimizer``
  (``use_distributed_optimizer``: fp32 masters and moments sharded over DP, gradients reduce-scattered,
  parameters all-gathered after the step). Tied-embedding gradients over PP and DP reduction are
  megatron's ``finalize_model_grads``; the global gradient norm is the optimizer's ``get_grad_norm``.
- **Frozen parts** (``freeze``: ``model.freeze_vision_tower`` / ``freeze_merger`` /
  ``freeze_language_model``, :func:`mixed_r1.models.freeze.apply_freeze`) get ``requires_grad =
  False`` before DDP and the optimizer are built, so megatron-core gives them no gradient buffer,
  fp32 master or Adam moments; ``export_hf_weights(trainable_only=True)`` leaves them out of the
  stream (a frozen language model is not gathered at all).
- **Inputs.** A :class:`~mixed_r1.engine.base.PolicyBatch` row is a left-padded prompt followed by its
  right-padded completion. megatron's attention here is causal without a padding mask, so every row
  is re-packed *left-aligned* (prompt + completion tokens first, pad after): causal attention then
  never sees a pad before a real token, positions start at 0 (mrope positions come from HF's own
  ``get_rope_index`` with the right-padded attention mask), and completion token ``k`` of a row
  whose prompt holds ``p`` real tokens is scored by the logits at position ``p - 1 + k``.
- **Packed rows** (``algo.pack_sequences``, text LMs): a packed batch (``[1, N]`` without
  padding, :func:`mixed_r1.data.prompts.pack_rows`) goes to megatron-core in its THD layout with
  ``PackedSeqParams`` (:func:`pack_thd_microbatch`): attention confined to each row, RoPE restarting
  per row; TE's attention on GPUs, ``PackedDotProductAttention`` on the local spec.
- **Only completion positions reach the LM head**: the last stage's hidden states are sliced to
  the positions that score completion tokens before the output layer
  (:func:`select_completion_positions`), so the logits are ``[n, V/TP]`` for ``n`` completion
  tokens, not ``[rows · s, V/TP]``.
- **Log-probs and entropy** come from the vocab-parallel op on the last stage
  (:func:`mixed_r1.parallel.pipeline_logprobs`); forward-only log-probs are broadcast over the pipeline
  group, so every rank returns the same ``[B, T]`` tensor.
- **Loss.** The last stage's loss of micro-batch ``m`` is ``scale_m · compute_policy_loss(logp_m, …)``,
  already normalized over the whole update, so the model config sets ``calculate_per_token_loss``:
  megatron neither divides it by the number of micro-batches nor averages gradients over DP (DDP then
  *sums* them), and the accumulated gradient is the one-big-batch gradient. Data-parallel replicas take
  the micro-batches round-robin.
- **Weights out.** :meth:`MegatronEngine.export_hf_weights` streams HF-named tensors from the shards
  (every rank must iterate it). Checkpoints hold each (TP, PP) shard's compute weights (written by DP
  rank 0) and each rank's optimizer state with its fp32 masters (DP rank 0 only unless the optimizer
  is distributed, when every DP rank writes its own shard).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from mixed_r1.engine.base import (LossFn, MicroBatchResult, ModelMismatchError, PolicyBatch,
                                  check_param_groups_fit, load_optimizer_state)
from mixed_r1.models.config import LMArch
from mixed_r1.models.cache import prepare_mcore_checkpoint
from mixed_r1.parallel import state
from mixed_r1.parallel.dist import is_main_rank
from mixed_r1.parallel.platform import current_platform


def current_device() -> torch.device:
    """The device this rank computes on (and hands to collectives): the platform's
    (:meth:`mixed_r1.parallel.platform.Platform.device`)."""
    return current_platform().device()


def _pp_broadcast(t: torch.Tensor | None, shape: Sequence[int], dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """``t`` from the last pipeline stage on every stage of this pipeline group."""
    from megatron.core import parallel_state as ps

    if state.pp_size() == 1:
        assert t is not None
        return t
    buf = t.contiguous() if t is not None else torch.empty(*shape, dtype=dtype, device=device)
    dist.broadcast(buf, src=ps.get_pipeline_model_parallel_last_rank(), group=state.pp_group())
    return buf


# ------------------------------------------------------------------------------- batches
def pack_microbatch(batch: Any, pad_id: int, rows: int | None = None,
                    seq_len: int | None = None) -> dict[str, Any]:
    """A :class:`~mixed_r1.engine.base.PolicyBatch` → the schedule's microbatch dict, rows left-aligned.

    Keys: ``input_ids``/``targets``/``attention_mask`` [rows, seq_len] (``targets[:, j]`` is the token
    at ``j + 1``), the multimodal inputs unchanged, ``gather_index`` [B, T] (the position whose logits
    score completion token ``k``: ``p - 1 + k``) and ``n_rows`` = B. Extra rows (to ``rows``) are pad
    tokens with a full attention mask; they never enter the loss.
    """
    ids, am = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    B, L = ids.shape
    T = batch.targets.shape[1]
    P = L - T
    lengths = am.sum(1)
    prompt_lens = am[:, :P].sum(1)
    S = max(int(lengths.max()) + 1, seq_len or 0)
    R = max(B, rows or 0)
    new_ids = torch.full((R, S), pad_id, dtype=ids.dtype, device=ids.device)
    new_am = torch.zeros((R, S), dtype=am.dtype, device=am.device)
    new_am[B:] = 1
    mm = batch.inputs.get("mm_token_type_ids")
    new_mm = torch.zeros((R, S), dtype=mm.dtype, device=mm.device) if mm is not None else None
    for i in range(B):
        keep = am[i].bool()
        n = int(lengths[i])
        new_ids[i, :n] = ids[i][keep]
        new_am[i, :n] = 1
        if new_mm is not None:
            new_mm[i, :n] = mm[i][keep]
    targets = torch.full_like(new_ids, pad_id)
    targets[:, :-1] = new_ids[:, 1:]
    k = torch.arange(T, device=ids.device)
    gather = (prompt_lens[:, None] - 1 + k[None, :]).clamp(0, S - 1).long()
    mb: dict[str, Any] = {"input_ids": new_ids, "targets": targets, "attention_mask": new_am,
                          "gather_index": gather, "n_rows": B}
    if new_mm is not None:
        mb["mm_token_type_ids"] = new_mm
    for key in ("pixel_values", "image_grid_thw"):
        if batch.inputs.get(key) is not None:
            mb[key] = batch.inputs[key]
    return mb


def pack_thd_microbatch(batch: Any, pad_id: int, seq_len: int | None = None) -> dict[str, Any]:
    """A packed :class:`~mixed_r1.engine.base.PolicyBatch` (``inputs`` = ``input_ids`` and
    ``position_ids`` [1, N], positions restarting at 0 on every row; ``logit_index`` [B, T]) → the
    schedule's microbatch dict in megatron-core's THD layout.

    Keys: ``input_ids``/``position_ids``/``targets`` [1, S] (``targets[0, j]`` is the token at
    ``j + 1``), ``packed_seq_params`` (``PackedSeqParams(qkv_format="thd")`` with int32
    ``cu_seqlens`` [rows + 1] on the tokens' device, ``max_seqlen`` the longest row), ``gather_index``
    = ``logit_index``, ``n_rows`` = B and ``packed`` = True. ``seq_len`` (≥ N) pads the pack to
    ``S`` tokens — the pipeline schedule sends one activation shape for all its micro-batches — with
    pad tokens forming one more row of their own, which no target reads. Raises ValueError when the
    positions do not start a row at token 0 or ``seq_len`` < N.
    """
    from megatron.core.packed_seq_params import PackedSeqParams

    ids, pos = batch.inputs["input_ids"], batch.inputs["position_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1 or pos.shape != ids.shape:
        raise ValueError(f"a packed batch holds input_ids/position_ids [1, N], got "
                         f"{tuple(ids.shape)} / {tuple(pos.shape)}")
    N = ids.shape[1]
    S = N if seq_len is None else int(seq_len)
    if S < N:
        raise ValueError(f"seq_len {S} is below the pack's {N} tokens")
    starts = (pos[0] == 0).nonzero().flatten().tolist()
    if not starts or starts[0] != 0:
        raise ValueError("a packed batch's position_ids must start a row (0) at token 0")
    bounds = starts + [N] + ([S] if S > N else [])
    new_ids, new_pos = ids, pos
    if S > N:
        new_ids = torch.cat([ids, torch.full((1, S - N), pad_id, dtype=ids.dtype, device=ids.device)], 1)
        new_pos = torch.cat([pos, torch.arange(S - N, dtype=pos.dtype, device=pos.device)[None]], 1)
    targets = torch.full_like(new_ids, pad_id)
    targets[:, :-1] = new_ids[:, 1:]
    cu = torch.tensor(bounds, dtype=torch.int32, device=ids.device)
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:]))
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                          max_seqlen_q=longest, max_seqlen_kv=longest)
    return {"input_ids": new_ids, "position_ids": new_pos, "targets": targets,
            "packed_seq_params": psp, "gather_index": batch.logit_index,
            "n_rows": batch.targets.shape[0], "packed": True}


def select_completion_positions(mb: dict[str, Any], mask: torch.Tensor) -> dict[str, Any]:
    """Add the keys that send only the completion positions through the LM head
    (:mod:`mixed_r1.parallel.schedule`): ``head_index`` = (sequence positions, rows) [n] int64 of
    the ``n`` tokens where ``mask`` [B, T] is 1 (row-major), ``head_targets`` [1, n] the tokens they
    score, ``head_mask`` the bool mask. The logits are then [1, n, V/TP] instead of
    [rows, s, V/TP]. A mask without tokens leaves ``mb`` unchanged (the whole head runs)."""
    keep = mask.to(mb["targets"].device).bool()
    if not keep.any():
        return mb
    pos = mb["gather_index"][keep]
    if mb.get("packed"):
        row = torch.zeros_like(pos)
    else:
        row = torch.arange(keep.shape[0], device=pos.device)[:, None].expand_as(keep)[keep]
    mb["head_index"] = (pos, row)
    mb["head_targets"] = mb["targets"][row, pos][None]
    mb["head_mask"] = keep
    return mb


def to_microbatch(batch: Any, pad_id: int, rows: int | None = None,
                  seq_len: int | None = None, completion_head: bool = True) -> dict[str, Any]:
    """:func:`pack_thd_microbatch` for a packed batch (``logit_index`` set), else
    :func:`pack_microbatch` (left-aligned rows); ``seq_len`` is the length to pad to (packed: the
    token count; padded: the row width) and ``rows`` the row count (padded layout only).
    ``completion_head``: only the completion positions go through the LM head
    (:func:`select_completion_positions`)."""
    if batch.logit_index is not None:
        mb = pack_thd_microbatch(batch, pad_id, seq_len)
    else:
        mb = pack_microbatch(batch, pad_id, rows, seq_len)
    return select_completion_positions(mb, batch.mask) if completion_head else mb


def completion_logprobs(logp: torch.Tensor, mb: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
    """Per-position values of the microbatch (``[rows, s]``, ``[1, S]`` packed, or ``[1, n]`` when
    only the completion positions went through the head) → [B, T] completion values (0 where
    ``mask`` is 0)."""
    if mb.get("head_index") is not None:
        return logp.new_zeros(mb["head_mask"].shape).masked_scatter(mb["head_mask"], logp[0])
    if mb.get("packed"):
        return logp[0][mb["gather_index"]] * mask.to(logp.dtype)
    n = mb["n_rows"]
    return logp[:n].gather(1, mb["gather_index"]) * mask.to(logp.dtype)


def recompute_config(mode: str) -> dict[str, Any]:
    """megatron-core ``TransformerConfig`` fields for activation recompute: ``selective`` recomputes
    the core attention (megatron's default ``recompute_modules``), ``full`` every transformer layer
    from its input (``uniform`` method, one layer per checkpoint), ``none`` nothing."""
    if mode == "none":
        return {}
    if mode == "selective":
        return {"recompute_granularity": "selective"}
    if mode == "full":
        return {"recompute_granularity": "full", "recompute_method": "uniform",
                "recompute_num_layers": 1}
    raise ValueError(f"recompute must be none, selective or full, got {mode!r}")


# ------------------------------------------------------------------------------- engine
def part_lr_overrides(module: torch.nn.Module, optim_cfg: Any, config: Any = None) -> dict | None:
    """megatron-core ``config_overrides`` giving the vision tower and the merger their own
    ``lr_mult`` (``optim.vision_lr`` / ``optim.merger_lr`` over ``optim.lr``,
    :func:`mixed_r1.models.freeze.part_lr_mults`): each multiplier becomes its own param group,
    whose rate :meth:`MegatronEngine.step` sets to ``lr_mult x`` the step's rate. None when
    every part trains at ``optim.lr`` (megatron-core's standard overrides then apply).

    megatron-core applies its standard overrides (``wd_mult`` 0 for biases and 1-D parameters)
    only when ``config_overrides`` is None, so with ``config`` (the ``OptimizerConfig``) they
    are merged in here: the parts' groups then split the standard ones, as the HF engine's
    :func:`~mixed_r1.engine.hf.decay_groups` do."""
    if optim_cfg is None:
        return None
    from megatron.core.optimizer import get_standard_config_overrides
    from megatron.core.optimizer.optimizer_config import ParamKey, ParamPredicate

    from mixed_r1.models.freeze import part_lr_mults

    mults = part_lr_mults(module, optim_cfg)
    out = {}
    for mult in sorted(set(mults.values())):
        ids = frozenset(k for k, v in mults.items() if v == mult)
        key = ParamKey(predicate=ParamPredicate(name=f"lr_mult_{mult!r}",
                                                fn=lambda p, ids=ids: id(p) in ids))
        out[key] = {"lr_mult": mult}
    if out and config is not None:
        out = {**get_standard_config_overrides(config), **out}
    return out or None


class MegatronEngine:
    """This rank's megatron-core policy shard as a :class:`~mixed_r1.engine.base.TrainEngine` (see the
    module docstring). Build it with :meth:`from_hf`; ``trainable=False`` makes a frozen policy (the
    KL reference): no DDP wrapper, no optimizer, no grads."""

    def __init__(self, module: torch.nn.Module, arch: LMArch, *, mcore_dir: str | Path,
                 hf_dir: str | Path | None = None, pad_id: int = 0, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, trainable: bool = True,
                 params_dtype: torch.dtype = torch.float32, use_distributed_optimizer: bool = False,
                 overlap_grad_reduce: bool = False, freeze: Any = None,
                 part_lrs: Any = None) -> None:
        self.module, self.arch = module, arch
        self.mcore_dir = Path(mcore_dir)
        self.hf_dir = Path(hf_dir) if hf_dir is not None else None
        self.pad_id = int(pad_id)
        self.params_dtype = params_dtype
        self.device = current_device()
        self.is_vl = arch.is_vl
        self.distributed_optimizer = bool(use_distributed_optimizer)
        self.weight_decay = float(weight_decay)
        self._embed_table: torch.Tensor | None = None
        # only completion positions through the LM head (megatron slices before the head itself
        # for inference); a sequence-parallel head gathers its input, so it takes every position
        self.completion_head = not getattr(module.config, "sequence_parallel", False)
        self.optimizer = None
        # frozen parts (model.freeze_*): requires_grad off before DDP and the optimizer are
        # built, so megatron-core gives them no gradient buffer, fp32 master or Adam moments
        from mixed_r1.models.freeze import PARTS, apply_freeze

        self.freeze = {k: bool(getattr(freeze, f"freeze_{k}", False)) for k in PARTS}
        self.frozen_counts: dict[str, int] = {}
        if not trainable:
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            self.model = module
            return
        from megatron.core.distributed import (DistributedDataParallel,
                                               DistributedDataParallelConfig)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        if any(self.freeze.values()):
            self.frozen_counts = apply_freeze(module, freeze)
        config = module.config
        config.calculate_per_token_loss = True  # our losses are globally normalized (docstring)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=overlap_grad_reduce,
            use_distributed_optimizer=self.distributed_optimizer)
        module.train()
        self.model = DistributedDataParallel(config, ddp_config, module)
        if overlap_grad_reduce:  # the schedule starts bucket reductions during the last backward
            config.no_sync_func = self.model.no_sync
            config.grad_sync_func = self.model.start_grad_sync
        bf16 = params_dtype == torch.bfloat16
        # megatron-core's optimizers use its gloo copies of the DP groups unless told otherwise;
        # they exist only where the platform made them (state.init_parallel), not on GPUs
        opt_config = OptimizerConfig(
            optimizer="adam", lr=lr, weight_decay=weight_decay, adam_beta1=betas[0],
            adam_beta2=betas[1], adam_eps=eps, clip_grad=0.0, bf16=bf16, params_dtype=params_dtype,
            use_distributed_optimizer=self.distributed_optimizer)
        self.optimizer = get_megatron_optimizer(
            opt_config, [self.model],
            config_overrides=part_lr_overrides(module, part_lrs, opt_config),
            use_gloo_process_groups=current_platform().gloo_side_groups)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_hf(cls, hf_dir: str | Path, cache_dir: str | Path, *, pad_id: int = 0,
                params_dtype: torch.dtype = torch.float32, recompute: str = "none",
                pipeline_layers: Any = None, **kw: Any) -> "MegatronEngine":
        """Convert ``hf_dir`` once (rank 0, cached in ``cache_dir``, with ``pipeline_layers`` per
        stage; None: even) and load this rank's shard. ``recompute``: megatron activation
        recompute, ``none`` | ``selective`` (core attention) | ``full`` (every transformer layer,
        and the HF vision tower's blocks)."""
        mcore_dir = prepare_mcore_checkpoint(hf_dir, cache_dir, state.tp_size(), state.pp_size(),
                                             pipeline_layers=pipeline_layers)
        module, arch = cls._load(mcore_dir, params_dtype, recompute)
        return cls(module, arch, mcore_dir=mcore_dir, hf_dir=hf_dir, pad_id=pad_id,
                   params_dtype=params_dtype, **kw)

    @staticmethod
    def _load(mcore_dir: Path, params_dtype: torch.dtype, recompute: str = "none"
              ) -> tuple[torch.nn.Module, LMArch]:
        from mixed_r1.models.config import arch_from_hf_config
        from mixed_r1.models.convert import read_manifest
        from mixed_r1.models.qwen2.model import load_policy
        from mixed_r1.models.qwen25vl.model import load_vl_policy

        arch = arch_from_hf_config(read_manifest(mcore_dir)["hf_config"])
        kw = recompute_config(recompute)
        if arch.is_vl:
            module, arch = load_vl_policy(mcore_dir, params_dtype=params_dtype, **kw)
            if recompute == "full" and module.visual is not None:
                module.visual.gradient_checkpointing_enable()
            return module, arch
        return load_policy(mcore_dir, params_dtype=params_dtype, **kw)

    def frozen_copy(self) -> "MegatronEngine":
        """A frozen copy of the current weights (the KL reference), built from the same shards."""
        module, arch = self._load(self.mcore_dir, self.params_dtype)
        with torch.no_grad():
            own = self.module.state_dict()
            for k, v in module.state_dict().items():
                if not k.endswith("_extra_state"):
                    v.copy_(own[k])
        return MegatronEngine(module, arch, mcore_dir=self.mcore_dir, hf_dir=self.hf_dir,
                              pad_id=self.pad_id, trainable=False, params_dtype=self.params_dtype)

    # ---------------------------------------------------------------- forward
    def _run(self, mbs: list[dict[str, Any]], *, forward_only: bool, loss_fn, temperature: float,
             with_entropy: bool = False, with_hits: bool = False):
        from mixed_r1.parallel.schedule import pipeline_logprobs

        return pipeline_logprobs(self.model, self.arch, mbs, forward_only=forward_only,
                                 loss_fn=loss_fn, temperature=temperature,
                                 with_entropy=with_entropy, with_hits=with_hits)

    def forward_logprobs(self, batch: PolicyBatch, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] float32 log-probs of ``batch.targets`` (no grad), identical on every rank."""
        mb = to_microbatch(batch, self.pad_id, completion_head=self.completion_head)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                res = self._run([mb], forward_only=True, temperature=temperature,
                                loss_fn=lambda logp, m: logp.sum() * 0)
        finally:
            self.model.train(was_training)
        mask = batch.mask.to(self.device)
        out = completion_logprobs(res.logprobs[0], mb, mask).float() if res.logprobs else None
        return _pp_broadcast(out, tuple(batch.targets.shape), torch.float32, self.device)

    # ---------------------------------------------------------------- update
    def forward_backward(self, micro_batches: Sequence[PolicyBatch], loss_fn: LossFn
                         ) -> list[MicroBatchResult]:
        """This DP replica's micro-batches (round-robin) through megatron's schedule; gradients of
        ``Σ_m scale_m · loss_m`` accumulate in DDP's fp32 buffers and are finalized (DP sum, tied
        embeddings over PP) by megatron's ``finalize_model_grads``.

        A replica that gets no micro-batch (fewer micro-batches than DP replicas) runs a one-row
        ghost micro-batch (:meth:`ghost_batch`) with its loss multiplied by 0: a zero gradient,
        but a real backward, so every parameter's gradient hook fires in the order it does on
        the other replicas. With ``overlap_grad_reduce`` megatron-core launches each bucket's
        reduction from those hooks and asserts in ``finish_grad_sync`` on a bucket that was
        never launched."""
        from megatron.core.distributed import finalize_model_grads

        if self.optimizer is None:
            raise RuntimeError("forward_backward on a frozen policy")
        self.model.train()
        order = self.local_indices(len(micro_batches))
        ghost = not order and len(micro_batches) > 0
        results: list[MicroBatchResult] = []
        if order or ghost:  # ghost: see the docstring (a zero-weighted backward)
            local = [micro_batches[i] for i in order] if order else [self.ghost_batch()]
            order = order or [-1]
            if any((mb.logit_index is None) != (local[0].logit_index is None) for mb in local):
                raise ValueError("micro-batches of one update are all packed or all padded")
            rows = seq = None  # one pipeline stage: each micro-batch keeps its own shape
            if state.pp_size() > 1:  # the pipeline sends one activation shape for all of them
                rows = max(mb.targets.shape[0] for mb in local)
                seq = (max(mb.inputs["input_ids"].shape[1] for mb in local)
                       if local[0].logit_index is not None
                       else max(int(mb.inputs["attention_mask"].sum(1).max()) + 1 for mb in local))
            packed = []
            for i, mb in zip(order, local):
                pk = to_microbatch(mb, self.pad_id, rows, seq, self.completion_head)
                pk["_batch"], pk["_index"] = mb, i
                packed.append(pk)

            def mb_loss(logp: torch.Tensor, pk: dict[str, Any], entropy: torch.Tensor,
                        hits: torch.Tensor | None = None) -> torch.Tensor:
                b = pk["_batch"]
                mask = b.mask.to(logp.device)
                lp = completion_logprobs(logp, pk, mask)
                extra = {} if hits is None else {"hits": completion_logprobs(hits, pk, mask)}
                ent = completion_logprobs(entropy, pk, mask)
                value, metrics = loss_fn.from_logprobs(lp, b, ent, **extra)
                if ghost:
                    return value * 0.0
                results.append(MicroBatchResult(index=pk["_index"], loss=value.detach(),
                                                metrics=metrics, logprobs=lp.detach().float()))
                return value * b.scale

            self._run(packed, forward_only=False, loss_fn=mb_loss, temperature=loss_fn.cfg.temperature,
                      with_entropy=True, with_hits=bool(getattr(loss_fn, "token_accuracy", False)))
        finalize_model_grads([self.model])
        return results

    def ghost_batch(self) -> PolicyBatch:
        """A one-row text micro-batch (two pad tokens, one scored) whose loss the engine
        multiplies by 0: what an idle data-parallel replica runs so that its backward fires the
        same gradient hooks as the others' (see :meth:`forward_backward`). Every log-prob
        field is filled (zeros), so any loss configuration accepts it."""
        ids = torch.full((1, 2), self.pad_id, dtype=torch.long)
        zeros = torch.zeros(1, 1)
        return PolicyBatch(inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                           targets=ids[:, 1:].clone(), mask=torch.ones(1, 1),
                           advantages=torch.zeros(1), rollout_logprobs=zeros,
                           old_logprobs=zeros, ref_logprobs=zeros, num_items=1.0)

    def reduce_metrics(self, sums: torch.Tensor, maxes: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum / max over the DP group (distinct micro-batches), then from the last stage to all."""
        from megatron.core import parallel_state as ps

        if ps.get_data_parallel_world_size() > 1:
            group = ps.get_data_parallel_group(with_context_parallel=False)
            dist.all_reduce(sums, group=group)
            dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=group)
        return (_pp_broadcast(sums, sums.shape, sums.dtype, self.device),
                _pp_broadcast(maxes, maxes.shape, maxes.dtype, self.device))

    def zero_grad(self) -> None:
        if self.optimizer is None:
            return
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()

    def grad_norm(self) -> float:
        """Main gradients prepared by the optimizer (fp32), global L2 norm by megatron-core (each
        element counted once over TP/PP/DP)."""
        self.optimizer.prepare_grads()
        return float(self.optimizer.get_grad_norm())

    def _optimizer_params(self) -> list[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def main_params(self) -> list[torch.Tensor]:
        from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate
        from megatron.core.transformer.module import param_is_not_shared

        return [p for p in self._optimizer_params()
                if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)]

    def reduce_param_stats(self, stats: torch.Tensor) -> torch.Tensor:
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats, group=self.optimizer.get_grad_stats_parallel_group())
        return stats

    def step(self, lr: float, grad_scale: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
            # megatron-core's groups say which weights decay (wd_mult 0: biases, norm weights)
            # but only its OptimizerParamScheduler, which this engine does not use, applies it
            group["weight_decay"] = self.weight_decay * group.get("wd_mult", 1.0)
        if grad_scale != 1.0:
            grads = [p.grad for p in self._optimizer_params() if p.grad is not None]
            if grads:
                torch._foreach_mul_(grads, grad_scale)
        self.optimizer.step_with_ready_grads()  # fp32 masters step; compute weights refreshed

    # ---------------------------------------------------------------- weights
    def _vision_tensors(self, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """The vision tower's tensors under HF names (first stage; {} elsewhere); with
        ``trainable_only``, without the frozen parts (the tower's blocks, the merger)."""
        visual = getattr(self.module, "visual", None)
        if visual is None:
            return {}
        prefix = self.arch.names.vision_prefix or "model.visual."
        out = {}
        for k, v in visual.state_dict().items():
            part = "merger" if k.startswith("merger.") else "vision_tower"
            if trainable_only and self.freeze[part]:
                continue
            out[prefix + k] = v.detach()
        return out

    def weight_stream(self, trainable_only: bool = False, **kw: Any):
        """A :class:`~mixed_r1.rollout.weight_sync.MegatronWeightStream` over this rank's shards;
        ``trainable_only``: without the frozen parts (a frozen language model is not gathered at
        all). Every rank must ask for the same (it is collective)."""
        from mixed_r1.rollout.weight_sync import MegatronWeightStream

        lm = getattr(self.module, "language_model", self.module)
        # the vision tower lives on the first pipeline stage, which streams it to the others
        return MegatronWeightStream(lm, self.arch, extra=self._vision_tensors(trainable_only),
                                    extra_stage=0,
                                    lm=not (trainable_only and self.freeze["language_model"]), **kw)

    def export_hf_weights(self, keep_embedding: bool = False, trainable_only: bool = False) -> Any:
        """HF-named full tensors streamed from the shards, bucket by bucket (collective: every rank
        iterates it). The stream keeps its ``specs()`` (so a generator validates and loads it
        lazily, never holding the whole model) and ``retarget``. ``keep_embedding``: global rank 0
        also keeps a CPU float32 copy of the input-embedding table passing by
        (:meth:`embedding_table`; the trainer asks once, for the BMAS snapshot).
        ``trainable_only``: the parts that train only (for a generator that takes partial
        updates; the frozen ones never change)."""
        stream = self.weight_stream(trainable_only)
        return _EmbedKeepingStream(stream, self) if keep_embedding else stream

    def embedding_table(self) -> torch.Tensor | None:
        """The input-embedding table as of the last ``export_hf_weights(keep_embedding=True)``
        pass (rank 0), else None."""
        return self._embed_table

    def local_indices(self, n: int) -> list[int]:
        """The micro-batches (of ``n``) this data-parallel replica computes: round-robin."""
        from megatron.core import parallel_state as ps

        return list(range(n))[ps.get_data_parallel_rank()::ps.get_data_parallel_world_size()]

    # ---------------------------------------------------------------- checkpoints
    @property
    def checkpoint_shard(self) -> str:
        """This rank's model shard name in checkpoints; DP replicas hold the same shard."""
        return f"tp{state.tp_rank():02d}_pp{state.pp_rank():03d}"

    @property
    def writes_checkpoint_shard(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank() == 0

    @property
    def optimizer_shard(self) -> str:
        """This rank's optimizer-state name: per DP rank with the distributed optimizer (its masters
        and moments are a DP shard), else the model shard's name (DP replicas hold equal state)."""
        from megatron.core import parallel_state as ps

        if self.distributed_optimizer:
            return f"{self.checkpoint_shard}_dp{ps.get_data_parallel_rank():03d}"
        return self.checkpoint_shard

    @property
    def writes_optimizer_shard(self) -> bool:
        return self.distributed_optimizer or self.writes_checkpoint_shard

    def _inner_optimizers(self) -> list[torch.optim.Optimizer]:
        chained = getattr(self.optimizer, "chained_optimizers", None) or [self.optimizer]
        return [o.optimizer for o in chained if o.optimizer is not None]

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """``model``: this (TP, PP) shard's compute weights (incl. the vision tower); ``optimizer``:
        this rank's torch-optimizer states and their fp32 main parameters (``main_params``), in the
        optimizer's own order — resume is exact for the same TP/PP/DP layout."""
        sd = {k: v.detach() for k, v in self.module.state_dict().items()
              if not k.endswith("_extra_state")}
        opt = None
        if self.optimizer is not None:
            inner = self._inner_optimizers()
            opt = {"inner": [o.state_dict() for o in inner],
                   "main_params": [[p.detach() for g in o.param_groups for p in g["params"]]
                                   for o in inner]}
        return {"model": sd, "optimizer": opt}

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
             source: str = "<memory>") -> None:
        """Restore this rank's shard (every tensor checked by name and shape), then the optimizer
        state with its fp32 masters (or, without one, masters taken from the loaded weights)."""
        own = {k: v for k, v in self.module.state_dict().items() if not k.endswith("_extra_state")}
        for k, v in model_state.items():
            if k not in own:
                raise ModelMismatchError(f"{source}: tensor '{k}' is not a parameter of this rank's "
                                         f"shard (tp={state.tp_size()}, pp={state.pp_size()})")
            if tuple(v.shape) != tuple(own[k].shape):
                raise ModelMismatchError(f"{source}: tensor '{k}' has shape {tuple(v.shape)}, the "
                                         f"shard expects {tuple(own[k].shape)}")
        missing = [k for k in own if k not in model_state]
        if missing:
            raise ModelMismatchError(f"{source}: no tensor for '{missing[0]}' ({len(missing)} missing)")
        with torch.no_grad():
            for k, v in model_state.items():
                own[k].copy_(v)
        if self.optimizer is None:
            return
        if optimizer_state is None:
            self.optimizer.reload_model_params()
            return
        inner = self._inner_optimizers()
        saved = optimizer_state.get("main_params")
        if saved is None or len(saved) != len(inner) or any(
                len(s) != sum(len(g["params"]) for g in o.param_groups) for s, o in zip(saved, inner)):
            raise ModelMismatchError(f"{source}: the optimizer state does not fit this rank's "
                                     "optimizer (another parallel layout or model?)")
        for o, sd in zip(inner, optimizer_state["inner"]):  # before the masters are copied
            check_param_groups_fit(sd["param_groups"], o.param_groups, source)
        with torch.no_grad():
            for o, masters in zip(inner, saved):
                params = [p for g in o.param_groups for p in g["params"]]
                for p, m in zip(params, masters):
                    if p.shape != m.shape:
                        raise ModelMismatchError(f"{source}: an fp32 master has shape "
                                                 f"{tuple(m.shape)}, the optimizer expects "
                                                 f"{tuple(p.shape)}")
                    p.copy_(m)
        for o, sd in zip(inner, optimizer_state["inner"]):
            load_optimizer_state(o, sd)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """An HF directory (config + one safetensors file) written by global rank 0 from the stream
        (collective). The side files (config.json, generation_config.json) come from the HF source."""
        import shutil

        from safetensors.torch import save_file

        tensors = {}
        for name, t in self.export_hf_weights():
            if is_main_rank():
                tensors[name] = t.detach().cpu().contiguous().clone()
        if not is_main_rank():
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        src = self.hf_dir if self.hf_dir is not None else self.mcore_dir / "hf"
        for side in ("config.json", "generation_config.json"):
            if (Path(src) / side).is_file():
                shutil.copy(Path(src) / side, out / side)
        if not (out / "config.json").is_file():
            from mixed_r1.models.convert import read_manifest

            (out / "config.json").write_text(json.dumps(read_manifest(self.mcore_dir)["hf_config"]))
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


class _EmbedKeepingStream:
    """A :class:`~mixed_r1.rollout.weight_sync.MegatronWeightStream` that hands the input-embedding
    table passing by to its engine (rank 0) and otherwise is the stream (specs, retarget)."""

    def __init__(self, stream: Any, engine: MegatronEngine) -> None:
        self.stream, self.engine = stream, engine

    def specs(self) -> dict[str, tuple[int, ...]]:
        return self.stream.specs()

    def retarget(self, tensor_names) -> "_EmbedKeepingStream":
        self.stream.retarget(tensor_names)
        return self

    @property
    def bytes_sent(self) -> int:
        return self.stream.bytes_sent

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
        embed = self.stream.arch.names.embed
        for name, tensor in self.stream:
            if name == embed and is_main_rank():
                self.engine._embed_table = tensor.detach().float().cpu().clone()
            yield name, tensor


__all__ = ["MegatronEngine", "completion_logprobs", "current_device", "pack_microbatch",
           "pack_thd_microbatch", "select_completion_positions", "to_microbatch"]

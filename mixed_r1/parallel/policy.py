"""The megatron-core policy backend of the GRPO trainer (:class:`McorePolicy`, a ``PolicyBackend``).

Every rank of a ``torchrun`` job builds one :class:`McorePolicy`: its (TP rank, PP stage) shard of the
language model — a megatron ``GPTModel`` (:func:`mixed_r1.parallel.load_policy`) or, for Qwen2.5-VL,
the GPTModel plus the replicated HF vision tower (:func:`mixed_r1.parallel.load_vl_policy`). The shards
come from an mcore checkpoint that global rank 0 converts once from the HF directory
(:func:`prepare_mcore_checkpoint`: atomic, cached in the run directory, re-converted when the HF files
change) while the other ranks wait at a barrier.

Rules:

- **Inputs.** A :class:`~mixed_r1.policy.PolicyBatch` row is a left-padded prompt followed by its
  right-padded completion. megatron's attention here is causal without a padding mask, so every row
  is re-packed *left-aligned* (prompt + completion tokens first, pad after): causal attention then
  never sees a pad before a real token, positions start at 0 (mrope positions come from HF's own
  ``get_rope_index`` with the right-padded attention mask), and completion token ``k`` of a row
  whose prompt holds ``p`` real tokens is scored by the logits at position ``p - 1 + k``.
- **Log-probs** ``log_softmax(logits / temperature)[target]`` come from the vocab-parallel op on the
  last stage (:func:`mixed_r1.parallel.pipeline_logprobs`, forward only) and are broadcast over the
  pipeline group, so every rank returns the same ``[B, T]`` tensor.
- **Update.** One optimizer step per ``train_step`` over its micro-batches, run by megatron-core's
  ``forward_backward_func``; the last stage's loss of micro-batch ``m`` is
  ``scale_m · compute_policy_loss(logp_m, …, num_items)`` (:mod:`mixed_r1.algo`; exact under TP because
  the log-probs are already reduced over the vocab shards), multiplied by the number of micro-batches
  to undo megatron's ``1 / num_microbatches``; so the accumulated gradient is the one-big-batch gradient.
  Data-parallel replicas (world = TP·PP·DP) take micro-batches round-robin and sum their gradients
  over the DP group (the scales are already global).
- **Grad finalization.** With PP > 1 and tied embeddings the word-embedding grads of the first and last
  stage are summed over megatron's embedding group (the last stage's copy is marked ``shared``);
  DP grads are summed over the DP group.
- **Clipping.** The global norm is ``sqrt(Σ g²)`` over every parameter once: TP-split parameters on
  every TP rank, replicated ones (norms, biases of row-parallel layers, the vision tower) on TP rank 0
  only, the ``shared`` embedding copy never; the sum is all-reduced over the model-parallel group.
  A non-finite loss or norm on any rank skips the update on all ranks (a MAX all-reduce of the flag).
- **Optimizer.** torch AdamW over this rank's parameters (elementwise, so sharded AdamW equals full
  AdamW). megatron's DDP + distributed optimizer are not used yet.
- **Weights out.** :meth:`McorePolicy.export_hf_weights` is a :class:`MegatronWeightStream` (every rank
  must iterate it); checkpoints hold each rank's own shard + optimizer state.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from ..models.config import LMArch
from . import state


# ------------------------------------------------------------------------------- helpers
def is_main_rank() -> bool:
    """Global rank 0 (or a process without torch.distributed)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from global rank ``src`` on every rank (pickled); identity without a process group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def _hf_fingerprint(hf_dir: Path) -> str:
    """Hash of config.json and the (name, size, mtime) of every safetensors file of ``hf_dir``."""
    h = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def prepare_mcore_checkpoint(hf_dir: str | Path, cache_dir: str | Path, tp: int, pp: int) -> Path:
    """The mcore checkpoint of ``hf_dir`` at (tp, pp), converted by global rank 0 into
    ``cache_dir/tp{tp}_pp{pp}`` (atomic) unless a conversion of the same HF files is already there.
    Collective: every rank calls it and waits for rank 0."""
    from ..models.convert import hf_to_mcore

    hf_dir = Path(hf_dir)
    out = Path(cache_dir) / f"tp{tp}_pp{pp}"
    err: str | None = None
    if is_main_rank():
        try:
            fp = _hf_fingerprint(hf_dir)
            stamp = out / "mixed_r1_source.json"
            fresh = stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp
            if not fresh:
                import shutil

                if out.exists():
                    shutil.rmtree(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                hf_to_mcore(hf_dir, out, tp=tp, pp=pp)  # written under a temporary name, renamed
                tmp = stamp.with_name(stamp.name + ".tmp")
                tmp.write_text(json.dumps({"hf_dir": str(hf_dir), "fingerprint": fp}))
                os.replace(tmp, stamp)
        except Exception as exc:  # every rank must learn about it, not hang in the barrier
            err = f"{type(exc).__name__}: {exc}"
            if not dist.is_initialized() or dist.get_world_size() == 1:
                raise
    err = broadcast_object(err)
    if err is not None:
        raise ValueError(f"converting {hf_dir} to mcore (tp={tp}, pp={pp}) failed on rank 0: {err}")
    return out


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
    """A :class:`~mixed_r1.policy.PolicyBatch` → the schedule's microbatch dict, rows left-aligned.

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


def completion_logprobs(logp: torch.Tensor, mb: dict[str, Any], mask: torch.Tensor) -> torch.Tensor:
    """[b, s] log-probs of the packed rows → [B, T] completion log-probs (0 where ``mask`` is 0)."""
    n = mb["n_rows"]
    return logp[:n].gather(1, mb["gather_index"]) * mask.to(logp.dtype)


# ------------------------------------------------------------------------------- policy
class McorePolicy:
    """This rank's megatron-core policy shard as a :class:`~mixed_r1.policy.PolicyBackend` (see the
    module docstring for the rules). Build it with :meth:`from_hf`; ``trainable=False`` makes a frozen
    policy (the KL reference): no optimizer, no grads."""

    def __init__(self, model: torch.nn.Module, arch: LMArch, *, mcore_dir: str | Path,
                 hf_dir: str | Path | None = None, pad_id: int = 0, lr: float = 1e-5,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, grad_clip: float = 1.0, trainable: bool = True,
                 params_dtype: torch.dtype = torch.float32) -> None:
        from ..policy import prepare_trainable

        self.model, self.arch = model, arch
        self.mcore_dir = Path(mcore_dir)
        self.hf_dir = Path(hf_dir) if hf_dir is not None else None
        self.pad_id = int(pad_id)
        self.grad_clip = grad_clip
        self.params_dtype = params_dtype
        self.device = next(model.parameters()).device
        self.is_vl = arch.is_vl
        if self.is_vl and state.pp_size() > 1:
            raise ValueError("parallel.backend=mcore: Qwen2.5-VL with pipeline_parallel > 1 is not "
                             "supported by the trainer yet (the vision tower lives on the first stage "
                             "only and is not streamed to the generator); use pipeline_parallel=1")
        self._embed_table: torch.Tensor | None = None
        self._opt_kw = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.optimizer = prepare_trainable(model, trainable, lr, betas, eps, weight_decay)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_hf(cls, hf_dir: str | Path, cache_dir: str | Path, *, pad_id: int = 0,
                params_dtype: torch.dtype = torch.float32, **kw: Any) -> "McorePolicy":
        """Convert ``hf_dir`` once (rank 0, cached in ``cache_dir``) and load this rank's shard."""
        mcore_dir = prepare_mcore_checkpoint(hf_dir, cache_dir, state.tp_size(), state.pp_size())
        model, arch = cls._load(mcore_dir, params_dtype)
        return cls(model, arch, mcore_dir=mcore_dir, hf_dir=hf_dir, pad_id=pad_id,
                   params_dtype=params_dtype, **kw)

    @staticmethod
    def _load(mcore_dir: Path, params_dtype: torch.dtype) -> tuple[torch.nn.Module, LMArch]:
        from ..models.config import arch_from_hf_config
        from ..models.convert import read_manifest
        from .model import load_policy
        from .multimodal import load_vl_policy

        arch = arch_from_hf_config(read_manifest(mcore_dir)["hf_config"])
        if arch.is_vl:
            return load_vl_policy(mcore_dir, params_dtype=params_dtype)
        return load_policy(mcore_dir, params_dtype=params_dtype)

    def frozen_copy(self) -> "McorePolicy":
        """A frozen copy of the current weights (the KL reference), built from the same shards."""
        model, arch = self._load(self.mcore_dir, self.params_dtype)
        with torch.no_grad():
            own = self.model.state_dict()
            for k, v in model.state_dict().items():
                if not k.endswith("_extra_state"):
                    v.copy_(own[k])
        return McorePolicy(model, arch, mcore_dir=self.mcore_dir, hf_dir=self.hf_dir,
                           pad_id=self.pad_id, trainable=False, params_dtype=self.params_dtype)

    # ---------------------------------------------------------------- forward
    def _run(self, mbs: list[dict[str, Any]], *, forward_only: bool, loss_fn, temperature: float):
        from .schedule import pipeline_logprobs

        return pipeline_logprobs(self.model, self.arch, mbs, forward_only=forward_only,
                                 loss_fn=loss_fn, temperature=temperature)

    def forward_logprobs(self, batch: Any, temperature: float = 1.0) -> torch.Tensor:
        """[B, T] float32 log-probs of ``batch.targets`` (no grad), identical on every rank."""
        mb = pack_microbatch(batch, self.pad_id)
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
    def train_step(self, micro_batches: Sequence[Any], loss: Any, lr: float) -> dict[str, Any]:
        """One AdamW update: loss = Σ_m scale_m · compute_policy_loss(m) accumulated through the
        schedule; grads finalized (tied embeddings over PP, DP sum), clipped by the global norm,
        skipped on every rank when the loss or the norm is non-finite anywhere."""
        from megatron.core import parallel_state as ps

        from ..algo import compute_policy_loss

        if self.optimizer is None:
            raise RuntimeError("train_step on a frozen policy")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
        order = list(range(len(micro_batches)))[dp_rank::dp]
        local = [micro_batches[i] for i in order]
        collected: list[dict[str, torch.Tensor]] = []
        logps: list[torch.Tensor] = []
        if local:
            rows = max(mb.targets.shape[0] for mb in local)
            seq = max(int(mb.inputs["attention_mask"].sum(1).max()) + 1 for mb in local)
            packed = [pack_microbatch(mb, self.pad_id, rows, seq) for mb in local]
            for mb, pk in zip(local, packed):
                pk["_batch"] = mb
            n_mb = len(packed)

            def loss_fn(logp: torch.Tensor, pk: dict[str, Any]) -> torch.Tensor:
                b = pk["_batch"]
                lp = completion_logprobs(logp, pk, b.mask)
                value, metrics = compute_policy_loss(
                    lp, b.advantages, b.mask, b.old_logprobs, b.ref_logprobs, beta=loss.beta,
                    eps_low=loss.eps_low, eps_high=loss.eps_high, loss_type=loss.loss_type,
                    importance_level=loss.importance_level,
                    max_completion_length=loss.max_completion_length, num_items=b.num_items)
                collected.append({"loss": value.detach(), **metrics})
                logps.append(lp.detach().float())
                return value * (b.scale * n_mb)  # megatron divides by num_microbatches

            self._run(packed, forward_only=False, loss_fn=loss_fn, temperature=loss.temperature)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self._finalize_grads(params)

        # metrics as HFPolicy reports them: token-weighted means over the micro-batches of
        # scalars computed on the last stage; summed over DP replicas, broadcast over PP
        keys = ["clip_frac", "clip_frac_low", "clip_frac_high", "ratio_mean", "ratio_min",
                "ratio_max"]
        if any(mb.ref_logprobs is not None for mb in micro_batches):
            keys.append("kl_mean")
        vec = torch.zeros(len(keys) + 2, dtype=torch.float64)
        if state.is_last_stage():
            for b, m in zip(local, collected):
                n = b.num_tokens
                vec[0] += float(m["loss"]) * b.scale
                vec[1] += n
                for j, k in enumerate(keys):
                    vec[2 + j] += float(m[k]) * n
        if dist.is_initialized() and dist.get_world_size() > 1:
            if dp > 1:
                dist.all_reduce(vec, group=ps.get_data_parallel_group(with_context_parallel=False))
            vec = _pp_broadcast(vec, vec.shape, vec.dtype, torch.device("cpu"))
        total_loss, ntok = float(vec[0]), int(vec[1])

        gnorm = self._grad_norm(params)
        bad = torch.tensor([0.0 if math.isfinite(total_loss) and math.isfinite(gnorm) else 1.0])
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        skipped = bool(bad.item())
        if not skipped:
            max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
            coef = max_norm / (gnorm + 1e-6)
            if coef < 1.0:
                for p in params:
                    p.grad.mul_(coef)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out: dict[str, Any] = {k: float(vec[2 + j]) / max(ntok, 1) for j, k in enumerate(keys)}
        out.update(loss=total_loss, grad_norm=gnorm, skipped=float(skipped), tokens=float(ntok),
                   logprobs=self._gather_logprobs(micro_batches, order, logps))
        return out

    def _gather_logprobs(self, micro_batches: Sequence[Any], order: list[int],
                         logps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The update's [B, T] log-probs of every micro-batch (in order) on every rank."""
        from megatron.core import parallel_state as ps

        mine: dict[int, torch.Tensor] = {}
        for j, i in enumerate(order):
            t = logps[j] if state.is_last_stage() else None
            mine[i] = _pp_broadcast(t, tuple(micro_batches[i].targets.shape), torch.float32,
                                    self.device)
        if ps.get_data_parallel_world_size() > 1:
            parts: list[Any] = [None] * ps.get_data_parallel_world_size()
            dist.all_gather_object(parts, {i: t.cpu() for i, t in mine.items()},
                                   group=ps.get_data_parallel_group(with_context_parallel=False))
            for p in parts:
                mine.update(p)
        return [mine[i] for i in range(len(micro_batches))]

    def _finalize_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Tied-embedding grads summed over the first/last stage; DP grads summed over DP."""
        from megatron.core import parallel_state as ps

        if not (dist.is_initialized() and dist.get_world_size() > 1):
            return
        if state.pp_size() > 1 and self.arch.tie_embeddings and ps.is_rank_in_embedding_group():
            lm = getattr(self.model, "language_model", self.model)
            w = lm.shared_embedding_or_output_weight()
            if w is not None and w.grad is not None:
                dist.all_reduce(w.grad, group=ps.get_embedding_group())
        if ps.get_data_parallel_world_size() > 1:
            group = ps.get_data_parallel_group(with_context_parallel=False)
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat, group=group)
            offset = 0
            for p in params:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n

    def _grad_norm(self, params: list[torch.nn.Parameter]) -> float:
        """Global L2 norm; each parameter counted once across TP (replicated: TP rank 0) and PP
        (the ``shared`` embedding copy on the last stage never)."""
        from megatron.core import parallel_state as ps

        sq = torch.zeros(1, dtype=torch.float64, device=self.device)
        tp_rank = state.tp_rank()
        for p in params:
            if getattr(p, "shared", False):
                continue
            if not getattr(p, "tensor_model_parallel", False) and tp_rank != 0:
                continue
            sq += p.grad.detach().double().square().sum()
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sq, group=ps.get_model_parallel_group())
        return float(sq.sqrt())

    # ---------------------------------------------------------------- weights
    def _vision_tensors(self) -> dict[str, torch.Tensor]:
        visual = getattr(self.model, "visual", None)
        if visual is None:
            return {}
        prefix = self.arch.names.vision_prefix or "model.visual."
        return {prefix + k: v.detach() for k, v in visual.state_dict().items()}

    def weight_stream(self, **kw: Any):
        """A :class:`~mixed_r1.rollout.weight_sync.MegatronWeightStream` over this rank's shards."""
        from ..rollout.weight_sync import MegatronWeightStream

        lm = getattr(self.model, "language_model", self.model)
        return MegatronWeightStream(lm, self.arch, extra=self._vision_tensors(), **kw)

    def export_hf_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """HF-named full tensors streamed from the shards (collective: every rank iterates it). On
        global rank 0 the input-embedding table passing by is kept (for the BMAS reward embedder)."""
        embed = self.arch.names.embed
        for name, tensor in self.weight_stream():
            if name == embed and is_main_rank():
                self._embed_table = tensor.detach().float().cpu().clone()
            yield name, tensor

    def embedding_table(self) -> torch.Tensor | None:
        """The input-embedding table as of the last :meth:`export_hf_weights` pass (rank 0), else None."""
        return self._embed_table

    @property
    def checkpoint_shard(self) -> str:
        """This rank's shard name in checkpoints; ranks with DP rank > 0 hold a copy of DP rank 0's."""
        return f"tp{state.tp_rank():02d}_pp{state.pp_rank():03d}"

    @property
    def writes_checkpoint_shard(self) -> bool:
        from megatron.core import parallel_state as ps

        return ps.get_data_parallel_rank() == 0

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """``{"model": this rank's shard (incl. the vision tower), "optimizer": its AdamW state}``."""
        sd = {k: v.detach() for k, v in self.model.state_dict().items()
              if not k.endswith("_extra_state")}
        return {"model": sd,
                "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: dict | None,
             source: str = "<memory>") -> None:
        """Restore this rank's shard (every tensor checked by name and shape) and optimizer state."""
        from ..policy import ModelMismatchError

        own = {k: v for k, v in self.model.state_dict().items() if not k.endswith("_extra_state")}
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
        if optimizer_state is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(optimizer_state)

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
            from ..models.convert import read_manifest

            (out / "config.json").write_text(json.dumps(read_manifest(self.mcore_dir)["hf_config"]))
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


class DistributedGenerator:
    """A rollout generator for a multi-rank policy: ``inner`` runs where it exists (global rank 0
    for the HF backend; every rank for vLLM's external launcher) and rank 0's completions are
    broadcast, so all ranks hold identical rollouts. ``update_weights`` drains the weight stream on
    ranks without a generator (the stream runs collectives)."""

    def __init__(self, inner: Any | None) -> None:
        self.inner = inner

    def generate(self, prompts: list, n: int, params: Any) -> list:
        out = self.inner.generate(prompts, n, params) if self.inner is not None else None
        return broadcast_object(out)

    def update_weights(self, named_tensors: Any) -> None:
        if self.inner is not None:
            self.inner.update_weights(named_tensors)
        else:
            for _ in named_tensors:
                pass

    def sleep(self) -> None:
        if self.inner is not None:
            self.inner.sleep()

    def wake_up(self) -> None:
        if self.inner is not None:
            self.inner.wake_up()

    def close(self) -> None:
        if self.inner is not None and hasattr(self.inner, "close"):
            self.inner.close()


__all__ = ["DistributedGenerator", "McorePolicy", "barrier", "broadcast_object", "completion_logprobs",
           "is_main_rank", "pack_microbatch", "prepare_mcore_checkpoint"]

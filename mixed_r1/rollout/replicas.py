"""Rollout replicas: R = world / rollout_TP generators over a torchrun world, each with its share.

The ranks of a torchrun job form ``replicas`` groups of ``tensor_parallel`` consecutive ranks;
replica ``r`` is ranks ``r·TP .. r·TP + TP − 1`` (vLLM's external launcher numbers its
data-parallel engines the same way: ``RANK // TP``). A step's P prompts are cut into R
contiguous blocks (prompt order; equal for a step, off by at most one for an eval set) and
replica ``r`` generates block ``r``. A replica whose block is empty (fewer prompts than
replicas: a small eval set, the data engine's last chunk) still enters vLLM's engine loop when
its generator is ``lockstep``: vLLM's data-parallel engines all-reduce at every step, and one
that stayed away would hang the others.

- vLLM: one engine per replica (``data_parallel_size = R`` engines of TP ranks each), every rank
  of the replica calls ``generate`` with the same prompts, as vLLM's external launcher requires;
- HF generate: one generator per replica on its first rank (no TP in HF generate).

Every prompt carries its own sampling seed (:func:`mixed_r1.rollout.base.prompt_seeds`), so a
completion does not depend on which replica generated it. The replicas' completions are then
all-gathered in prompt order, so every rank holds the step's full rollouts (rewards are scored
once and shared by the trainer). ``update_weights`` drains the weight stream on ranks without a
generator (the stream runs collectives on every rank).
"""
from __future__ import annotations

from typing import Any, Sequence

from mixed_r1.rollout.base import Completion, Prompt, SamplingParams


class ReplicaGenerator:
    """This rank's view of the job's rollout replicas (see the module docstring). ``inner``: the
    generator this rank drives (every rank for vLLM, the replica's first rank for HF), else None.
    ``leader``: whether this rank reports its replica's completions."""

    def __init__(self, inner: Any | None, *, replica: int, replicas: int, leader: bool) -> None:
        if not 0 <= replica < replicas:
            raise ValueError(f"replica {replica} is not in [0, {replicas})")
        self.inner, self.replica, self.replicas, self.leader = inner, replica, replicas, leader

    def share(self, n_prompts: int) -> tuple[int, int]:
        """``[start, stop)`` of the prompts this replica generates: contiguous blocks whose sizes
        differ by at most one, the larger ones first (equal when R divides P, as the config
        requires of ``rollout.prompts_per_step``; an eval set of any size splits too, and a
        replica may get none)."""
        k, extra = divmod(n_prompts, self.replicas)
        lo = self.replica * k + min(self.replica, extra)
        return lo, lo + k + (1 if self.replica < extra else 0)

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams
                 ) -> list[Completion]:
        """The completions of every prompt, prompt-major, on every rank."""
        import torch.distributed as dist

        lo, hi = self.share(len(prompts))
        mine: list[Completion] = []
        # vLLM's data-parallel engines step in lockstep (each step all-reduces "still busy"
        # over the replicas): one with no prompts must still run its engine loop, idling
        lockstep = bool(getattr(self.inner, "lockstep", False)) and len(prompts) > 0
        if self.inner is not None and (hi > lo or lockstep):  # the same on every replica rank
            mine = self.inner.generate(list(prompts[lo:hi]), n, params)
            for c in mine:
                c.prompt_index += lo
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return mine
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, (self.replica, mine) if self.leader else None)
        by_replica = dict(p for p in parts if p is not None)
        if sorted(by_replica) != list(range(self.replicas)):
            raise RuntimeError(f"rollout replicas {sorted(by_replica)} reported, expected "
                               f"0..{self.replicas - 1}")
        return [c for r in range(self.replicas) for c in by_replica[r]]

    def update_weights(self, named_tensors: Any, *, partial: bool = False) -> None:
        if self.inner is not None:
            self.inner.update_weights(named_tensors, **({"partial": True} if partial else {}))
        else:
            for _ in named_tensors:
                pass

    def sleep(self) -> None:
        if self.inner is not None:
            self.inner.sleep()

    def wake_up(self, tags: Any = None) -> None:
        if self.inner is not None:
            self.inner.wake_up(tags=tags)

    def close(self) -> None:
        if self.inner is not None and hasattr(self.inner, "close"):
            self.inner.close()


__all__ = ["ReplicaGenerator"]

"""The job's parallel layout in one validated object (torchtitan's ``ParallelDims``, for this
trainer's dimensions). Pure Python: the config validates with it before any process starts.

Training: world = TP · PP · DP ranks, megatron-core's rank order (tp fastest, then dp, then pp:
``rank = tp_rank + TP·(dp_rank + DP·pp_rank)``, megatron's default ``tp-cp-ep-dp-pp`` with
CP = EP = 1). Rollout: the same world in R = world / rollout_TP generator replicas of rollout_TP
consecutive ranks (vLLM's external launcher: rank r serves replica ``r // rollout_TP``; its first
rank is the replica's leader), each sampling ``prompts / R`` of a step's prompts.
"""
from __future__ import annotations

from dataclasses import dataclass


class ParallelDimsError(ValueError):
    """A layout whose sizes do not fit together (the message names the sizes and the rule);
    ``dim`` names the size at fault (``tp``, ``pp``, ``dp``, ``rollout_tp``, ``world_size``)."""

    def __init__(self, message: str, dim: str = "world_size") -> None:
        super().__init__(message)
        self.dim = dim


@dataclass(frozen=True)
class ParallelDims:
    """Sizes of the training and rollout dimensions, checked on construction.

    ``dp = -1``: data parallelism takes the rest of ``world_size`` (which must then be given);
    ``rollout_tp = None``: each rollout replica spans ``tp`` ranks (the training TP);
    ``world_size = None``: TP·PP·DP. Raises :class:`ParallelDimsError` when a size is < 1, the
    world is not TP·PP·DP, or rollout_TP does not divide the world."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    rollout_tp: int | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "rollout_tp", "world_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ParallelDimsError(f"{name} must be an integer >= 1, got {v!r}", name)
        if self.dp == -1:
            if self.world_size is None:
                raise ParallelDimsError("dp=-1 (the rest of the world) needs world_size")
            if self.world_size % (self.tp * self.pp):
                raise ParallelDimsError(f"world size {self.world_size} is not a multiple of "
                                        f"tp*pp = {self.tp}*{self.pp}")
            object.__setattr__(self, "dp", self.world_size // (self.tp * self.pp))
        elif not isinstance(self.dp, int) or self.dp < 1:
            raise ParallelDimsError(f"dp must be an integer >= 1 (or -1: the rest), got {self.dp!r}",
                                    "dp")
        need = self.tp * self.pp * self.dp
        if self.world_size is None:
            object.__setattr__(self, "world_size", need)
        elif self.world_size != need:
            raise ParallelDimsError(f"the world has {self.world_size} ranks but tp*pp*dp = "
                                    f"{self.tp}*{self.pp}*{self.dp} = {need}")
        if self.rollout_tp is None:
            object.__setattr__(self, "rollout_tp", self.tp)
        if self.world_size % self.rollout_tp:
            raise ParallelDimsError(f"rollout tensor parallel {self.rollout_tp} does not divide the "
                                    f"world of {self.world_size} ranks (tp*pp*dp) into rollout "
                                    "replicas", "rollout_tp")

    @classmethod
    def from_world(cls, tp: int = 1, pp: int = 1, *, rollout_tp: int | None = None,
                   world_size: int | None = None) -> "ParallelDims":
        """TP × PP with data parallelism over the rest of ``world_size`` (default: torchrun's
        ``WORLD_SIZE``, 1 without it)."""
        import os

        world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
        return cls(tp=tp, pp=pp, dp=-1, rollout_tp=rollout_tp, world_size=world)

    # ---------------------------------------------------------------- derived sizes
    @property
    def world(self) -> int:
        return int(self.world_size)

    @property
    def replicas(self) -> int:
        """Rollout replicas R = world / rollout_TP."""
        return self.world // int(self.rollout_tp)

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    @property
    def pp_enabled(self) -> bool:
        return self.pp > 1

    @property
    def dp_enabled(self) -> bool:
        return self.dp > 1

    # ---------------------------------------------------------------- one rank
    def coords(self, rank: int) -> tuple[int, int, int]:
        """``(tp_rank, dp_rank, pp_rank)`` of global ``rank`` in megatron-core's order."""
        if not 0 <= rank < self.world:
            raise ParallelDimsError(f"rank {rank} is outside the world of {self.world}")
        return rank % self.tp, rank // self.tp % self.dp, rank // (self.tp * self.dp)

    def replica_of(self, rank: int) -> int:
        """The rollout replica global ``rank`` serves."""
        self.coords(rank)
        return rank // int(self.rollout_tp)

    def is_replica_leader(self, rank: int) -> bool:
        """True on the first rank of its rollout replica."""
        self.coords(rank)
        return rank % int(self.rollout_tp) == 0

    def check_prompts(self, prompts_per_step: int) -> int:
        """Prompts each replica samples per step; ParallelDimsError unless R divides them."""
        if prompts_per_step % self.replicas:
            raise ParallelDimsError(f"{prompts_per_step} prompts per step are not a multiple of the "
                                    f"{self.replicas} rollout replicas (world {self.world} / rollout "
                                    f"tensor parallel {self.rollout_tp}); each replica samples an "
                                    "equal share")
        return prompts_per_step // self.replicas


__all__ = ["ParallelDims", "ParallelDimsError"]

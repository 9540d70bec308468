"""Process groups: the one place that initialises torch.distributed and megatron-core ``parallel_state``.

Rule: world = TP x PP x DP (megatron's default order tp-cp-ep-dp-pp). Ranks and the world size come
from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The backend
and whether megatron-core makes gloo side groups come from the platform
(:mod:`mixed_r1.parallel.platform`): NCCL and no gloo groups on GPUs, gloo (and the CPU shim) on CPU.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist

from . import cpu_shim
from .dims import ParallelDims, ParallelDimsError
from .platform import current_platform


def single_process_env() -> None:
    """Without torchrun's environment (no ``RANK``), make this process a world of one: RANK 0,
    WORLD_SIZE 1, LOCAL_RANK 0 and a free local port. A no-op under torchrun."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def init_parallel(dims: ParallelDims | None = None, *, seed: int = 1234,
                  timeout_minutes: int = 30) -> ParallelDims:
    """Initialise torch.distributed from torchrun's env and megatron-core's TP/PP/DP groups for
    ``dims`` (default: TP = PP = 1, DP the whole world), and seed megatron's RNG tracker with
    ``seed``. ``ParallelDims.from_world(tp, pp)`` gives DP the rest of torchrun's world. Returns
    the dims.

    Idempotent for the same sizes. Raises :class:`~mixed_r1.parallel.dims.ParallelDimsError` when
    the world is not TP·PP·DP, ValueError when megatron's groups exist with other sizes, and
    RuntimeError if megatron's rank order ever disagrees with :meth:`ParallelDims.coords`.
    """
    from megatron.core import parallel_state as ps

    platform = current_platform()
    cpu_shim.install()
    if not dist.is_initialized():
        platform.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=platform.dist_backend,
                                timeout=timedelta(minutes=timeout_minutes))
    world = dist.get_world_size()
    dims = dims or ParallelDims(dp=-1, world_size=world)
    if dims.world != world:
        raise ParallelDimsError(f"the world has {world} ranks but tp*pp*dp = "
                                f"{dims.tp}*{dims.pp}*{dims.dp} = {dims.world}")
    if ps.model_parallel_is_initialized():
        if (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()) != (dims.tp, dims.pp):
            raise ValueError("megatron parallel state already initialised with different sizes")
    else:
        ps.initialize_model_parallel(tensor_model_parallel_size=dims.tp, pipeline_model_parallel_size=dims.pp,
                                     create_gloo_process_groups=platform.gloo_side_groups)
    ours = dims.coords(dist.get_rank())
    theirs = (ps.get_tensor_model_parallel_rank(), ps.get_data_parallel_rank(),
              ps.get_pipeline_model_parallel_rank())
    if ours != theirs:
        raise RuntimeError(f"rank {dist.get_rank()}: megatron places it at (tp, dp, pp) = {theirs}, "
                           f"ParallelDims at {ours}")
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return dims


def destroy_parallel() -> None:
    """Tear down megatron's groups and the default process group."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def tp_group():
    from megatron.core import parallel_state as ps
    return ps.get_tensor_model_parallel_group()


def pp_group():
    from megatron.core import parallel_state as ps
    return ps.get_pipeline_model_parallel_group()


def dp_group():
    from megatron.core import parallel_state as ps
    return ps.get_data_parallel_group()


def tp_rank() -> int:
    from megatron.core import parallel_state as ps
    return ps.get_tensor_model_parallel_rank()


def tp_size() -> int:
    from megatron.core import parallel_state as ps
    return ps.get_tensor_model_parallel_world_size()


def pp_rank() -> int:
    from megatron.core import parallel_state as ps
    return ps.get_pipeline_model_parallel_rank()


def pp_size() -> int:
    from megatron.core import parallel_state as ps
    return ps.get_pipeline_model_parallel_world_size()


def is_first_stage() -> bool:
    return pp_rank() == 0


def is_last_stage() -> bool:
    return pp_rank() == pp_size() - 1

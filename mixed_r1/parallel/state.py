"""Process groups: the one place that initialises torch.distributed and megatron-core ``parallel_state``.

Rule: world = TP x PP x DP (megatron's default order tp-cp-ep-dp-pp). Ranks and the world size come
from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). The backend
is NCCL when CUDA is available, gloo otherwise (and then the CPU shim is installed).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from . import cpu_shim


@dataclass(frozen=True)
class ParallelConfig:
    """Sizes of the model-parallel dimensions; DP is whatever is left of the world."""

    tp: int = 1
    pp: int = 1
    seed: int = 1234
    timeout_minutes: int = 30


def _backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


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


def init_parallel(cfg: ParallelConfig = ParallelConfig()) -> None:
    """Initialise torch.distributed from torchrun's env and megatron-core's TP/PP/DP groups.

    Idempotent for the same sizes. Raises ValueError when world size is not a multiple of TP*PP.
    """
    from megatron.core import parallel_state as ps

    cpu_shim.install()
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=_backend(), timeout=timedelta(minutes=cfg.timeout_minutes))
    world = dist.get_world_size()
    if world % (cfg.tp * cfg.pp) != 0:
        raise ValueError(f"world size {world} is not a multiple of tp*pp = {cfg.tp}*{cfg.pp}")
    if ps.model_parallel_is_initialized():
        if (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size()) != (cfg.tp, cfg.pp):
            raise ValueError("megatron parallel state already initialised with different sizes")
    else:
        ps.initialize_model_parallel(tensor_model_parallel_size=cfg.tp, pipeline_model_parallel_size=cfg.pp,
                                     create_gloo_process_groups=not torch.cuda.is_available())
    from megatron.core import tensor_parallel

    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)


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

"""CPU shim: lets megatron-core's GPTModel, pipeline schedules and RNG tracker run on CPU + gloo.

Only for the tests and the CPU demo. ``install()`` is a no-op whenever tensors live on a GPU
(the platform's ``cpu_shim``), so nothing
here ever runs on a GPU. Everything it changes, and why:

1. ``torch.cuda.current_device()`` returns ``"cpu"``: megatron-core allocates with
   ``device=torch.cuda.current_device()`` (rotary tables, attention masks, p2p shape buffers).
2. ``torch.cuda.synchronize()`` is a no-op (the p2p code calls it after ``batch_isend_irecv``) and
   ``Tensor.cuda()`` returns the tensor itself (tied embeddings with PP > 1 move the shared weight
   with ``.cuda()`` before all-reducing it). On a CPU-only torch both would otherwise raise.
3. The "CUDA" RNG tracker becomes :class:`CpuRNGStatesTracker`, which forks the CPU generator
   (megatron forks it around weight init and dropout); ``model_parallel_cuda_manual_seed`` is
   re-pointed at :func:`model_parallel_cpu_manual_seed` with the same seed rule.
4. The megatron modules that allocate with ``device="cuda"`` see a ``torch`` whose factory functions
   map that to CPU: the schedules (a token counter), ``transformer.utils`` (the causal mask), the
   DDP gradient buffers, the optimizers and their grad-norm/clip helpers, ``megatron.core.utils``'
   multi-tensor fallbacks (:data:`_CUDA_FACTORY_MODULES`).
5. ``Tensor.type()`` called with no argument *from megatron-core code* names CPU tensors as CUDA ones
   (``torch.BFloat16Tensor`` → ``torch.cuda.BFloat16Tensor``): megatron's mixed-precision and
   distributed optimizers sort parameters by those strings and refuse anything else. Calls from any
   other module see the real name.
6. Activation recompute (``tensor_parallel.CheckpointFunction``) saves and restores the CPU RNG, the
   CUDA RNG and the tracker's states around the recomputation. The CUDA generator's get/set become
   no-ops: on CPU every stream is the CPU generator (or a tracker state), already handled there.

Call :func:`install` before building models (``mixed_r1.parallel.init_parallel`` does).
"""
from __future__ import annotations

import contextlib
import sys
import types
from typing import Any

import torch

_INSTALLED = False

# megatron's seed offsets (tensor_parallel.random.model_parallel_cuda_manual_seed)
_TP_SEED_OFFSET = 2718
_EP_SEED_OFFSET = 1024 + 100


def is_active() -> bool:
    """True once :func:`install` has patched megatron-core for CPU."""
    return _INSTALLED


class CpuRNGStatesTracker:
    """Named CPU generator states with megatron's ``CudaRNGStatesTracker`` interface.

    ``fork(name)`` swaps the global CPU RNG state for the named one, runs the block, stores the
    advanced state back and restores the previous global state — the rule megatron applies to the
    CUDA generator.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.reset()

    def is_initialized(self) -> bool:
        return self._is_initialized

    def reset(self) -> None:
        self._is_initialized = False
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()

    def get_states(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.states_.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = dict(states)

    def add(self, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"cuda rng state {name} already exists")
        self.seeds_.add(seed)
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed)
        self.states_[name] = gen.get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng"):
        from megatron.core.tensor_parallel import random as mrandom

        name = name or mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME
        if name not in self.states_:
            raise Exception(f"cuda rng state {name} is not added")
        orig = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)


def model_parallel_cpu_manual_seed(seed: int, te_rng_tracker: bool = False, inference_rng_tracker: bool = False,
                                   use_cudagraphable_rng: bool = False, force_reset_rng: bool = False) -> None:
    """Seed the CPU generator and the tracker's named states as megatron seeds CUDA ones.

    data-parallel state: ``seed``; tensor-parallel state: ``seed + 2718 + tp_rank``;
    expert-parallel state: ``seed + 1124 + 100 * ep_rank + tp_rank``.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import random as mrandom

    tracker = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    tp_rank = ps.get_tensor_model_parallel_rank()
    ep_rank = ps.get_expert_model_parallel_rank()
    torch.manual_seed(seed)
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + _TP_SEED_OFFSET + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + _EP_SEED_OFFSET + 100 * ep_rank + tp_rank)


class _CpuTorch(types.ModuleType):
    """A view of ``torch`` whose factory functions map ``device="cuda"`` to the CPU."""

    _FACTORIES = ("zeros", "ones", "empty", "tensor", "full", "arange")

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(torch, name)
        if name in self._FACTORIES:
            def factory(*args: Any, _f=attr, **kwargs: Any) -> torch.Tensor:
                dev = kwargs.get("device")
                if dev is not None and str(dev).startswith("cuda"):
                    kwargs["device"] = "cpu"
                return _f(*args, **kwargs)
            return factory
        return attr


_CUDA_FACTORY_MODULES = (
    "megatron.core.pipeline_parallel.schedules",
    "megatron.core.transformer.utils",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.distributed.distributed_data_parallel",
    "megatron.core.optimizer.optimizer",
    "megatron.core.optimizer.distrib_optimizer",
    "megatron.core.optimizer.clip_grads",
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.utils",
)


def _megatron_tensor_type(orig):
    """``Tensor.type`` that reports CPU tensors as CUDA ones to megatron-core callers (rule 5)."""

    def type_(self, *args: Any, **kwargs: Any):
        if not args and not kwargs and self.device.type == "cpu":
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("megatron.core."):
                return orig(self).replace("torch.", "torch.cuda.", 1)
        return orig(self, *args, **kwargs)

    return type_


def install() -> bool:
    """Patch megatron-core for CPU execution (idempotent). Returns True iff the shim is active."""
    global _INSTALLED
    from .platform import current_platform

    if not current_platform().cpu_shim:  # tensors on a GPU: never patch anything
        return False
    if _INSTALLED:
        return True
    import importlib

    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel import random as mrandom

    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    mrandom.model_parallel_cuda_manual_seed = model_parallel_cpu_manual_seed
    tensor_parallel.model_parallel_cuda_manual_seed = model_parallel_cpu_manual_seed
    mrandom.initialize_rng_tracker = lambda *a, **k: None
    mrandom._get_cuda_rng_state = lambda *a, **k: torch.empty(0, dtype=torch.uint8)
    mrandom._set_cuda_rng_state = lambda *a, **k: None
    torch.Tensor.type = _megatron_tensor_type(torch.Tensor.type)  # type: ignore[method-assign]
    for name in _CUDA_FACTORY_MODULES:
        importlib.import_module(name).torch = _CpuTorch()
    _INSTALLED = True
    return True

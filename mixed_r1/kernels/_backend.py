"""Backend choice: Triton for CUDA tensors, torch elsewhere; ``force_backend`` overrides (tests run the
Triton path on CPU tensors under TRITON_INTERPRET=1)."""
from __future__ import annotations

import contextlib
import contextvars
import os

import torch

try:  # triton is Linux-only and optional for the torch paths
    import triton  # noqa: F401
    HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    HAS_TRITON = False

_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("mixed_r1_kernel_backend", default=None)


@contextlib.contextmanager
def force_backend(name: str | None):
    """Run ops with ``name`` in {"triton", "torch", None (auto)} inside the block."""
    if name not in (None, "triton", "torch"):
        raise ValueError(f"unknown backend {name!r}; expected triton, torch or None")
    tok = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(tok)


def use_triton(t: torch.Tensor) -> bool:
    forced = _FORCED.get() or os.environ.get("MIXED_R1_KERNEL_BACKEND") or None
    if forced == "torch":
        return False
    if forced == "triton":
        if not HAS_TRITON:
            raise RuntimeError("backend 'triton' forced but triton is not importable")
        if not t.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("Triton on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported")
        return True
    return HAS_TRITON and t.is_cuda


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """[B, T, V] (any row strides, unit stride on V) as-is; otherwise a contiguous copy."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    return x


def torch_chunk_rows(V: int, budget_elems: int = 1 << 22) -> int:
    """Rows per chunk so a float32 [rows, V] temporary stays within ``budget_elems`` elements."""
    return max(1, budget_elems // max(V, 1))

"""Streaming safetensors I/O: write a file tensor by tensor, read headers without loading data.

The header (names, dtypes, shapes, offsets) is fixed before any data is written, so a writer only ever
holds the tensor it is writing. Readers never unpickle anything (safetensors only).
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

DTYPE_TO_ST = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
               torch.bool: "BOOL"}
ST_TO_DTYPE = {v: k for k, v in DTYPE_TO_ST.items()}


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, mis-shaped or corrupt; the message names the tensor/file."""


def check_safetensors_file(path: str | os.PathLike) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete safetensors file: a
    readable header whose tensors' data ends exactly at the end of the file (a truncated or
    padded file fails; the bytes themselves are not checked)."""
    path = Path(path)
    header = read_header(path)  # CheckpointError naming the file when unreadable
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    try:
        end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"],
                  default=0)
    except (KeyError, TypeError, ValueError, IndexError):
        raise CheckpointError(f"{path}: corrupt safetensors header") from None
    need, size = 8 + n + end, path.stat().st_size
    if size != need:
        raise CheckpointError(f"{path}: {'truncated' if size < need else 'corrupt'} safetensors "
                              f"file ({size} bytes, its header describes {need})")


def read_json_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object file of a model or checkpoint directory (``config.json``, a manifest, …);
    :class:`CheckpointError` naming it when it is unreadable, not JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable JSON file: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's raw little-endian bytes (no copy when already contiguous)."""
    t = t.detach().contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy())


def sha256_of(t: torch.Tensor) -> str:
    """Hex sha256 of a tensor's raw bytes (the manifest checksum)."""
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a safetensors header: {name: {"dtype", "shape", "data_offsets"}} (+ "__metadata__")."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: truncated safetensors file")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise CheckpointError(f"{path}: corrupt safetensors header (size {n})")
            return json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read safetensors header: {e}") from e


class StreamWriter:
    """Write one safetensors file whose entries [(name, dtype, shape)] are declared up front.

    ``write(name, tensor)`` must follow the declared order; it checks dtype and shape and returns the
    tensor's sha256. ``close()`` fails unless every entry was written, then flushes and fsyncs.
    """

    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        header: dict[str, Any] = {}
        off = 0
        self._order: list[tuple[str, torch.dtype, tuple[int, ...]]] = []
        for name, dtype, shape in entries:
            nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPE_TO_ST[dtype], "shape": list(shape), "data_offsets": [off, off + nbytes]}
            off += nbytes
            self._order.append((name, dtype, tuple(shape)))
        if metadata:
            header["__metadata__"] = metadata
        hb = json.dumps(header, separators=(",", ":")).encode()
        hb += b" " * (-len(hb) % 8)
        self._f = open(self.path, "wb")
        self._f.write(struct.pack("<Q", len(hb)))
        self._f.write(hb)
        self._next = 0

    def write(self, name: str, t: torch.Tensor) -> str:
        exp_name, dtype, shape = self._order[self._next]
        if name != exp_name:
            raise CheckpointError(f"{self.path}: expected tensor {exp_name}, got {name}")
        if t.dtype != dtype or tuple(t.shape) != shape:
            raise CheckpointError(f"{self.path}: tensor {name} is {t.dtype}{tuple(t.shape)}, expected {dtype}{shape}")
        buf = tensor_bytes(t)
        self._f.write(buf)
        self._next += 1
        return hashlib.sha256(buf).hexdigest()

    def abort(self) -> None:
        """Close without checks (the caller is unwinding an error; the temp dir gets deleted)."""
        self._f.close()

    def __enter__(self) -> "StreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort() if exc_type is not None else self.close()

    def close(self) -> None:
        if self._next != len(self._order):
            self._f.close()
            raise CheckpointError(f"{self.path}: only {self._next}/{len(self._order)} tensors written")
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON and fsync it (the caller's directory rename makes it visible)."""
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())

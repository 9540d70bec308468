"""Atomic training checkpoints.

Layout of ``<run>/checkpoints/step_00000012/``::

    model.safetensors     policy weights (tied tensors stored once)
    optimizer.pt          optimizer state (tensors and plain values; loaded with weights_only=True)
    rng.pt                python / numpy / torch (/ cuda) RNG states as tensors
    trainer_state.json    step, data position, counters
    config.yaml           the run's config

A checkpoint is written under ``.tmp-step_…``, every file fsynced, then renamed into place and
the parent directory fsynced, so a crash (even SIGKILL) never leaves a partial ``step_…``
directory. Only the newest ``keep_last`` checkpoints are kept.

A multi-rank (megatron-core) policy writes a *sharded* checkpoint instead
(:func:`save_sharded_checkpoint`): ``model_<shard>.safetensors`` per (TP rank, PP stage) and
``optimizer_<optimizer shard>.pt`` (the model shard's name, or per DP rank as well with the
distributed optimizer, whose fp32 masters and moments are DP shards) in place of
``model.safetensors``/``optimizer.pt``; the other files are written once by global rank 0, and the
same temporary-name-then-rename rule holds. ``load_checkpoint(path, shard=…, optimizer_shard=…)``
reads one rank's shards. In mixed precision the optimizer file holds the fp32 master weights.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the run."""


# ------------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, torch.Tensor]:
    """Every RNG state the run draws from, as tensors (so ``weights_only`` loading works)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python_version": torch.tensor(version, dtype=torch.int64),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": torch.tensor(pos, dtype=torch.int64),
        "numpy_gauss": torch.tensor([has_gauss, cached], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    assert kind == "MT19937"
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"cuda_{i}"] = s
    return out


def restore_rng(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng`."""
    g = state["python_gauss"].tolist()
    random.setstate((int(state["python_version"]), tuple(int(x) for x in state["python_state"]),
                     g[1] if g[0] else None))
    ng = state["numpy_gauss"].tolist()
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         int(state["numpy_pos"]), int(ng[0]), float(ng[1])))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda_"))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------- files
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dedupe_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop keys that alias an earlier key's storage (tied weights), contiguous CPU copies."""
    seen: set[tuple[int, int, tuple]] = set()
    out = {}
    for k, v in state.items():
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if v.numel() and ident in seen:
            continue
        seen.add(ident)
        out[k] = v.detach().to("cpu").contiguous()
    return out


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict | None
    rng: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: str


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint dirs under ``root``, oldest first (temporaries are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def save_checkpoint(root: str | Path, step: int, policy_state: dict[str, Any],
                    trainer_state: dict[str, Any], config_yaml: str, keep_last: int = 2) -> Path:
    """Write ``step_<step>`` atomically (see the module docstring); prune to ``keep_last``."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):  # leftovers of a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        save_file(dedupe_tensors(policy_state["model"]), str(tmp / "model.safetensors"),
                  metadata={"format": "pt", "step": str(step)})
        if policy_state.get("optimizer") is not None:
            torch.save(policy_state["optimizer"], tmp / "optimizer.pt")
        torch.save(capture_rng(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **trainer_state},
                                                           indent=2, sort_keys=True))
        (tmp / "config.yaml").write_text(config_yaml)
        for f in tmp.iterdir():
            _fsync_file(f)
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step (e.g. after resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_sharded_checkpoint(root: str | Path, step: int, shard: str, policy_state: dict[str, Any],
                            trainer_state: dict[str, Any], config_yaml: str, keep_last: int = 2,
                            *, write_shard: bool = True, optimizer_shard: str | None = None,
                            write_optimizer: bool | None = None) -> Path:
    """Collective over all ranks of the default process group: write ``step_<step>`` with this
    rank's ``model_<shard>.safetensors`` (when ``write_shard``; replicas holding the same shard pass
    False), its ``optimizer_<optimizer_shard>.pt`` (default: ``shard``, written when
    ``write_optimizer``, default ``write_shard``) and, from global rank 0, the RNG, trainer state and
    config; renamed into place by rank 0 after every rank has fsynced its files."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    root = Path(root)
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-sharded"

    def barrier() -> None:
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    try:
        if write_shard:
            f = tmp / f"model_{shard}.safetensors"
            save_file(dedupe_tensors(policy_state["model"]), str(f),
                      metadata={"format": "pt", "step": str(step), "shard": shard})
            _fsync_file(f)
        opt_name = f"optimizer_{optimizer_shard or shard}.pt"
        if (write_shard if write_optimizer is None else write_optimizer) and \
                policy_state.get("optimizer") is not None:
            torch.save(policy_state["optimizer"], tmp / opt_name)
            _fsync_file(tmp / opt_name)
        if rank == 0:
            torch.save(capture_rng(), tmp / "rng.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": step, "sharded": True, **trainer_state}, indent=2, sort_keys=True))
            (tmp / "config.yaml").write_text(config_yaml)
            for name in ("rng.pt", "trainer_state.json", "config.yaml"):
                _fsync_file(tmp / name)
        barrier()
        if rank == 0:
            _fsync_dir(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(root)
            for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(path: str | Path, shard: str | None = None,
                    optimizer_shard: str | None = None) -> Checkpoint:
    """Read a checkpoint directory (``shard``/``optimizer_shard``: one rank's model and optimizer
    shards of a sharded checkpoint); a missing file raises :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    model_file = "model.safetensors" if shard is None else f"model_{shard}.safetensors"
    opt_file = "optimizer.pt" if shard is None else f"optimizer_{optimizer_shard or shard}.pt"
    for name in (model_file, "rng.pt", "trainer_state.json", "config.yaml"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint, {name} is missing")
    opt = None
    if (path / opt_file).is_file():
        opt = torch.load(path / opt_file, map_location="cpu", weights_only=True)
    return Checkpoint(path=path, model=load_file(str(path / model_file)), optimizer=opt,
                      rng=torch.load(path / "rng.pt", map_location="cpu", weights_only=True),
                      state=json.loads((path / "trainer_state.json").read_text()),
                      config=(path / "config.yaml").read_text())


__all__ = ["Checkpoint", "CheckpointError", "capture_rng", "dedupe_tensors", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "restore_rng", "save_checkpoint",
           "save_sharded_checkpoint", "step_dir"]

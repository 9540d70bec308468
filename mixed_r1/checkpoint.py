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

**Manifest.** Every checkpoint holds ``manifest.json``, written last inside the temporary
directory (before the rename)::

    {"format": "mixed_r1.checkpoint/1", "step": 12, "sharded": false,
     "files": {"model.safetensors": {"size": 1234, "sha256": "…"}, "optimizer.pt": {…}, …}}

listing every other file of the checkpoint with its size in bytes and the sha256 of its bytes.
In a sharded checkpoint every rank hashes the files it wrote and rank 0 gathers them into the one
manifest. :func:`verify_checkpoint` checks files against it and raises :class:`CheckpointError`
naming the first bad file (missing, wrong size, wrong checksum, not listed); a checkpoint without
a manifest is incomplete. :func:`newest_complete_checkpoint` is how a resume picks its checkpoint:
the newest one whose files verify on every rank (a collective decision), moving damaged newer ones
aside to ``step_<step>.damaged`` and reporting why (when none is complete it raises and moves
nothing). An optimizer file the run needs that is missing is a damaged checkpoint, never "no
optimizer".

**Run directories** (:func:`prepare_run_dir`, :func:`staged_run_dir`): a new run refuses a
non-empty directory unless told to overwrite it (which deletes only what a run writes, and with
:func:`staged_run_dir` only once the run has been built), and ``--resume`` refuses a directory that
does not exist.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

# the package's one CheckpointError (conversion raises it too): a checkpoint or model file that is
# missing, incomplete, corrupt or does not fit the run; the message names the file
from mixed_r1.atomic import replace_dir
from mixed_r1.models.safetensors_io import CheckpointError, check_safetensors_file
from mixed_r1.parallel.platform import current_platform

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{8})$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mixed_r1.checkpoint/1"
_HASH_CHUNK = 16 << 20  # bytes read at a time when hashing


class CheckpointLayoutError(CheckpointError):
    """A complete checkpoint that does not fit the run: a file this rank needs is not one of its
    files (another parallel layout, optimizer sharding or model). Not damage: never fallen back
    from."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after finishing its step and writing a checkpoint.

    ``signum`` is the signal, ``step`` the last finished step, ``checkpoint`` the checkpoint written
    (None when none could be), ``exit_code`` the conventional status ``128 + signum`` (130 for
    SIGINT, 143 for SIGTERM). A KeyboardInterrupt, so ``except Exception`` does not swallow it."""

    def __init__(self, signum: int, step: int, checkpoint: str | os.PathLike | None) -> None:
        import signal as _signal

        self.signum, self.step = int(signum), int(step)
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.exit_code = 128 + self.signum
        try:
            name = _signal.Signals(self.signum).name
        except ValueError:
            name = f"signal {self.signum}"
        where = (f"checkpoint {self.checkpoint}; continue with --resume" if self.checkpoint
                 else "no checkpoint written")
        super().__init__(f"interrupted by {name} after step {self.step}: {where}")


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
    for i, s in enumerate(current_platform().rng_states()):
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
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda_"))]
    current_platform().set_rng_states(cuda)


# ------------------------------------------------------------------------------- files
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"size": bytes, "sha256": hex}`` of a file, read in 16 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def _write_manifest(directory: Path, step: int, files: dict[str, dict[str, Any]],
                    sharded: bool) -> None:
    man = {"format": MANIFEST_FORMAT, "step": step, "sharded": sharded,
           "files": {k: files[k] for k in sorted(files)}}
    path = directory / MANIFEST
    with open(path, "w") as f:
        json.dump(man, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def read_checkpoint_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of checkpoint directory ``path``; :class:`CheckpointError` naming
    ``manifest.json`` when it is missing, unreadable or of another format."""
    f = Path(path) / MANIFEST
    if not f.is_file():
        raise CheckpointError(f"{f}: missing (an incomplete checkpoint, or one written before "
                              "checkpoints had manifests)")
    try:
        man = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: unreadable manifest: {e}") from None
    if not isinstance(man, dict) or man.get("format") != MANIFEST_FORMAT or \
            not isinstance(man.get("files"), dict):
        raise CheckpointError(f"{f}: not a checkpoint manifest of format {MANIFEST_FORMAT}")
    return man


def verify_checkpoint(path: str | os.PathLike, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Check files of checkpoint ``path`` against its manifest: ``names`` (default: every file the
    manifest lists) must be listed, present, of the listed size and sha256. Raises
    :class:`CheckpointError` naming the first bad file; returns the manifest."""
    path = Path(path)
    man = read_checkpoint_manifest(path)
    files = man["files"]
    for name in (sorted(files) if names is None else names):
        entry = files.get(name)
        f = path / name
        if entry is None:
            raise CheckpointLayoutError(f"{f}: not part of this checkpoint (its manifest lists "
                                  f"{', '.join(sorted(files))}): another model or parallel "
                                  "layout?")
        if not f.is_file():
            raise CheckpointError(f"{f}: missing (the manifest lists it)")
        size = f.stat().st_size
        if size != entry["size"]:
            raise CheckpointError(f"{f}: {size} bytes, the manifest says {entry['size']} "
                                  "(truncated or overwritten)")
        if file_digest(f)["sha256"] != entry["sha256"]:
            raise CheckpointError(f"{f}: sha256 differs from the manifest's (corrupt file)")
    return man


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
    """Checkpoint dirs under ``root`` (renamed into place, so never half-written; their files are
    checked by :func:`verify_checkpoint`), oldest first (temporaries and damaged ones are
    ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(dirs, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint dir, unverified (:func:`newest_complete_checkpoint` verifies)."""
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def checkpoint_files(shard: str | None = None, optimizer_shard: str | None = None, *,
                     optimizer: bool = True) -> list[str]:
    """The files one rank reads from a checkpoint: its model (shard), its optimizer (shard) when
    ``optimizer``, the RNG states, the trainer state and the config."""
    model = "model.safetensors" if shard is None else f"model_{shard}.safetensors"
    opt = "optimizer.pt" if shard is None else f"optimizer_{optimizer_shard or shard}.pt"
    return [model] + ([opt] if optimizer else []) + ["rng.pt", "trainer_state.json", "config.yaml"]


def save_checkpoint(root: str | Path, step: int, policy_state: dict[str, Any],
                    trainer_state: dict[str, Any], config_yaml: str, keep_last: int = 2) -> Path:
    """Write ``step_<step>`` atomically with its manifest (see the module docstring); prune to
    ``keep_last``."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step_*"):  # leftovers of a crash mid-save (replace_dir's too)
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
        digests = {}
        for f in sorted(tmp.iterdir()):
            _fsync_file(f)
            digests[f.name] = file_digest(f)
        _write_manifest(tmp, step, digests, sharded=False)
        replace_dir(tmp, final, fsync=True)  # a re-save of the same step (after resume) replaces it
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _dist_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled; ``[obj]`` without a process group)."""
    import torch.distributed as dist

    rank, world = _dist_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def save_sharded_checkpoint(root: str | Path, step: int, shard: str, policy_state: dict[str, Any],
                            trainer_state: dict[str, Any], config_yaml: str, keep_last: int = 2,
                            *, write_shard: bool = True, optimizer_shard: str | None = None,
                            write_optimizer: bool | None = None) -> Path:
    """Collective over all ranks of the default process group: write ``step_<step>`` with this
    rank's ``model_<shard>.safetensors`` (when ``write_shard``; replicas holding the same shard pass
    False), its ``optimizer_<optimizer_shard>.pt`` (default: ``shard``, written when
    ``write_optimizer``, default ``write_shard``) and, from global rank 0, the RNG, trainer state and
    config. Every rank fsyncs and hashes the files it wrote; rank 0 gathers the sizes and sha256s
    into ``manifest.json`` and renames the directory into place. A failure on any rank fails the
    save on every rank (nothing appears under the final name)."""
    import torch.distributed as dist
    from safetensors.torch import save_file

    root = Path(root)
    rank, world = _dist_world()
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-sharded"

    def barrier() -> None:
        if world > 1:
            dist.barrier()

    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-step_*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    digests: dict[str, dict[str, Any]] = {}
    error: str | None = None
    try:
        written = []
        if write_shard:
            f = tmp / f"model_{shard}.safetensors"
            save_file(dedupe_tensors(policy_state["model"]), str(f),
                      metadata={"format": "pt", "step": str(step), "shard": shard})
            written.append(f)
        opt_name = f"optimizer_{optimizer_shard or shard}.pt"
        if (write_shard if write_optimizer is None else write_optimizer) and \
                policy_state.get("optimizer") is not None:
            torch.save(policy_state["optimizer"], tmp / opt_name)
            written.append(tmp / opt_name)
        if rank == 0:
            torch.save(capture_rng(), tmp / "rng.pt")
            (tmp / "trainer_state.json").write_text(json.dumps(
                {"step": step, "sharded": True, **trainer_state}, indent=2, sort_keys=True))
            (tmp / "config.yaml").write_text(config_yaml)
            written += [tmp / n for n in ("rng.pt", "trainer_state.json", "config.yaml")]
        for f in written:
            _fsync_file(f)
            digests[f.name] = file_digest(f)
    except Exception as exc:  # every rank must learn about it, not hang in the gather
        error = f"rank {rank}: {type(exc).__name__}: {exc}"
    gathered = _all_gather((digests, error))
    errors = [e for _, e in gathered if e]
    try:
        if errors:
            raise CheckpointError(f"{final}: saving the sharded checkpoint failed: "
                                  + "; ".join(errors))
        if rank == 0:
            files: dict[str, dict[str, Any]] = {}
            for d, _ in gathered:
                files.update(d)
            _write_manifest(tmp, step, files, sharded=True)
            replace_dir(tmp, final, fsync=True)
            for old in list_checkpoints(root)[:-keep_last] if keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
    except BaseException:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _gathered_verdicts(path: str | Path, names: Sequence[str]) -> list[tuple[str, str]]:
    """Every rank's verdict on its ``names`` of checkpoint ``path`` (collective): ``("layout",
    msg)`` for a file that is not part of the checkpoint, ``("damaged", msg)`` for a missing,
    truncated or corrupt one; ranks whose files verify report nothing."""
    verdict: tuple[str, str] | None = None
    try:
        verify_checkpoint(path, names)
    except CheckpointLayoutError as exc:
        verdict = ("layout", str(exc))
    except CheckpointError as exc:
        verdict = ("damaged", str(exc))
    except OSError as exc:
        verdict = ("damaged", f"{path}: {exc}")
    return [v for v in _all_gather(verdict) if v]


def verify_on_every_rank(path: str | Path, names: Sequence[str]) -> None:
    """:func:`verify_checkpoint` of each rank's ``names``, collective over the default process
    group: when any rank finds a bad file, every rank raises the same :class:`CheckpointError`
    naming it (:class:`CheckpointLayoutError` when a needed file is not part of the checkpoint)."""
    verdicts = _gathered_verdicts(path, names)
    if verdicts:
        kinds = {k for k, _ in verdicts}
        msg = "; ".join(sorted({m for _, m in verdicts}))
        raise (CheckpointLayoutError if "layout" in kinds else CheckpointError)(msg)


def newest_complete_checkpoint(root: str | Path, names: Sequence[str]
                               ) -> tuple[Path | None, list[str]]:
    """The checkpoint a resume should load: the newest under ``root`` whose files ``names`` (this
    rank's, :func:`checkpoint_files`) verify against its manifest on *every* rank.

    Collective over the default process group (every rank calls it with its own ``names``; the
    verdicts are all-gathered, so all ranks pick the same checkpoint). Once a complete one is
    found, the damaged newer ones are renamed to ``step_<step>.damaged`` by rank 0 (kept for
    inspection, no longer listed, so ``keep_last`` pruning and later resumes skip them). Returns
    ``(path, problems)``: ``problems`` has one line per skipped checkpoint naming its bad files;
    ``(None, [])`` when ``root`` holds no checkpoint. Raises :class:`CheckpointError` (listing
    every problem) when checkpoints exist but none is complete — then nothing is moved, so a
    second ``--resume`` fails the same way instead of finding no checkpoint and starting over —
    and :class:`CheckpointLayoutError` at once when a checkpoint is complete but lacks a file
    this rank needs (the run's layout differs; nothing is moved)."""
    import torch.distributed as dist

    rank, world = _dist_world()
    problems: list[str] = []
    damaged: list[Path] = []
    for ck in reversed(list_checkpoints(root)):
        verdicts = _gathered_verdicts(ck, names)
        layout = [msg for kind, msg in verdicts if kind == "layout"]
        if layout:  # the run does not fit its checkpoints: an older one will not fit either
            raise CheckpointLayoutError(layout[0])
        bad = sorted({msg for _, msg in verdicts})
        if not bad:
            if rank == 0:  # only now: with nothing to fall back to, a rerun must fail the same way
                for d in damaged:
                    aside = d.with_name(d.name + ".damaged")
                    shutil.rmtree(aside, ignore_errors=True)
                    os.rename(d, aside)
            if damaged and world > 1:
                dist.barrier()
            return ck, problems
        problems.append(f"{ck.name}: " + "; ".join(bad))
        damaged.append(ck)
    if problems:
        raise CheckpointError(f"{root}: no complete checkpoint to resume from ("
                              + " | ".join(problems) + "); nothing was moved")
    return None, []


def load_checkpoint(path: str | Path, shard: str | None = None,
                    optimizer_shard: str | None = None, *, optimizer: bool | None = None,
                    verify: bool = True) -> Checkpoint:
    """Read a checkpoint directory (``shard``/``optimizer_shard``: one rank's model and optimizer
    shards of a sharded checkpoint). ``optimizer``: True requires the optimizer file, False skips
    it, None reads it when the checkpoint has one. With ``verify`` the files read are first checked
    against the manifest (:func:`verify_checkpoint`); a missing or damaged file raises
    :class:`CheckpointError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    model_file, opt_file, *rest = checkpoint_files(shard, optimizer_shard)
    if optimizer is None:
        if verify:
            listed = read_checkpoint_manifest(path)["files"]
            optimizer = opt_file in listed
        else:
            optimizer = (path / opt_file).is_file()
    names = [model_file] + ([opt_file] if optimizer else []) + rest
    if verify:
        verify_checkpoint(path, names)
    for name in names:
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint, {name} is missing")
    opt = None
    try:
        if optimizer:
            opt = torch.load(path / opt_file, map_location="cpu", weights_only=True)
        model = _load_named(path / model_file, load_file)
        rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
        state = json.loads((path / "trainer_state.json").read_text())
    except CheckpointError:
        raise
    except Exception as exc:  # unverified reads: name the file torch/safetensors choked on
        raise CheckpointError(f"{path}: cannot read checkpoint: {type(exc).__name__}: {exc}") \
            from exc
    return Checkpoint(path=path, model=model, optimizer=opt, rng=rng, state=state,
                      config=(path / "config.yaml").read_text())


def _load_named(f: Path, load_file) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(f))
    except Exception as exc:  # safetensors raises its own error types on a bad file
        raise CheckpointError(f"{f}: cannot read: {exc}") from exc


# ------------------------------------------------------------------------------- run dirs
# what a training run writes into its directory (``--overwrite`` deletes only these)
RUN_ENTRIES = frozenset({"config.yaml", "metrics.jsonl", "metrics.tmp", "checkpoints", "model",
                         "init_model", "mcore_init", "tb", "curves.png"})


def _launch_rank() -> int:
    """Global rank: the process group's, else torchrun's ``RANK`` (before the group exists)."""
    rank, world = _dist_world()
    if world > 1:
        return rank
    return int(os.environ.get("RANK", "0") or 0)


def _check_run_dir(run: Path, resume: bool, overwrite: bool) -> list[str]:
    """Raise unless ``run`` may be used; returns the entries an overwrite must clear ([] if none)."""
    if resume and overwrite:
        raise ValueError("--resume continues a run, --overwrite deletes it: pass one of them")
    if resume:
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such run directory to resume (--resume continues "
                                    "an existing run; drop it to start a new one)")
        return []
    if not run.exists():
        return []
    if not run.is_dir():
        raise FileExistsError(f"{run}: exists and is not a directory")
    entries = sorted(p.name for p in run.iterdir())
    if not entries:
        return []
    if not overwrite:
        shown = ", ".join(entries[:6]) + (", …" if len(entries) > 6 else "")
        raise FileExistsError(f"{run}: the run directory is not empty ({shown}); pass --resume "
                              "to continue that run or --overwrite to delete it and start over")
    foreign = [e for e in entries if e not in RUN_ENTRIES and not e.startswith(".tmp-")]
    if foreign:
        raise FileExistsError(f"{run}: --overwrite deletes only what a training run writes, and "
                              f"{run / foreign[0]} is not that; move it or choose another out_dir")
    return entries


def _remove(p: Path) -> None:
    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def _stash(run: Path, entries: list[str]) -> Path | None:
    """Move ``entries`` of ``run`` into a fresh ``run/.tmp-overwritten-<pid>`` (renames on one file
    system: nothing is copied or lost if the process dies meanwhile; a later --overwrite clears the
    stash as a temporary)."""
    if not entries:
        return None
    stash = run / f".tmp-overwritten-{os.getpid()}"
    if stash.exists():
        _remove(stash)
        entries = [e for e in entries if e != stash.name]
    stash.mkdir()
    for e in entries:
        os.rename(run / e, stash / e)
    return stash


def _unstash(run: Path, stash: Path) -> None:
    """Undo :func:`_stash`: remove what a run wrote into ``run`` since, move the stash back."""
    for p in run.iterdir():
        if p != stash and (p.name in RUN_ENTRIES or p.name.startswith(".tmp-")):
            _remove(p)
    for p in stash.iterdir():
        os.rename(p, run / p.name)
    stash.rmdir()


def _prepare(run: str | Path, resume: bool, overwrite: bool) -> tuple[Path, Path | None]:
    """The checks of :func:`prepare_run_dir`, the overwritten entries stashed (rank 0), not deleted."""
    run = Path(run)
    rank, world = _dist_world()
    error: BaseException | None = None
    stash = None
    if _launch_rank() == 0:
        try:
            stash = _stash(run, _check_run_dir(run, resume, overwrite))
        except (OSError, ValueError) as exc:
            error = exc
    elif resume:  # a check that does not race with rank 0's writes
        try:
            _check_run_dir(run, resume, False)
        except OSError as exc:
            error = exc
    if world > 1:
        error = _all_gather(error)[0]
    if error is not None:
        raise error
    run.mkdir(parents=True, exist_ok=True)
    return run, stash


def prepare_run_dir(run: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Make ``run`` ready for training, or refuse with one clear error:

    - ``resume``: the directory must exist (FileNotFoundError); it is left as it is.
    - otherwise a non-empty directory is refused (FileExistsError) unless ``overwrite``, which
      deletes its contents first — only what a run writes (:data:`RUN_ENTRIES`, temporaries); any
      other entry is refused, so a mistyped ``out_dir`` never deletes someone's files.
    - ``resume`` with ``overwrite`` is a ValueError.

    Global rank 0 decides and deletes (other ranks of a started process group learn its verdict;
    under torchrun before the group exists, only rank 0 checks, since it may already be writing
    when another rank looks); every rank then creates the directory. Returns its path.
    :func:`staged_run_dir` defers the deletion until the run is built."""
    run, stash = _prepare(run, resume, overwrite)
    if stash is not None:
        _remove(stash)
    return run


@contextlib.contextmanager
def staged_run_dir(run: str | Path, *, resume: bool = False, overwrite: bool = False) -> Iterator[Path]:
    """:func:`prepare_run_dir` as a context around building a run: with ``overwrite``, the earlier
    run's entries are moved into ``run/.tmp-overwritten-<pid>`` rather than deleted; if the body
    raises (a config, data or model error while building), what it wrote into ``run`` is removed
    and they are moved back, so the directory is as it was; when it returns they are deleted. The
    same checks and errors as :func:`prepare_run_dir`; rank 0 stashes, restores and deletes."""
    run, stash = _prepare(run, resume, overwrite)
    try:
        yield run
    except BaseException:
        if stash is not None:
            _unstash(run, stash)
        raise
    if stash is not None:
        _remove(stash)


__all__ = ["Checkpoint", "CheckpointError", "CheckpointLayoutError", "MANIFEST", "MANIFEST_FORMAT", "RUN_ENTRIES",
           "TrainingInterrupted", "capture_rng", "check_safetensors_file", "checkpoint_files",
           "dedupe_tensors", "file_digest", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "newest_complete_checkpoint", "prepare_run_dir", "staged_run_dir",
           "read_checkpoint_manifest", "restore_rng", "save_checkpoint",
           "save_sharded_checkpoint", "step_dir", "verify_checkpoint", "verify_on_every_rank"]

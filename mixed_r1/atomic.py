"""Atomic outputs, the one way the package writes a file or a directory that a crash must never
leave half-written: write under a temporary name beside the target (same filesystem), then
``os.replace``/``os.rename`` it into place. A reader sees the old content or the new, never a
mix; a failed write leaves the target as it was and removes its temporary.

Modes: ``tempfile.mkstemp``/``mkdtemp`` create their temporaries private (0600/0700), and so do
writers that rename their own temporaries (safetensors 0.8's ``save_file``, hence HF
``save_pretrained``); a rename would carry that to the target. A temporary file, and every entry
of a temporary directory, is given the mode an ordinary ``open``/``mkdir`` would have created
(0666/0777 less the process umask; an executable file keeps its execute bits) before it is
renamed into place, so a teammate reads a checkpoint exactly when they could read any other file
the user writes.

Imports nothing of the package (any layer may use it).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def current_umask() -> int:
    """The process umask (Linux: read from ``/proc/self/status``, else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _default_mode(path: Path, *, directory: bool, umask: int | None = None) -> None:
    """Give ``path`` the mode ``open``/``mkdir`` would have: 0666/0777 less the umask."""
    mask = current_umask() if umask is None else umask
    executable = not directory and os.stat(path).st_mode & 0o100
    os.chmod(path, (0o777 if directory or executable else 0o666) & ~mask)


def default_modes(tree: str | os.PathLike) -> None:
    """:func:`_default_mode` for ``tree`` and everything under it (symlinks left alone)."""
    mask = current_umask()
    root = Path(tree)
    _default_mode(root, directory=root.is_dir(), umask=mask)
    if root.is_dir():
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                if not p.is_symlink():
                    _default_mode(p, directory=p.is_dir(), umask=mask)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path beside ``path`` (parents created); when the block succeeds
    the file written there replaces ``path``, when it raises it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _default_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """FileExistsError unless ``out`` is absent, an empty directory, or ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output {out} already exists and is not empty (pass --overwrite "
                              "to replace it)")


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike, *, fsync: bool = False) -> Path:
    """Move the finished directory ``tmp`` onto ``final``: an existing ``final`` is first renamed
    aside (``.tmp-<name>.old-<pid>``, the temporaries' prefix) and deleted after the rename, so
    ``final`` is never a partly deleted directory. ``tmp`` and its entries first get the modes the
    umask gives (module docstring). ``fsync``: flush ``tmp`` and the parent's entries to disk."""
    tmp, final = Path(tmp), Path(final)
    default_modes(tmp)
    if fsync:
        fsync_dir(tmp)
    old = None
    if final.exists():
        old = final.with_name(f".tmp-{final.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    if fsync:
        fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextmanager
def atomic_dir(out: str | os.PathLike, overwrite: bool = False, *,
               fsync: bool = False) -> Iterator[Path]:
    """Yield a fresh ``.<name>.tmp-*`` directory beside ``out``; when the block succeeds it
    becomes ``out`` (:func:`replace_dir`), when it raises it is deleted. An existing non-empty
    ``out`` raises FileExistsError (before the block and again before the rename, in case another
    writer filled it meanwhile) unless ``overwrite``."""
    out = Path(out)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        check_output_dir(out, overwrite)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        replace_dir(tmp, out, fsync=fsync)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["atomic_dir", "atomic_path", "check_output_dir", "current_umask", "default_modes",
           "fsync_dir", "replace_dir", "write_text_atomic"]

"""The cached HF → mcore conversion of a multi-rank job: global rank 0 converts the HF checkpoint
once per (TP, PP, pipeline split) into a cache directory stamped with the HF files' fingerprint,
and every rank waits for it and loads its shard from there.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch.distributed as dist

from mixed_r1.atomic import write_text_atomic
from mixed_r1.parallel.dist import broadcast_object, is_main_rank


def _hf_fingerprint(hf_dir: Path) -> str:
    """Hash of config.json and the (name, size, mtime) of every safetensors file of ``hf_dir``."""
    h = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for f in sorted(hf_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def mcore_cache_name(tp: int, pp: int, layers: Sequence[int]) -> str:
    """Cache sub-directory of one conversion: ``tp{tp}_pp{pp}`` for the even split (the name caches
    had before uneven splits), ``tp{tp}_pp{pp}_layers{n0}-{n1}-..`` for an uneven one."""
    name = f"tp{tp}_pp{pp}"
    if len(set(layers)) > 1:
        name += "_layers" + "-".join(str(n) for n in layers)
    return name


def prepare_mcore_checkpoint(hf_dir: str | Path, cache_dir: str | Path, tp: int, pp: int,
                             pipeline_layers: Sequence[int] | None = None) -> Path:
    """The mcore checkpoint of ``hf_dir`` at (tp, pp) and the pipeline split ``pipeline_layers``
    (layers per stage, None = even; resolved by
    :func:`mixed_r1.models.config.resolve_pipeline_layers`: an uneven split must be megatron's
    first/last-stage form, middle stages even), converted by global rank 0 into
    ``cache_dir/<mcore_cache_name>`` (one directory per split; atomic) unless a conversion of the
    same HF files is already there. Collective: every rank calls it and waits for rank 0."""
    from .config import arch_from_hf_config
    from .convert import hf_to_mcore

    hf_dir = Path(hf_dir)
    out: Path | None = None
    err: str | None = None
    if is_main_rank():
        try:
            arch = arch_from_hf_config(json.loads((hf_dir / "config.json").read_text()))
            layers = arch.check_parallel(tp, pp, pipeline_layers)
            out = Path(cache_dir) / mcore_cache_name(tp, pp, layers)
            fp = _hf_fingerprint(hf_dir)
            stamp = out / "mixed_r1_source.json"
            fresh = stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fp
            if not fresh:
                import shutil

                if out.exists():
                    shutil.rmtree(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                # written under a temporary name, renamed
                hf_to_mcore(hf_dir, out, tp=tp, pp=pp, pipeline_layers=layers)
                write_text_atomic(stamp, json.dumps({"hf_dir": str(hf_dir), "fingerprint": fp}))
        except Exception as exc:  # every rank must learn about it, not hang in the barrier
            err = f"{type(exc).__name__}: {exc}"
            if not dist.is_initialized() or dist.get_world_size() == 1:
                raise
    err, where = broadcast_object((err, None if out is None else str(out)))
    if err is not None:
        split = "" if pipeline_layers is None else f", pipeline_layers={list(pipeline_layers)}"
        raise ValueError(f"converting {hf_dir} to mcore (tp={tp}, pp={pp}{split}) failed on "
                         f"rank 0: {err}")
    return Path(where)


__all__ = ["mcore_cache_name", "prepare_mcore_checkpoint"]

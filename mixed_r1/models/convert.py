"""HF <-> megatron-core checkpoint conversion and resharding, streamed unit by unit.

An **mcore checkpoint** is a directory::

    manifest.json                     format, architecture, tp, pp, pipeline_layers (layers
                                      per stage), layer ranges, HF config, and for every file
                                      every tensor's shape, dtype and sha256
    model_tp{r}_pp{s}.safetensors     the state_dict of GPTModel on (tp rank r, pipeline stage s),
                                      stage-local layer names (see models/mapping.py)
    vision.safetensors                Qwen2.5-VL only: the HF vision tower, names and values as in HF
    hf/                               the HF side files (config.json byte-for-byte, tokenizer, ...)

Pipeline split: ``pipeline_layers`` lists the transformer layers of each stage (e.g. ``[2, 1]``)
as :func:`mixed_r1.models.config.resolve_pipeline_layers` decides it: even by default, or uneven
in megatron-core's form (first and last stage free, middle stages even: TransformerConfig's
``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``, see
megatron/core/transformer/transformer_block.py ``get_num_layers_to_build``). A manifest without
the key (written before uneven splits existed) means the even split.

Streaming rule: a conversion reads one *unit* (embedding, one layer, or the head) at a time, splits or
merges it, and appends the pieces to files whose headers were fixed up front, so memory holds one unit
(plus its TP pieces), never a shard or the model. Every output goes to ``<out>.tmp-<pid>``, is fsynced,
and is renamed to ``<out>`` only when complete.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from safetensors import safe_open

from mixed_r1.atomic import atomic_dir

from . import mapping as M
from .config import (
    LMArch,
    PipelineLayersError,
    UnsupportedConfigError,
    arch_from_hf_config,
    resolve_hf_names,
)
from .safetensors_io import (
    ST_TO_DTYPE,
    CheckpointError,
    StreamWriter,
    read_header,
    read_json_file,
    sha256_of,
    write_json_atomic,
)

log = logging.getLogger(__name__)

FORMAT = "mixed_r1.mcore/1"
MANIFEST = "manifest.json"
VISION_FILE = "vision.safetensors"
HF_SIDE_DIR = "hf"
_SKIP_SUFFIXES = ("rotary_emb.inv_freq",)

ReadUnit = Callable[[str], dict[str, torch.Tensor]]


def shard_file(tp_rank: int, pp_rank: int) -> str:
    return f"model_tp{tp_rank}_pp{pp_rank}.safetensors"


def _copy_side_files(src: Path, dst: Path, skip: Callable[[str], bool]) -> list[str]:
    copied = []
    for p in sorted(src.iterdir()):
        if p.is_file() and not skip(p.name):
            shutil.copy2(p, dst / p.name)
            copied.append(p.name)
    return copied


# ------------------------------------------------------------------------------------ HF side
@dataclass
class HFIndex:
    """Where each HF tensor lives, with its dtype and shape, read from the safetensors headers only."""

    files: dict[str, Path]
    dtypes: dict[str, torch.dtype]
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def scan(cls, hf_dir: Path) -> "HFIndex":
        st_files = sorted(hf_dir.glob("*.safetensors"))
        if not st_files:
            raise CheckpointError(f"{hf_dir}: no *.safetensors files (only safetensors checkpoints are accepted)")
        from mixed_r1.models.safetensors_io import check_safetensors_file

        files, dtypes, shapes = {}, {}, {}
        for f in st_files:
            check_safetensors_file(f)  # a truncated file: CheckpointError naming it, up front
            for name, meta in read_header(f).items():
                if name == "__metadata__":
                    continue
                if meta["dtype"] not in ST_TO_DTYPE:
                    raise CheckpointError(f"{f}: tensor {name} has unsupported dtype {meta['dtype']}")
                files[name], dtypes[name], shapes[name] = f, ST_TO_DTYPE[meta["dtype"]], tuple(meta["shape"])
        return cls(files, dtypes, shapes)


def _check_hf_tensors(arch: LMArch, idx: HFIndex) -> list[str]:
    """Every expected tensor present with its shape; nothing unknown. Returns the vision tensor names."""
    expected: set[str] = set()
    for unit in M.units(arch):
        for name, shape in M.hf_expected_shapes(arch, unit).items():
            if name not in idx.shapes:
                raise CheckpointError(f"missing tensor {name} in the HF checkpoint")
            if idx.shapes[name] != shape:
                raise CheckpointError(f"tensor {name} has shape {list(idx.shapes[name])}, expected {list(shape)}")
            expected.add(name)
    vision = []
    for name in idx.shapes:
        if name in expected:
            continue
        if arch.is_vl and name.startswith(arch.names.vision_prefix):
            vision.append(name)
        elif arch.tie_embeddings and name == arch.names.lm_head:
            continue  # a redundant copy of the tied embedding; re-created from it on export
        elif name.endswith(_SKIP_SUFFIXES):
            log.info("skipping non-parameter tensor %s", name)
        else:
            raise UnsupportedConfigError(f"tensor {name} in the HF checkpoint has no megatron mapping")
    if arch.is_vl and not vision:
        raise CheckpointError(f"missing vision tower tensors ({arch.names.vision_prefix}*) in the HF checkpoint")
    return sorted(vision)


def _hf_reader(idx: HFIndex) -> Callable[[str], torch.Tensor]:
    def get(name: str) -> torch.Tensor:
        if name not in idx.files:
            raise CheckpointError(f"missing tensor {name} in the HF checkpoint")
        try:
            with safe_open(idx.files[name], framework="pt") as h:
                return h.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types on a corrupt file
            raise CheckpointError(f"{idx.files[name]}: cannot read tensor {name}: {e}") from e
    return get


def _meta_get(dtypes: dict[str, torch.dtype], shapes: dict[str, tuple[int, ...]]) -> Callable[[str], torch.Tensor]:
    return lambda n: torch.empty(shapes[n], dtype=dtypes[n], device="meta")


# --------------------------------------------------------------------------------- mcore side
def read_manifest(mcore_dir: str | os.PathLike) -> dict[str, Any]:
    """Load and sanity-check ``manifest.json`` of an mcore checkpoint."""
    path = Path(mcore_dir) / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"{path}: missing manifest (not an mcore checkpoint written by mixed-r1)")
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: corrupt manifest: {e}") from e
    if man.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {man.get('format')!r}, expected {FORMAT}")
    return man


def manifest_pipeline_layers(man: dict[str, Any], arch: LMArch | None = None) -> tuple[int, ...]:
    """The pipeline split an mcore checkpoint was written with: its ``pipeline_layers`` (checked by
    :func:`~mixed_r1.models.config.resolve_pipeline_layers`), or the even split of ``pp`` for
    manifests written before the key existed."""
    arch = arch or arch_from_hf_config(man["hf_config"])
    recorded = man.get("pipeline_layers")
    try:
        return arch.stage_layers(man["pp"], recorded)
    except PipelineLayersError as e:
        raise CheckpointError(f"manifest pipeline split (pp={man['pp']}, "
                              f"pipeline_layers={recorded}) is not usable: {e}") from e


def read_verified(mcore_dir: Path, man: dict[str, Any], file: str, name: str) -> torch.Tensor:
    """Read one tensor of an mcore checkpoint and check shape, dtype and sha256 against the manifest."""
    entry = man["files"].get(file, {}).get(name)
    if entry is None:
        raise CheckpointError(f"tensor {name} is not listed for {file} in the manifest")
    path = mcore_dir / file
    try:
        with safe_open(path, framework="pt") as h:
            if name not in h.keys():
                raise CheckpointError(f"{path}: missing tensor {name}")
            t = h.get_tensor(name)
    except CheckpointError:
        raise
    except Exception as e:  # safetensors raises its own error types on a corrupt file
        raise CheckpointError(f"{path}: cannot read tensor {name}: {e}") from e
    if list(t.shape) != entry["shape"] or str(t.dtype) != entry["dtype"]:
        raise CheckpointError(f"{path}: tensor {name} is {t.dtype}{list(t.shape)}, manifest says "
                              f"{entry['dtype']}{entry['shape']}")
    if sha256_of(t) != entry["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch for tensor {name} (corrupt shard)")
    return t


def _mcore_unit_reader(mcore_dir: Path, man: dict[str, Any], arch: LMArch) -> ReadUnit:
    tp, pp = man["tp"], man["pp"]
    layers = manifest_pipeline_layers(man, arch)

    def read(unit: str) -> dict[str, torch.Tensor]:
        stage = M.unit_stage(arch, unit, pp, layers)
        out = {}
        for spec in M.unit_specs(arch, unit):
            ln = M.local_name(arch, spec.name, pp, layers)
            parts = [read_verified(mcore_dir, man, shard_file(r, stage), ln) for r in range(tp)]
            out[spec.name] = M.tp_merge(parts, spec.kind, arch)
            if tuple(out[spec.name].shape) != spec.shape:
                raise CheckpointError(f"tensor {spec.name} merges to {list(out[spec.name].shape)}, expected {list(spec.shape)}")
        return out
    return read


# ------------------------------------------------------------------------------------ writers
def _write_mcore(arch: LMArch, read_unit: ReadUnit, canon_dtype: dict[str, torch.dtype], out: Path,
                 tp: int, pp: int, layers: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Write all ``model_tp*_pp*.safetensors`` for the pipeline split ``layers``; returns the
    manifest's per-file tensor table."""
    files: dict[str, dict[str, Any]] = {}
    for stage in range(pp):
        plan = list(M.shard_specs(arch, tp, pp, stage, layers))
        with ExitStack() as stack:
            writers = []
            for r in range(tp):
                entries = [(ln, canon_dtype[spec.name], M.tp_shard_shape(spec, tp, arch)) for _, spec, ln in plan]
                w = StreamWriter(out / shard_file(r, stage), entries, {"format": "pt"})
                writers.append(stack.enter_context(w))
                files[shard_file(r, stage)] = {}
            cur_unit, tensors = None, {}
            for unit, spec, ln in plan:
                if unit != cur_unit:
                    cur_unit, tensors = unit, read_unit(unit)
                for r, piece in enumerate(M.tp_split(tensors[spec.name], spec.kind, tp, arch)):
                    digest = writers[r].write(ln, piece)
                    files[shard_file(r, stage)][ln] = {"shape": list(piece.shape), "dtype": str(piece.dtype),
                                                       "sha256": digest}
    return files


def _write_vision(names: list[str], get: Callable[[str], torch.Tensor], dtypes: dict[str, torch.dtype],
                  shapes: dict[str, tuple[int, ...]], out: Path) -> dict[str, Any]:
    table: dict[str, Any] = {}
    with StreamWriter(out / VISION_FILE, [(n, dtypes[n], shapes[n]) for n in names], {"format": "pt"}) as w:
        for n in names:
            t = get(n)
            table[n] = {"shape": list(t.shape), "dtype": str(t.dtype), "sha256": w.write(n, t)}
    return table


def _hf_plan(arch: LMArch, hf_dtypes: dict[str, torch.dtype], hf_shapes: dict[str, tuple[int, ...]],
             extra_lm_head: bool) -> list[tuple[str, str]]:
    """(unit, HF name) in export order: embed, layers, head (and a tied lm_head copy), vision."""
    plan = []
    for unit in M.units(arch):
        plan += [(unit, n) for n in M.hf_unit_names(arch, unit)]
    if extra_lm_head:
        plan.append(("embed", arch.names.lm_head))
    return plan


def _write_hf(arch: LMArch, read_unit: ReadUnit, plan: list[tuple[str, str]], dtypes: dict[str, torch.dtype],
              shapes: dict[str, tuple[int, ...]], vision: list[str], read_vision: Callable[[str], torch.Tensor],
              out: Path, max_shard_bytes: int) -> list[str]:
    """Write HF safetensors files of at most ``max_shard_bytes`` each (+ index when more than one)."""
    all_names = [n for _, n in plan] + vision
    units_of = {n: u for u, n in plan}
    groups: list[list[str]] = [[]]
    size = 0
    for n in all_names:
        nb = int(torch.Size(shapes[n]).numel()) * torch.empty((), dtype=dtypes[n]).element_size()
        if groups[-1] and size + nb > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += nb
    fnames = (["model.safetensors"] if len(groups) == 1 else
              [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
    weight_map: dict[str, str] = {}
    cur_unit, cur = None, {}
    for fname, names in zip(fnames, groups):
        with StreamWriter(out / fname, [(n, dtypes[n], shapes[n]) for n in names], {"format": "pt"}) as w:
            for n in names:
                if n in units_of:
                    u = units_of[n]
                    if u != cur_unit:
                        cur_unit, cur = u, M.canonical_to_hf(arch, u, read_unit(u))
                    t = cur[arch.names.embed] if n == arch.names.lm_head and arch.tie_embeddings else cur[n]
                else:
                    t = read_vision(n)
                w.write(n, t)
                weight_map[n] = fname
    if len(fnames) > 1:
        total = sum(int(torch.Size(shapes[n]).numel()) * torch.empty((), dtype=dtypes[n]).element_size()
                    for n in all_names)
        write_json_atomic(out / "model.safetensors.index.json", {"metadata": {"total_size": total},
                                                                  "weight_map": weight_map})
    return fnames


# ----------------------------------------------------------------------------------- public API
def _canon_dtypes_from_hf(arch: LMArch, dtypes, shapes) -> dict[str, torch.dtype]:
    meta = _meta_get(dtypes, shapes)
    return {k: v.dtype for unit in M.units(arch) for k, v in M.hf_to_canonical(arch, unit, meta).items()}


def hf_to_mcore(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, tp: int = 1, pp: int = 1,
                pipeline_layers: Sequence[int] | None = None, *,
                overwrite: bool = False) -> dict[str, Any]:
    """Convert an HF safetensors checkpoint to an mcore checkpoint at TP=``tp``, PP=``pp``;
    returns the manifest.

    ``pipeline_layers``: transformer layers per stage (None = even). An uneven split must be in
    megatron's form, first and last stage free and the middle stages even
    (megatron/core/transformer/transformer_block.py ``get_num_layers_to_build``); see
    :func:`~mixed_r1.models.config.resolve_pipeline_layers`. The manifest records it.
    """
    hf_dir = Path(hf_dir)
    cfg_path = hf_dir / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing HF config")
    cfg = read_json_file(cfg_path)
    arch = arch_from_hf_config(cfg)
    layers = arch.check_parallel(tp, pp, pipeline_layers)
    idx = HFIndex.scan(hf_dir)
    arch = resolve_hf_names(arch, idx.shapes)
    vision = _check_hf_tensors(arch, idx)
    get = _hf_reader(idx)
    canon_dtype = _canon_dtypes_from_hf(arch, idx.dtypes, idx.shapes)
    hf_names = [n for _, n in _hf_plan(arch, idx.dtypes, idx.shapes, False)]
    extra_lm_head = arch.tie_embeddings and arch.names.lm_head in idx.shapes
    if extra_lm_head:
        hf_names.append(arch.names.lm_head)
    with atomic_dir(out_dir, overwrite, fsync=True) as tmp:
        files = _write_mcore(arch, lambda u: M.hf_to_canonical(arch, u, get), canon_dtype, tmp, tp,
                             pp, layers)
        if vision:
            files[VISION_FILE] = _write_vision(vision, get, idx.dtypes, idx.shapes, tmp)
        (tmp / HF_SIDE_DIR).mkdir()
        side = _copy_side_files(hf_dir, tmp / HF_SIDE_DIR,
                                lambda n: n.endswith(".safetensors") or n == "model.safetensors.index.json"
                                or n.endswith((".bin", ".pt", ".pth", ".gguf")))
        man = _manifest(arch, cfg, tp, pp, layers, files, side,
                        {n: {"shape": list(idx.shapes[n]), "dtype": str(idx.dtypes[n])} for n in hf_names + vision})
        write_json_atomic(tmp / MANIFEST, man)
    return man


def _manifest(arch: LMArch, cfg: dict, tp: int, pp: int, layers: Sequence[int], files: dict,
              side: list[str], hf_tensors: dict) -> dict:
    return {"format": FORMAT, "architecture": arch.architecture, "model_type": arch.model_type, "tp": tp, "pp": pp,
            "vocab_size": arch.vocab_size, "padded_vocab_size": arch.padded_vocab_size(tp),
            "tie_embeddings": arch.tie_embeddings, "pipeline_layers": list(layers),
            "layer_ranges": [list(arch.layer_range(s, pp, layers)) for s in range(pp)],
            "hf_config": cfg, "hf_side_files": side, "hf_tensors": hf_tensors, "files": files}


def _parse_dtype(s: str) -> torch.dtype:
    return getattr(torch, s.removeprefix("torch."))


def mcore_to_hf(mcore_dir: str | os.PathLike, out_dir: str | os.PathLike,
                max_shard_bytes: int = 2 * 1024 ** 3, *, overwrite: bool = False) -> list[str]:
    """Convert an mcore checkpoint back to HF safetensors (+ its side files); returns the weight files."""
    mcore_dir = Path(mcore_dir)
    man = read_manifest(mcore_dir)
    hf_t = man["hf_tensors"]
    arch = resolve_hf_names(arch_from_hf_config(man["hf_config"]), hf_t)
    dtypes = {n: _parse_dtype(v["dtype"]) for n, v in hf_t.items()}
    shapes = {n: tuple(v["shape"]) for n, v in hf_t.items()}
    extra_lm_head = arch.tie_embeddings and arch.names.lm_head in hf_t
    plan = _hf_plan(arch, dtypes, shapes, extra_lm_head)
    vision = [n for n in hf_t if arch.is_vl and n.startswith(arch.names.vision_prefix)]
    read_unit = _mcore_unit_reader(mcore_dir, man, arch)
    with atomic_dir(out_dir, overwrite, fsync=True) as tmp:
        fnames = _write_hf(arch, read_unit, plan, dtypes, shapes, vision,
                           lambda n: read_verified(mcore_dir, man, VISION_FILE, n), tmp, max_shard_bytes)
        for name in man["hf_side_files"]:
            shutil.copy2(mcore_dir / HF_SIDE_DIR / name, tmp / name)
    return fnames


def reshard(mcore_dir: str | os.PathLike, out_dir: str | os.PathLike, tp: int, pp: int,
            pipeline_layers: Sequence[int] | None = None, *,
            overwrite: bool = False) -> dict[str, Any]:
    """Re-split an mcore checkpoint at TP=a/PP=b (any recorded split) into TP=``tp``/PP=``pp``
    directly (no HF round trip). ``pipeline_layers`` is the new per-stage split (None = even;
    rules as in :func:`hf_to_mcore`), independent of the source's split."""
    mcore_dir = Path(mcore_dir)
    man = read_manifest(mcore_dir)
    arch = arch_from_hf_config(man["hf_config"])
    layers = arch.check_parallel(tp, pp, pipeline_layers)
    src_pp, src_layers = man["pp"], manifest_pipeline_layers(man, arch)
    canon_dtype: dict[str, torch.dtype] = {}
    for unit in M.units(arch):
        stage = M.unit_stage(arch, unit, src_pp, src_layers)
        for spec in M.unit_specs(arch, unit):
            local = M.local_name(arch, spec.name, src_pp, src_layers)
            entry = man["files"][shard_file(0, stage)].get(local)
            if entry is None:
                raise CheckpointError(f"tensor {spec.name} is missing from {shard_file(0, stage)} in the manifest")
            canon_dtype[spec.name] = _parse_dtype(entry["dtype"])
    read_unit = _mcore_unit_reader(mcore_dir, man, arch)
    with atomic_dir(out_dir, overwrite, fsync=True) as tmp:
        files = _write_mcore(arch, read_unit, canon_dtype, tmp, tp, pp, layers)
        if VISION_FILE in man["files"]:
            names = list(man["files"][VISION_FILE])
            vd = {n: _parse_dtype(e["dtype"]) for n, e in man["files"][VISION_FILE].items()}
            vs = {n: tuple(e["shape"]) for n, e in man["files"][VISION_FILE].items()}
            files[VISION_FILE] = _write_vision(names, lambda n: read_verified(mcore_dir, man, VISION_FILE, n), vd, vs, tmp)
        shutil.copytree(mcore_dir / HF_SIDE_DIR, tmp / HF_SIDE_DIR)
        new = _manifest(arch, man["hf_config"], tp, pp, layers, files, man["hf_side_files"],
                        man["hf_tensors"])
        write_json_atomic(tmp / MANIFEST, new)
    return new


def iter_shard_tensors(mcore_dir: str | os.PathLike, tp_rank: int, pp_rank: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Verified (local name, tensor) pairs of one shard, in file order (for loading into GPTModel)."""
    mcore_dir = Path(mcore_dir)
    man = read_manifest(mcore_dir)
    file = shard_file(tp_rank, pp_rank)
    if file not in man["files"]:
        raise CheckpointError(f"{mcore_dir}: no shard {file} (checkpoint is tp={man['tp']} pp={man['pp']})")
    for name in man["files"][file]:
        yield name, read_verified(mcore_dir, man, file, name)

"""Read and write samples as JSONL or Parquet (the Parquet form is readable by HF ``datasets``).

Writes go to a temporary name in the target directory and are renamed into place. Image paths
are written relative to the output file's directory (``../images/a.png`` when the images lie
beside it), so a dataset moved together with its images keeps loading; on load, relative paths
resolve against the file's directory. Only an image on another drive (Windows) stays absolute.

Parquet columns: id, task_type, question, solution (text; a box as ``[x1, y1, x2, y2]``),
images (list<string>), options (list<string>, null when absent), messages (JSON text, null
when absent), source, meta (JSON text).

**Datasets as users have them** (:func:`load_samples`): besides a ``.jsonl``/``.parquet`` file, a
data source may be a directory written by ``datasets.Dataset.save_to_disk`` (read with
``datasets.load_from_disk``; a ``DatasetDict`` directory is refused naming its splits) or a
directory of Parquet shards (every ``*.parquet`` below it, in sorted path order, as the Hub lays
out ``data/train-00000-of-00004.parquet``). ``columns`` maps the sample's fields (``id``,
``task_type``, ``question``, ``solution``, ``images``, ``options``, ``messages``, ``source``,
``meta``) onto another schema's column names (``{"question": "query", "solution": "label",
"images": "image"}``); ``task_type`` is the task type of rows without one; a row without an id
gets ``<file stem>-<row>``. An image may be a path (relative to the data file's directory), the
bytes of an encoded image, an HF ``Image`` feature's ``{"bytes", "path"}`` struct, or a PIL image;
bytes and PIL images are written once, content-addressed, to :func:`image_cache_dir`
(``$MIXED_R1_CACHE/images``, default ``~/.cache/mixed-r1/images``), since the processor reads
paths. Errors name the file (the shard), the row and the user's column.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mixed_r1.atomic import atomic_path
from mixed_r1.tasks import SAMPLE_FIELDS

from .schema import DataError, Sample, format_box, sample_from_dict

ON_ERROR = ("raise", "skip")


@dataclass
class LoadReport:
    """What a load read, kept and skipped (with the reason and the place of every skip)."""

    rows: int = 0
    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def merge(self, other: "LoadReport") -> None:
        self.rows += other.rows
        self.loaded += other.loaded
        self.skipped.update(other.skipped)
        self.errors.extend(other.errors)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "loaded": self.loaded, "skipped": dict(self.skipped),
                "errors": list(self.errors)}


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise DataError(f"unknown data format {suffix!r} (use .jsonl or .parquet)", file=str(path))


def _rel_images(images: list[str], out_dir: Path) -> list[str]:
    out = []
    root = out_dir.resolve()
    for p in images:
        ap = Path(p).resolve()
        try:
            out.append(Path(os.path.relpath(ap, root)).as_posix())
        except ValueError:  # another drive: no relative path exists
            out.append(str(ap))
    return out


def _record(s: Sample, out_dir: Path, flat: bool) -> dict:
    solution = s.solution
    if s.task_type == "grounding":
        solution = format_box(solution) if flat else [float(v) for v in solution]
    rec = {"id": s.id, "task_type": s.task_type, "question": s.question, "solution": solution,
           "images": _rel_images(s.images, out_dir), "options": s.options,
           "messages": s.messages, "source": s.source, "meta": s.meta}
    if flat:
        rec["messages"] = json.dumps(s.messages) if s.messages is not None else None
        rec["meta"] = json.dumps(s.meta, sort_keys=True)
        rec["solution"] = str(solution)
    return rec


def write_samples(samples: Iterable[Sample], path: str | Path) -> Path:
    """Write samples to ``path`` (.jsonl or .parquet) atomically; returns the path."""
    path = Path(path)
    fmt = _format(path)
    samples = list(samples)
    with atomic_path(path) as tmp:
        if fmt == "jsonl":
            with open(tmp, "w", encoding="utf-8") as fh:
                for s in samples:
                    fh.write(json.dumps(_record(s, path.parent, flat=False), ensure_ascii=False))
                    fh.write("\n")
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = pa.schema([
                ("id", pa.string()), ("task_type", pa.string()), ("question", pa.string()),
                ("solution", pa.string()), ("images", pa.list_(pa.string())),
                ("options", pa.list_(pa.string())), ("messages", pa.string()),
                ("source", pa.string()), ("meta", pa.string()),
            ])
            rows = [_record(s, path.parent, flat=True) for s in samples]
            table = pa.Table.from_pylist(rows, schema=schema)
            pq.write_table(table, tmp)
    return path


def image_cache_dir() -> Path:
    """Where images that arrive as bytes are written: ``$MIXED_R1_CACHE/images``, else
    ``~/.cache/mixed-r1/images``."""
    root = os.environ.get("MIXED_R1_CACHE") or Path.home() / ".cache" / "mixed-r1"
    return Path(root) / "images"


def _image_bytes_path(data: bytes, err: Callable[[str], DataError]) -> str:
    """The cache path of an encoded image's bytes (written once, named by their sha256)."""
    import hashlib
    import io as _io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(_io.BytesIO(data)) as im:
            ext = (im.format or "png").lower()
    except (UnidentifiedImageError, OSError) as exc:
        raise err(f"image bytes are not a readable image: {exc}") from None
    out = image_cache_dir() / f"{hashlib.sha256(data).hexdigest()[:40]}.{ext}"
    if not out.is_file():
        with atomic_path(out) as tmp:
            tmp.write_bytes(data)
    return str(out)


def _image_path(value: object, err: Callable[[str], DataError]) -> object:
    """One image as a path string: a path stays (resolved later against the data file), bytes,
    an HF ``Image`` struct and a PIL image are written to the cache; anything else is returned
    unchanged for the schema to refuse."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        if value.get("bytes"):
            return _image_bytes_path(bytes(value["bytes"]), err)
        return value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _image_bytes_path(bytes(value), err)
    if hasattr(value, "save") and hasattr(value, "size"):  # a PIL image (decoded HF Image)
        import io as _io

        buf = _io.BytesIO()
        value.save(buf, format="PNG")
        return _image_bytes_path(buf.getvalue(), err)
    return value


def map_record(rec: object, *, columns: dict[str, str] | None = None,
               task_type: str | None = None, file: str | None = None, row: int | None = None,
               stem: str = "row") -> object:
    """``rec`` in the sample schema: ``columns`` (sample field -> the record's column) applied,
    ``task_type`` filled in where the record has none, an id made (``<stem>-<row>``) where it
    has none, images turned into paths (module docstring). A column ``columns`` names that the
    record lacks is a :class:`DataError` naming the column; non-dict records pass through for
    the schema to refuse."""
    if not isinstance(rec, dict):
        return rec
    columns = columns or {}
    out: dict = {}
    for field_ in SAMPLE_FIELDS:
        src = columns.get(field_, field_)
        if src in rec:
            out[field_] = rec[src]
        elif field_ in columns:
            raise DataError(f"no column '{src}' (mapped to {field_}); the row has "
                            f"{', '.join(map(str, rec)) or 'no columns'}", file=file, row=row,
                            key=src, reason="missing_field")
    if out.get("task_type") is None and task_type is not None:
        out["task_type"] = task_type
    if out.get("id") is None:
        out["id"] = f"{stem}-{row if row is not None else 0:06d}"
    images = out.get("images")
    if images is not None:
        col = columns.get("images", "images")

        def err(msg: str) -> DataError:
            return DataError(msg, file=file, row=row, key=col, reason="unreadable_image")

        many = isinstance(images, (list, tuple))
        conv = [_image_path(v, err) for v in (images if many else [images])]
        out["images"] = conv if many else conv[0]
    if out.get("solution") is not None and not isinstance(out["solution"], (str, list, tuple)):
        out["solution"] = str(out["solution"])  # a numeric label: the schema's solutions are text
    return out


def _hf_dataset_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a ``datasets.save_to_disk`` directory, images undecoded (their bytes/path)."""
    if (path / "dataset_dict.json").is_file():
        try:
            splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        except (OSError, ValueError, KeyError, TypeError):
            splits = []
        raise DataError(f"a DatasetDict directory: give one split's directory "
                        f"({', '.join(str(path / s) for s in splits) or 'its subdirectories'})",
                        file=str(path))
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 -- datasets/pyarrow raise many types for a bad dir
        raise DataError(f"unreadable datasets directory: {exc}", file=str(path)) from None
    for name, feat in ds.features.items():  # images as {bytes, path}: no PIL decode per row
        if isinstance(feat, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(getattr(feat, "feature", None), datasets.Image) or (
                isinstance(feat, list) and feat and isinstance(feat[0], datasets.Image)):
            ds = ds.cast_column(name, datasets.Sequence(datasets.Image(decode=False)))
    for row, rec in enumerate(ds, 1):
        yield row, rec


def data_sources(path: str | Path) -> list[tuple[Path, str]]:
    """The files a data source is read from, with their kind (``jsonl``, ``parquet``, ``hf``):
    the file itself, a ``save_to_disk`` directory, or a directory's Parquet shards."""
    path = Path(path)
    if path.is_file():
        return [(path, _format(path))]
    if not path.is_dir():
        raise DataError("data file does not exist", file=str(path))
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        return [(path, "hf")]
    shards = sorted(path.rglob("*.parquet"))
    if not shards:
        raise DataError("directory holds no dataset (expected a datasets.save_to_disk "
                        "directory or *.parquet shards)", file=str(path))
    return [(p, "parquet") for p in shards]


def iter_records(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield ``(row, raw record)`` from a JSONL or Parquet file; rows count from 1.

    A JSONL line that is not valid JSON is yielded as a :class:`DataError` instead of a record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("data file does not exist", file=str(path))
    if _format(path) == "jsonl":
        with open(path, encoding="utf-8") as fh:
            for row, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield row, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield row, DataError(f"invalid JSON: {exc}", file=str(path), row=row,
                                         reason="malformed")
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 -- pyarrow raises many types for a bad file
            raise DataError(f"unreadable Parquet file: {exc}", file=str(path)) from None
        for row, rec in enumerate(table.to_pylist(), 1):
            yield row, rec


def collect_rows(rows: Iterable[tuple[int, object]], to_samples: Callable[[int, object], list[Sample]],
                 on_error: str) -> tuple[list[Sample], LoadReport]:
    """Turn ``(row, record)`` pairs into samples with ``to_samples``; a :class:`DataError`
    (yielded as a record or raised) raises with ``on_error="raise"`` or is skipped and counted
    by reason with ``on_error="skip"``."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    rep = LoadReport()
    out: list[Sample] = []
    for row, rec in rows:
        rep.rows += 1
        try:
            if isinstance(rec, DataError):
                raise rec
            out.extend(to_samples(row, rec))
            rep.loaded += 1
        except DataError as exc:
            if on_error == "raise":
                raise
            rep.skipped[exc.reason] += 1
            rep.errors.append(str(exc))
    return out, rep


def load_samples(path: str | Path, *, on_error: str = "raise", check_images: bool = True,
                 report: LoadReport | None = None, columns: dict[str, str] | None = None,
                 task_type: str | None = None,
                 custom_tasks: Iterable[str] = ()) -> tuple[list[Sample], LoadReport]:
    """Load and validate every row of ``path``: a ``.jsonl``/``.parquet`` file, a
    ``datasets.save_to_disk`` directory or a directory of Parquet shards, with ``columns``
    mapping and a default ``task_type`` (module docstring).

    ``on_error="raise"``: the first bad row raises one :class:`DataError` naming file and row
    (and the user's column where ``columns`` renamed it). ``on_error="skip"``: bad rows are
    skipped and counted by reason in the returned report. ``custom_tasks``: task types user
    reward functions score (``reward.functions``; :func:`~mixed_r1.data.schema.sample_from_dict`).
    """
    custom_tasks = tuple(custom_tasks)
    bad = sorted(set(columns or {}) - set(SAMPLE_FIELDS))
    if bad:
        raise ValueError(f"columns: {', '.join(bad)} is not a sample field "
                         f"({', '.join(SAMPLE_FIELDS)})")
    shown = {k: v for k, v in (columns or {}).items() if k != v}  # field -> the user's column
    out: list[Sample] = []
    rep = LoadReport()
    for src, kind in data_sources(path):
        rows = _hf_dataset_rows(src) if kind == "hf" else iter_records(src)
        base = src if kind == "hf" else src.parent

        def to_samples(row: int, rec: object, src: Path = src, base: Path = base) -> list[Sample]:
            rec = map_record(rec, columns=columns, task_type=task_type, file=str(src), row=row,
                             stem=src.stem if src.is_file() else src.name)
            try:
                return [sample_from_dict(rec, base_dir=base, check_images=check_images,
                                         file=str(src), row=row, custom_tasks=custom_tasks)]
            except DataError as exc:
                if exc.key in shown:  # name the user's column, and what it was read as
                    raise DataError(f"{exc.detail} (read as the {exc.key})", file=exc.file,
                                    row=exc.row, key=shown[exc.key], reason=exc.reason) from None
                raise

        got, part = collect_rows(rows, to_samples, on_error)
        out.extend(got)
        rep.merge(part)
    if report is not None:
        report.merge(rep)
    return out, rep


def load_many(paths: Iterable[str | Path], **kwargs) -> tuple[list[Sample], LoadReport]:
    """Load several files in order into one list and one merged report."""
    total = LoadReport()
    out: list[Sample] = []
    for p in paths:
        samples, _ = load_samples(p, report=total, **kwargs)
        out.extend(samples)
    return out, total

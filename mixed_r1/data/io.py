"""Read and write samples as JSONL or Parquet (the Parquet form is readable by HF ``datasets``).

Writes go to a temporary name in the target directory and are renamed into place. Image paths
are written relative to the output file's directory (``../images/a.png`` when the images lie
beside it), so a dataset moved together with its images keeps loading; on load, relative paths
resolve against the file's directory. Only an image on another drive (Windows) stays absolute.

Parquet columns: id, task_type, question, solution (text; a box as ``[x1, y1, x2, y2]``),
images (list<string>), options (list<string>, null when absent), messages (JSON text, null
when absent), source, meta (JSON text).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from mixed_r1.atomic import atomic_path

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
                 report: LoadReport | None = None) -> tuple[list[Sample], LoadReport]:
    """Load and validate every row of ``path``.

    ``on_error="raise"``: the first bad row raises one :class:`DataError` naming file and row.
    ``on_error="skip"``: bad rows are skipped and counted by reason in the returned report.
    """
    path = Path(path)
    out, rep = collect_rows(
        iter_records(path),
        lambda row, rec: [sample_from_dict(rec, base_dir=path.parent, check_images=check_images,
                                           file=str(path), row=row)],
        on_error)
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

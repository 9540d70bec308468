"""Converters from common public layouts into the sample schema.

Every converter reads one file, builds raw records, validates each through the schema
(``on_error="raise"``: the first bad row raises naming file and row; ``"skip"``: skipped and
counted in the returned report) and returns ``(samples, report)``. Image paths resolve
against ``image_root`` (default: the input file's directory).

- ``llava``: LLaVA conversations JSON/JSONL (``image`` + ``conversations`` of human/gpt turns);
  one sample per human→gpt pair; task type inferred (yes/no answer → yes_no, ``A.``-style
  options with a letter answer → multiple_choice, else open_ended) unless given.
- ``chartqa``: ChartQA JSON (``imgname``, ``query``, ``label``) or CSV with those columns; the
  label is a string or a one-answer list (``["14"]``, as in the public Hugging Face copy, also
  as the text ``['14']`` a CSV export writes).
- ``refcoco``: JSON/JSONL of ``image``, ``expression`` (or ``sentence``/``sentences``/``refs``)
  and ``bbox``; ``box_format`` ``xyxy`` or ``xywh`` (COCO) and ``coords`` ``pixel``,
  ``norm`` (0..1) or ``norm1000`` (0..1000, Qwen2-VL style) → absolute-pixel ``xyxy``; a box
  outside its image by more than ``max(2, 0.01 * side)`` pixels (e.g. pixel boxes converted
  with ``coords="norm"``) is a ``bad_box`` row (:func:`to_pixel_xyxy`).
- ``math``: plain math JSONL: ``problem``/``question`` and ``answer``/``solution``; the gold is
  a GSM8K ``#### 42`` tail, else the last box of a MATH solution (``\\boxed{…}``, ``\\boxed x``,
  ``\\fbox{…}``, nested braces; MATH reference ``last_boxed_only_string``), else the whole text
  when it is a bare expression (prose without a box is a ``no_final_answer`` data error); then
  normalised as the MATH reference's ``strip_string`` does (:mod:`mixed_r1.rewards.latex`). A gold
  math-verify cannot parse is an ``unparseable_gold`` data error naming the row (schema check).

Image paths are stored relative to the output file by :func:`mixed_r1.data.io.write_samples`.
"""
from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from mixed_r1.rewards.latex import is_bare_expression, normalize_math_answer
from mixed_r1.rewards.latex import last_boxed as _last_boxed

from .io import LoadReport, collect_rows
from .schema import (LETTERS, DataError, Sample, check_box_in_image, format_box,
                     sample_from_dict)

COORDS = ("pixel", "norm", "norm1000")
BOX_FORMATS = ("xyxy", "xywh")


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a JSON array, a JSONL file or a CSV file (rows count from 1)."""
    if not path.is_file():
        raise DataError("input file does not exist", file=str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            for row, rec in enumerate(csv.DictReader(fh), 1):
                yield row, rec
        return
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" or text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON: {exc}", file=str(path)) from None
        if isinstance(data, dict):  # {"data": [...]} style wrappers
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise DataError("expected a JSON array of records", file=str(path))
        yield from enumerate(data, 1)
        return
    for row, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield row, json.loads(line)
            except json.JSONDecodeError as exc:
                yield row, DataError(f"invalid JSON: {exc}", file=str(path), row=row,
                                     reason="malformed")


def _convert(path: str | Path, build: Callable[[int, Any, Path], list[dict]], *,
             image_root: str | Path | None, on_error: str, check_images: bool
             ) -> tuple[list[Sample], LoadReport]:
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent

    def to_samples(row: int, rec: object) -> list[Sample]:
        if not isinstance(rec, dict):
            raise DataError(f"record is a {type(rec).__name__}, expected an object",
                            file=str(path), row=row, reason="malformed")
        try:
            raws = build(row, rec, root)
        except DataError as exc:
            if exc.row is None:  # raised by a builder: name the file and row
                raise DataError(exc.detail, file=str(path), row=row, key=exc.key,
                                reason=exc.reason) from None
            raise
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"cannot convert record: {exc!r}", file=str(path), row=row,
                            reason="malformed") from None
        return [sample_from_dict(raw, base_dir=root, check_images=check_images,
                                 file=str(path), row=row) for raw in raws]

    return collect_rows(_read_rows(path), to_samples, on_error)


def _need(rec: dict, *keys: str) -> Any:
    for k in keys:
        if rec.get(k) not in (None, ""):
            return rec[k]
    raise KeyError(" / ".join(keys))


# ------------------------------------------------------------------------ LLaVA
_OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s*(.+?)\s*$")


def _infer_llava(question: str, answer: str) -> tuple[str, str, list[str] | None, str]:
    a = answer.strip().rstrip(".")
    lines = question.splitlines()
    options, keep = [], []
    for line in lines:
        m = _OPTION_LINE.match(line)
        if m and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2))
        else:
            keep.append(line)
    if len(options) >= 2:
        letter = a.strip("().").upper()[:1]
        if letter in LETTERS[: len(options)] and (len(a.strip("().")) == 1
                                                   or a[1:2] in ".)"):
            text = "\n".join(k for k in keep if k.strip() and not k.lower().startswith(
                "answer with"))
            return "multiple_choice", text.strip(), options, letter
    if a.lower() in ("yes", "no"):
        return "yes_no", question, None, a.lower()
    return "open_ended", question, None, answer.strip()


def convert_llava(path: str | Path, *, image_root: str | Path | None = None,
                  task_type: str | None = None, source: str = "llava", on_error: str = "raise",
                  check_images: bool = True) -> tuple[list[Sample], LoadReport]:
    """LLaVA conversations → samples (see the module docstring)."""
    def build(row: int, rec: dict, root: Path) -> list[dict]:
        conv = _need(rec, "conversations")
        image = rec.get("image")
        images = [image] if isinstance(image, str) else list(image or [])
        out = []
        turns = [t for t in conv if t.get("from") in ("human", "user", "gpt", "assistant")]
        for j in range(0, len(turns) - 1, 2):
            h, g = turns[j], turns[j + 1]
            if h.get("from") not in ("human", "user") or g.get("from") not in ("gpt", "assistant"):
                raise DataError("conversations must alternate human/gpt turns",
                                key="conversations", reason="malformed")
            q = str(h["value"]).replace("<image>", "").strip()
            task, q2, options, sol = _infer_llava(q, str(g["value"]))
            if task_type is not None:
                task, q2, options, sol = task_type, q, None, str(g["value"]).strip()
            out.append({"id": f"{rec.get('id', row)}-{j // 2}", "task_type": task,
                        "question": q2, "solution": sol, "options": options,
                        "images": images, "source": source})
        if not out:
            raise DataError("no human/gpt pair in conversations", key="conversations",
                            reason="malformed")
        return out

    return _convert(path, build, image_root=image_root, on_error=on_error,
                    check_images=check_images)


# ------------------------------------------------------------------------ ChartQA
_LIST_TEXT_RE = re.compile(r"""^\[\s*(?:'([^']*)'|"([^"]*)")\s*\]$""")


def chartqa_label(label: Any) -> str:
    """The answer of a ChartQA ``label``: a string, or a list holding exactly one answer (the
    Hugging Face copy's form; its CSV text ``['14']`` too). Raises :class:`DataError` otherwise."""
    if isinstance(label, (list, tuple)):
        if len(label) != 1 or isinstance(label[0], (list, tuple, dict)) or label[0] is None:
            raise DataError(f"label {label!r} is not one answer", key="label", reason="malformed")
        label = label[0]
    text = str(label).strip()
    m = _LIST_TEXT_RE.match(text)
    if m:
        text = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
    if not text:
        raise DataError("label is empty", key="label", reason="missing_field")
    return text


def convert_chartqa(path: str | Path, *, image_root: str | Path | None = None,
                    source: str = "chartqa", on_error: str = "raise", check_images: bool = True
                    ) -> tuple[list[Sample], LoadReport]:
    """ChartQA JSON/CSV (``imgname``, ``query``, ``label``) → chart samples."""
    def build(row: int, rec: dict, root: Path) -> list[dict]:
        label = chartqa_label(_need(rec, "label", "answer"))
        return [{"id": str(rec.get("id") or f"{Path(path).stem}-{row}"), "task_type": "chart",
                 "question": _need(rec, "query", "question"), "solution": label,
                 "images": [_need(rec, "imgname", "image")], "source": source}]

    return _convert(path, build, image_root=image_root, on_error=on_error,
                    check_images=check_images)


# ------------------------------------------------------------------------ RefCOCO
def to_pixel_xyxy(box: list[float], *, box_format: str, coords: str,
                  width: int | None = None, height: int | None = None,
                  image: str | None = None) -> list[float]:
    """Convert a box to absolute-pixel ``[x1, y1, x2, y2]`` of a ``width x height`` image.

    ``xywh``: ``x2 = x + w``, ``y2 = y + h``. ``norm``: multiply x by W and y by H;
    ``norm1000``: multiply x by W/1000 and y by H/1000 (``width``/``height`` are required for
    these). Given ``width`` and ``height`` (pixels of the stored image, PIL's ``size``), the result
    must lie in the image within :func:`mixed_r1.data.schema.box_tolerance` pixels per side
    (``max(2, 0.01 * side)``), else :class:`DataError` ``bad_box`` on key ``bbox`` (pixel boxes
    read as ``norm`` land far outside); ``image`` only names it in that message.
    Raises ValueError for an unknown ``box_format``/``coords``, :class:`DataError` ``bad_box``
    for a box that is not four numbers.
    """
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box_format must be one of {BOX_FORMATS}, got {box_format!r}")
    if coords not in COORDS:
        raise ValueError(f"coords must be one of {COORDS}, got {coords!r}")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise DataError(f"box {box!r} is not four numbers", key="bbox", reason="bad_box")
    try:
        x1, y1, a, b = (float(v) for v in box)
    except (TypeError, ValueError):
        raise DataError(f"box {box!r} holds a non-number", key="bbox", reason="bad_box") from None
    x2, y2 = (x1 + a, y1 + b) if box_format == "xywh" else (a, b)
    if coords != "pixel":
        if width is None or height is None:
            raise ValueError(f"coords {coords!r} needs the image's width and height")
        scale = 1.0 if coords == "norm" else 1000.0
        x1, x2 = x1 / scale * width, x2 / scale * width
        y1, y2 = y1 / scale * height, y2 / scale * height
    out = [x1, y1, x2, y2]
    if width is not None and height is not None and all(math.isfinite(v) for v in out):
        try:
            check_box_in_image(out, width, height, image=image)
        except ValueError as exc:
            raise DataError(f"bbox {format_box(box)} read as {box_format} {coords}: {exc}; check "
                            "box_format and coords", key="bbox", reason="bad_box") from None
    return out


def convert_refcoco(path: str | Path, *, image_root: str | Path | None = None,
                    box_format: str = "xywh", coords: str = "pixel", source: str = "refcoco",
                    on_error: str = "raise", check_images: bool = True
                    ) -> tuple[list[Sample], LoadReport]:
    """RefCOCO-style referring expressions → grounding samples (one per expression).

    The box is converted with :func:`to_pixel_xyxy` against the image's pixel size (a header
    read: always for ``norm``/``norm1000``, for ``pixel`` when ``check_images``); a box outside
    its image beyond the tolerance is a ``bad_box`` row (raised naming file and row, or skipped
    and counted with ``on_error="skip"``).
    """
    from PIL import Image, UnidentifiedImageError

    def build(row: int, rec: dict, root: Path) -> list[dict]:
        image = _need(rec, "image", "file_name", "img_path")
        exprs = rec.get("expression") or rec.get("sentence") or rec.get("sentences") \
            or rec.get("refs")
        if isinstance(exprs, str):
            exprs = [exprs]
        exprs = [e["sent"] if isinstance(e, dict) else str(e) for e in (exprs or [])]
        if not exprs:
            raise KeyError("expression / sentence / sentences / refs")
        w = h = None
        ipath = root / image
        if coords != "pixel" or check_images:  # header read: the box is checked against it
            if not ipath.is_file():
                raise DataError(f"image {ipath} does not exist", key="images",
                                reason="missing_image")
            try:
                with Image.open(ipath) as im:
                    w, h = im.size
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"image {ipath} is unreadable: {exc}", key="images",
                                reason="unreadable_image") from None
        box = to_pixel_xyxy(_need(rec, "bbox", "box"), box_format=box_format, coords=coords,
                            width=w, height=h, image=str(ipath))
        rid = rec.get("id", rec.get("ref_id", row))
        return [{"id": f"{rid}-{k}", "task_type": "grounding",
                 "question": f"Locate {e.strip().rstrip('.')} in the image and give its "
                             "bounding box.",
                 "solution": box, "images": [image], "source": source,
                 "meta": {"expression": e}} for k, e in enumerate(exprs)]

    return _convert(path, build, image_root=image_root, on_error=on_error,
                    check_images=check_images)


# ------------------------------------------------------------------------ math
_UNESCAPED_DOLLAR_RE = re.compile(r"(?<!\\)\$")


def last_boxed(text: str) -> str | None:
    """Content of the last box (``\\boxed{…}``, ``\\boxed x``, ``\\fbox{…}``), or None
    (:func:`mixed_r1.rewards.latex.last_boxed`)."""
    return _last_boxed(text)


def extract_math_answer(answer: str) -> str:
    """The gold of a math answer/solution text, normalised (MATH reference conventions).

    GSM8K ``… #### 42`` → ``42``; MATH ``… \\boxed{x}`` / ``\\boxed x`` / ``\\fbox{x}`` → ``x``
    (the last box wins); else the text. Math ``$`` delimiters are dropped and the result is
    normalised as the MATH reference's ``strip_string`` does
    (:func:`mixed_r1.rewards.latex.normalize_math_answer`).
    """
    s = str(answer)
    if "####" in s:
        final = s.rsplit("####", 1)[1].strip().replace(",", "")
    else:
        boxed = _last_boxed(s)
        final = boxed if boxed is not None else s.strip()
    return normalize_math_answer(_UNESCAPED_DOLLAR_RE.sub("", final))


def has_final_answer(answer: str) -> bool:
    """A ``####`` tail, a closed box, or a text that is itself a bare expression (not prose)."""
    s = str(answer)
    return "####" in s or _last_boxed(s) is not None or is_bare_expression(s.strip())


def convert_math(path: str | Path, *, image_root: str | Path | None = None,
                 source: str = "math", on_error: str = "raise", check_images: bool = True
                 ) -> tuple[list[Sample], LoadReport]:
    """Plain math JSONL (``problem``/``question``, ``answer``/``solution``) → math samples.

    The report counts golds math-verify cannot parse under ``skipped["unparseable_gold"]`` and
    prose without a final answer under ``skipped["no_final_answer"]`` (rows named in ``errors``).
    """
    def build(row: int, rec: dict, root: Path) -> list[dict]:
        image = rec.get("image") or rec.get("images")
        images = [image] if isinstance(image, str) else list(image or [])
        raw = _need(rec, "answer", "solution")
        if not has_final_answer(raw):
            raise DataError(f"solution {str(raw)[:80]!r} has no \\boxed{{…}} or #### answer and is "
                            "not a bare expression", key="solution", reason="no_final_answer")
        return [{"id": str(rec.get("id") or f"{Path(path).stem}-{row}"), "task_type": "math",
                 "question": _need(rec, "problem", "question"),
                 "solution": extract_math_answer(raw),
                 "images": images, "source": rec.get("source") or source}]

    return _convert(path, build, image_root=image_root, on_error=on_error,
                    check_images=check_images)


CONVERTERS = {"llava": convert_llava, "chartqa": convert_chartqa, "refcoco": convert_refcoco,
              "math": convert_math}

"""One sample schema for every Mixed-R1 task type, and its validation.

A :class:`Sample` is ``id, task_type, images, question, messages, solution, options, source,
meta``. The solution is a string for every task except ``grounding``, where it is a box
``[x1, y1, x2, y2]`` of four finite floats in the original image's absolute pixels with
``x1 < x2`` and ``y1 < y2``. The pixels are those of the stored first image as PIL reads it
(``Image.open(path).size``, no EXIF rotation; pixel-edge coordinates, so a box may reach
``x2 = W``, ``y2 = H``); the processor's resize is applied later
(:func:`mixed_r1.data.prompts.model_frame_sample`). When images are checked the box must lie
in that ``W x H`` image, with :func:`box_tolerance` pixels of slack on each side
(:func:`check_box_in_image`), else the row is a ``bad_box`` data error. A multiple-choice
solution is the letter of one of ``options`` (A, B, C, ...); an option's text is accepted on
input and turned into its letter. A math solution must be a gold math-verify parses to an
expression (checked in math-verify's time-limited child process,
:func:`mixed_r1.rewards.math.gold_error`); otherwise the row is an ``unparseable_gold`` data
error, never a gold that silently scores every answer 0.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection

from mixed_r1.tasks import TASK_TYPES

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class DataError(ValueError):
    """A user-caused data problem; the message names the file, the row and the key."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 key: str | None = None, reason: str = "invalid"):
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.file, self.row, self.key, self.reason = file, row, key, reason
        self.detail = message


@dataclass
class Sample:
    """One training/eval sample (see the module docstring for the rules)."""

    id: str
    task_type: str
    question: str
    solution: Any
    images: list[str] = field(default_factory=list)
    options: list[str] | None = None
    messages: list[dict] | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def solution_text(self) -> str:
        """The solution as the text an ideal completion's answer would contain."""
        if self.task_type == "grounding":
            return format_box(self.solution)
        return str(self.solution)


def format_box(box) -> str:
    """``[x1, y1, x2, y2]`` with integers where exact, else up to 2 decimals."""
    def f(v: float) -> str:
        v = float(v)
        return str(int(v)) if v == int(v) else f"{v:.2f}".rstrip("0").rstrip(".")
    return "[" + ", ".join(f(v) for v in box) + "]"


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_TEXT = re.compile(rf"^\s*[\[(]?\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]?\s*$")


def parse_box(value: Any) -> list[float]:
    """A box from a list/tuple of 4 numbers or its text ``[x1, y1, x2, y2]``; raises ValueError.

    Rule: four finite numbers with ``x1 < x2`` and ``y1 < y2``.
    """
    if isinstance(value, str):
        m = _BOX_TEXT.match(value)
        if not m:
            raise ValueError(f"box {value!r} is not four numbers [x1, y1, x2, y2]")
        nums = [float(g) for g in m.groups()]
    elif isinstance(value, (list, tuple)):
        if len(value) != 4:
            raise ValueError(f"box {value!r} has {len(value)} numbers, expected 4")
        nums = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"box {value!r} holds a non-number {v!r}")
            nums.append(float(v))
    else:
        raise ValueError(f"box {value!r} is not a list of 4 numbers")
    if not all(math.isfinite(v) for v in nums):
        raise ValueError(f"box {nums} holds a non-finite number")
    x1, y1, x2, y2 = nums
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box {nums} needs x1 < x2 and y1 < y2")
    return nums


BOX_TOLERANCE_PX = 2.0
"""The least slack, in pixels, a box may reach past each image edge (:func:`box_tolerance`)."""
BOX_TOLERANCE_FRAC = 0.01
"""The slack as a fraction of the image side, when larger than :data:`BOX_TOLERANCE_PX`."""


def box_tolerance(side: float) -> float:
    """The slack in pixels a box may reach past an image side of ``side`` pixels:
    ``max(2, 0.01 * side)``.

    It absorbs rounding in converted boxes (a 0..1000 box is quantised to ``side / 1000``
    pixels; COCO float boxes can end a fraction past the edge) and the inclusive ``x2 = W - 1``
    versus edge ``x2 = W`` conventions, while a box in the wrong units (pixel numbers read as
    0..1 fractions, so scaled by ``W``) lies far outside.
    """
    return max(BOX_TOLERANCE_PX, BOX_TOLERANCE_FRAC * float(side))


def check_box_in_image(box, width: int, height: int, image: str | None = None) -> None:
    """Raise ValueError when ``[x1, y1, x2, y2]`` (absolute pixels) lies outside a
    ``width x height`` image by more than :func:`box_tolerance` of that side: every x must be in
    ``[-tx, width + tx]`` and every y in ``[-ty, height + ty]``. A box within the tolerance is
    accepted as it is (not clipped). ``image`` (its path) only names it in the message."""
    x1, y1, x2, y2 = (float(v) for v in box)
    tx, ty = box_tolerance(width), box_tolerance(height)
    if (min(x1, x2) < -tx or max(x1, x2) > width + tx
            or min(y1, y2) < -ty or max(y1, y2) > height + ty):
        name = f" {image}" if image else ""
        raise ValueError(f"box {format_box([x1, y1, x2, y2])} lies outside its {width}x{height} "
                         f"image{name} (allowed: x in [{-tx:g}, {width + tx:g}], "
                         f"y in [{-ty:g}, {height + ty:g}] pixels)")


def _mc_letter(solution: Any, options: list[str]) -> str:
    sol = str(solution).strip()
    letters = LETTERS[: len(options)]
    cand = sol.strip("().").upper()
    if len(cand) == 1 and cand in letters:
        return cand
    for i, opt in enumerate(options):
        if sol.lower() == str(opt).strip().lower():
            return letters[i]
    raise ValueError(f"solution {sol!r} is not among the options {list(letters)} / {options}")


def sample_from_dict(d: dict, *, base_dir: str | Path | None = None, check_images: bool = True,
                     file: str | None = None, row: int | None = None,
                     custom_tasks: Collection[str] = ()) -> Sample:
    """Validate a raw record and build a :class:`Sample`; raises :class:`DataError`.

    Relative image paths are resolved against ``base_dir`` (see :func:`_resolve_image`). With
    ``check_images`` every image must exist and be decodable by PIL (header read), and a
    grounding box must lie in its first image's ``W x H`` pixels within :func:`box_tolerance`
    (:func:`check_box_in_image`; reason ``bad_box``). Without it the box is not checked
    against any image. ``custom_tasks``: task types a user reward function scores
    (``reward.functions``): accepted besides the built-in ones, their solution kept as given (a
    string, or a JSON list/object) for the function to judge.
    """
    def err(msg: str, key: str | None, reason: str) -> DataError:
        return DataError(msg, file=file, row=row, key=key, reason=reason)

    if not isinstance(d, dict):
        raise err(f"record is a {type(d).__name__}, expected an object", None, "malformed")
    for key in ("id", "task_type", "solution"):
        if d.get(key) is None:
            raise err("missing required field", key, "missing_field")
    task = str(d["task_type"])
    known = TASK_TYPES + tuple(t for t in custom_tasks if t not in TASK_TYPES)
    if task not in known:
        raise err(f"unknown task type {task!r} (known: {', '.join(known)}; a new task type "
                  "needs a reward: reward.functions)", "task_type", "unknown_task_type")
    messages = d.get("messages")
    if isinstance(messages, str):
        try:
            messages = json.loads(messages) if messages else None
        except json.JSONDecodeError as exc:
            raise err(f"messages is not valid JSON: {exc}", "messages", "malformed") from None
    question = d.get("question")
    if question is None and messages:
        question = next((_text_of(m) for m in messages if m.get("role") == "user"), None)
    if question is None or not str(question).strip():
        raise err("missing question (or user message)", "question", "missing_field")
    images = d.get("images") or []
    if isinstance(images, str):
        images = [images]
    if not isinstance(images, (list, tuple)) or not all(isinstance(p, str) for p in images):
        raise err(f"images must be a list of paths, got {images!r}", "images", "malformed")
    resolved = [_resolve_image(p, base_dir) for p in images]
    sizes = [_check_image(p, err) for p in resolved] if check_images else []
    options = d.get("options")
    if options is not None and len(options) == 0:
        options = None
    if options is not None:
        options = [str(o) for o in options]
    solution = d["solution"]
    if task in custom_tasks:  # the user's function judges it
        if not isinstance(solution, (list, dict)):
            solution = str(solution)
    elif task == "grounding":
        try:
            solution = parse_box(solution)
            if sizes:  # the box is in the first image's pixels (see the module docstring)
                check_box_in_image(solution, *sizes[0], image=resolved[0])
        except ValueError as exc:
            raise err(str(exc), "solution", "bad_box") from None
    elif task == "multiple_choice":
        if not options:
            raise err("multiple-choice sample has no options", "options", "missing_field")
        try:
            solution = _mc_letter(solution, options)
        except ValueError as exc:
            raise err(str(exc), "solution", "solution_not_in_options") from None
    else:
        if isinstance(solution, float) and solution == int(solution):
            solution = int(solution)
        solution = str(solution)
        if task == "yes_no" and solution.strip().lower() not in ("yes", "no"):
            raise err(f"yes/no solution {solution!r} is neither yes nor no", "solution",
                      "bad_solution")
        if task == "math":
            from mixed_r1.rewards.math import gold_error  # light: no torch

            problem = gold_error(solution)
            if problem is not None:
                raise err(f"math solution {solution!r}: {problem}", "solution", "unparseable_gold")
    meta = d.get("meta") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta) if meta else {}
        except json.JSONDecodeError as exc:
            raise err(f"meta is not valid JSON: {exc}", "meta", "malformed") from None
    return Sample(id=str(d["id"]), task_type=task, question=str(question), solution=solution,
                  images=list(resolved), options=options, messages=messages,
                  source=str(d.get("source") or ""), meta=dict(meta))


def _resolve_image(path: str, base_dir: str | Path | None) -> str:
    """A relative image path joined to ``base_dir``; one that climbs out of it (``../``) is
    resolved, so ``out/../images/a.png`` reads back as the image's real path."""
    if base_dir is None or Path(path).is_absolute():
        return path
    joined = Path(base_dir) / path
    return str(joined.resolve() if ".." in Path(path).parts else joined)


def _text_of(message: dict) -> str | None:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(c.get("text", "") for c in content if isinstance(c, dict)
                        and c.get("type") == "text") or None
    return None


def _check_image(path: str, err) -> tuple[int, int]:
    """``(width, height)`` of an existing image PIL can identify (header read, no decode)."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise err(f"image {path} does not exist", "images", "missing_image")
    try:
        with Image.open(path) as im:
            return im.size  # header parsed
    except (UnidentifiedImageError, OSError) as exc:
        raise err(f"image {path} is unreadable: {exc}", "images", "unreadable_image") from None

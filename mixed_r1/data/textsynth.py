"""An offline TEXT mixed set for text-only LMs (SmolLM2, Llama / Qwen2): every item has
``images=[]`` and an answer the generator computes itself (no knowledge base, no network).

Task types (:data:`TEXT_TASK_TYPES`) and their items:

- ``math``: arithmetic ``What is 17 + 25?`` (``+``, ``-``, ``×``, ``÷`` with an integer
  quotient; a difference is never negative) and linear equations ``Solve for x: 3x + 4 = 19``
  with an integer root; the gold is a plain integer (``"42"``), which math-verify parses
  (:func:`mixed_r1.rewards.math.gold_error`). ``meta``: ``a, op, b``, or ``a, b, c`` of
  ``ax + b = c``.
- ``multiple_choice``: four distinct numeric options, exactly one correct: the largest /
  smallest number, the even / odd one, the one greater / less than a threshold, the value of an
  arithmetic expression, or a unit conversion (``How many minutes are in 3 hours?``, from the
  fixed factors of :data:`UNIT_FACTORS`). The gold is the correct option's letter; correct
  letters are spread evenly over A-D. ``meta`` holds what the answer is computed from.
- ``yes_no``: ``Is 47 greater than 38?``, ``Is 15 an even number?``, ``Is 3 × 4 equal to 12?``,
  ``Is 24 divisible by 6?``; exactly ``ceil(n/2)`` yes and ``floor(n/2)`` no labels (shuffled).
- ``chart``: a chart given as a small table of 3-5 rows (a markdown table or ``name: value``
  lines) inside the question text, and a question whose answer is a number read from or
  computed on it (a named row's value, the largest / smallest value, a difference, the sum);
  the gold is that integer. ``meta["table"]`` holds the title, labels and values.

Difficulty: each task's items are 60 % ``easy`` (small numbers, one operation), 30 % ``medium``
(two-digit operands) and 10 % ``hard`` (larger operands, sums and differences over a table),
exact counts by largest remainder; ``meta["difficulty"]`` names it. The mix is meant to give a
135M instruct model (SmolLM2-135M-Instruct) a non-zero but unsaturated pass rate per task.

Determinism: each task has its own ``random.Random(f"{seed}-text-{task}")``, so the output is a
function of ``(seed, sizes)`` alone: the same call writes byte-identical files.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mixed_r1.atomic import atomic_path

from .io import write_samples
from .schema import LETTERS, Sample
from .synth import CHART_LABELS, CHART_TITLES

TEXT_TASK_TYPES = ("math", "multiple_choice", "yes_no", "chart")
DIFFICULTY_MIX = (("easy", 0.6), ("medium", 0.3), ("hard", 0.1))
SOURCE = "synth/text"
# (unit, smaller unit, how many smaller units make one unit): definitions, not trivia
UNIT_FACTORS = (("hour", "minutes", 60), ("minute", "seconds", 60), ("day", "hours", 24),
                ("week", "days", 7), ("year", "months", 12), ("metre", "centimetres", 100),
                ("kilogram", "grams", 1000), ("kilometre", "metres", 1000))


@dataclass
class TextSynthConfig:
    """Items per text task type (0 skips a task), the seed and the output format."""

    seed: int = 0
    sizes: dict = field(default_factory=lambda: {t: 200 for t in TEXT_TASK_TYPES})
    fmt: str = "jsonl"  # jsonl | parquet


def _spread(rng: random.Random, n: int, weights) -> list:
    """``n`` labels in the given proportions (largest remainder), shuffled."""
    raw = [(label, n * w) for label, w in weights]
    counts = {label: int(x) for label, x in raw}
    by_rest = sorted(raw, key=lambda lx: -(lx[1] - int(lx[1])))
    for label, _ in by_rest[: n - sum(counts.values())]:
        counts[label] += 1
    out = [label for label, _ in weights for _ in range(counts[label])]
    rng.shuffle(out)
    return out


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "×":
        return a * b
    if op == "÷":
        if b == 0 or a % b:
            raise ValueError(f"{a} ÷ {b} is not an integer")
        return a // b
    raise ValueError(f"unknown operator {op!r}")


def _arith(rng: random.Random, level: str) -> tuple[int, str, int]:
    """``(a, op, b)`` with an integer, non-negative value; operand sizes by ``level``."""
    op = rng.choice("+-×÷")
    if op in "+-":
        lo, hi = {"easy": (1, 20), "medium": (10, 99), "hard": (100, 999)}[level]
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and a < b:
            a, b = b, a
        return a, op, b
    if op == "×":
        a, b = {"easy": lambda: (rng.randint(2, 9), rng.randint(2, 9)),
                "medium": lambda: (rng.randint(11, 30), rng.randint(2, 9)),
                "hard": lambda: (rng.randint(11, 25), rng.randint(11, 25))}[level]()
        return a, op, b
    b, q = {"easy": lambda: (rng.randint(2, 9), rng.randint(2, 9)),
            "medium": lambda: (rng.randint(2, 9), rng.randint(10, 30)),
            "hard": lambda: (rng.randint(11, 25), rng.randint(11, 40))}[level]()
    return b * q, op, b


def _sample(task: str, i: int, question: str, solution: str, meta: dict,
            options: list[str] | None = None) -> Sample:
    return Sample(id=f"text_{task}-{i:05d}", task_type=task, question=question,
                  solution=solution, images=[], options=options, source=SOURCE, meta=meta)


# ------------------------------------------------------------------------------------ math
def _linear(rng: random.Random, level: str) -> tuple[int, int, int, int]:
    """``(a, b, c, x)`` with ``a·x + b = c`` and an integer root ``x``."""
    if level == "easy":
        a, x, b = 1, rng.randint(1, 15), rng.randint(1, 15)
    elif level == "medium":
        a, x, b = rng.randint(2, 5), rng.randint(1, 10), rng.randint(1, 20)
    else:
        a, x, b = rng.randint(3, 9), rng.randint(2, 12), -rng.randint(1, 20)
    return a, b, a * x + b, x


def linear_text(a: int, b: int, c: int) -> str:
    """``ax + b = c`` as the question writes it: ``x + 7 = 12``, ``3x - 4 = 11``."""
    return f"{'' if a == 1 else a}x {'+' if b >= 0 else '-'} {abs(b)} = {c}"


def text_math(n: int, rng: random.Random) -> list[Sample]:
    """``n`` math items: a third linear equations, the rest arithmetic (module doc)."""
    out = []
    for i, level in enumerate(_spread(rng, n, DIFFICULTY_MIX)):
        if rng.random() < 1 / 3:
            a, b, c, x = _linear(rng, level)
            q = f"Solve for x: {linear_text(a, b, c)}"
            meta = {"kind": "linear", "difficulty": level, "a": a, "b": b, "c": c}
            gold = x
        else:
            a, op, b = _arith(rng, level)
            q = f"What is {a} {op} {b}?"
            meta = {"kind": "arithmetic", "difficulty": level, "a": a, "op": op, "b": b}
            gold = _apply(a, op, b)
        out.append(_sample("math", i, q, str(gold), meta))
    return out


# ------------------------------------------------------------------------- multiple choice
def _distinct(rng: random.Random, k: int, lo: int, hi: int) -> list[int]:
    return rng.sample(range(lo, hi + 1), k)


_NUM_RANGE = {"easy": (1, 30), "medium": (10, 99), "hard": (100, 999)}


def _numeric_distractors(rng: random.Random, value: int, k: int) -> list[int]:
    """``k`` distinct plausible wrong values near ``value`` (never negative or equal to it)."""
    pool = {value + d for d in (-10, -2, -1, 1, 2, 10, 11, -11)} | {value * 2, value // 2}
    pool = sorted(v for v in pool if v >= 0 and v != value)
    return rng.sample(pool, k)


def _mc_item(rng: random.Random, level: str) -> tuple[str, int, list[int], dict]:
    """``(question, correct value, 3 wrong values, meta)``."""
    kind = rng.choice(("largest", "smallest", "even", "odd", "greater_than", "less_than",
                       "arithmetic", "unit"))
    lo, hi = _NUM_RANGE[level]
    meta: dict = {"kind": kind, "difficulty": level}
    if kind in ("largest", "smallest"):
        nums = _distinct(rng, 4, lo, hi)
        best = max(nums) if kind == "largest" else min(nums)
        return (f"Which number is the {kind}?", best, [v for v in nums if v != best], meta)
    if kind in ("even", "odd"):
        want = 0 if kind == "even" else 1
        right = [v for v in range(lo, hi + 1) if v % 2 == want]
        wrong = [v for v in range(lo, hi + 1) if v % 2 != want]
        return (f"Which of these numbers is {kind}?", rng.choice(right), rng.sample(wrong, 3),
                meta)
    if kind in ("greater_than", "less_than"):
        t = rng.randint(lo + 3, hi - 3)
        below, above = list(range(lo, t)), list(range(t + 1, hi + 1))
        if kind == "greater_than":
            best, others = rng.choice(above), rng.sample(below, 3)
        else:
            best, others = rng.choice(below), rng.sample(above, 3)
        meta["threshold"] = t
        word = "greater" if kind == "greater_than" else "less"
        return f"Which number is {word} than {t}?", best, others, meta
    if kind == "arithmetic":
        a, op, b = _arith(rng, level)
        value = _apply(a, op, b)
        meta.update(a=a, op=op, b=b)
        return f"What is {a} {op} {b}?", value, _numeric_distractors(rng, value, 3), meta
    unit, small, factor = rng.choice(UNIT_FACTORS)
    k = rng.randint(*{"easy": (1, 5), "medium": (6, 12), "hard": (13, 40)}[level])
    meta.update(quantity=k, unit=unit, to_unit=small)
    value = k * factor
    wrong = {k * f for _, _, f in UNIT_FACTORS if f != factor} | {value + factor, value - factor,
                                                                  k + factor, factor}
    wrong = sorted(v for v in wrong if v > 0 and v != value)
    plural = unit if k == 1 else unit + "s"
    return f"How many {small} are in {k} {plural}?", value, rng.sample(wrong, 3), meta


def text_multiple_choice(n: int, rng: random.Random) -> list[Sample]:
    """``n`` four-option items with the correct letters spread evenly over A-D (module doc)."""
    levels = _spread(rng, n, DIFFICULTY_MIX)
    positions = _spread(rng, n, [(j, 0.25) for j in range(4)])  # correct letters spread evenly
    out = []
    for i, (level, pos) in enumerate(zip(levels, positions)):
        q, value, wrong, meta = _mc_item(rng, level)
        rng.shuffle(wrong)
        options = [str(v) for v in wrong[:pos] + [value] + wrong[pos:]]
        out.append(_sample("multiple_choice", i, q, LETTERS[pos], meta, options))
    return out


# ---------------------------------------------------------------------------------- yes/no
def _yes_no_item(rng: random.Random, level: str, yes: bool) -> tuple[str, dict]:
    kind = rng.choice(("greater", "less", "parity", "equation", "divisible"))
    lo, hi = _NUM_RANGE[level]
    meta: dict = {"kind": kind, "difficulty": level}
    if kind in ("greater", "less"):
        a, b = _distinct(rng, 2, lo, hi)
        if (a > b) != (yes == (kind == "greater")):
            a, b = b, a
        meta.update(a=a, b=b)
        return f"Is {a} {'greater' if kind == 'greater' else 'less'} than {b}?", meta
    if kind == "parity":
        v = rng.randint(lo, hi)
        word = rng.choice(("even", "odd"))
        if (v % 2 == 0) != (yes == (word == "even")):
            v += 1
        meta.update(n=v, parity=word)
        return f"Is {v} an {word} number?", meta
    if kind == "equation":
        a, op, b = _arith(rng, level)
        value = _apply(a, op, b)
        claimed = value if yes else rng.choice(_numeric_distractors(rng, value, 3))
        meta.update(a=a, op=op, b=b, claimed=claimed)
        return f"Is {a} {op} {b} equal to {claimed}?", meta
    d = rng.randint(2, 9) if level != "hard" else rng.randint(11, 19)
    q = rng.randint(2, 12) if level == "easy" else rng.randint(5, 30)
    v = d * q + (0 if yes else rng.randint(1, d - 1))
    meta.update(a=v, b=d)
    return f"Is {v} divisible by {d}?", meta


def text_yes_no(n: int, rng: random.Random) -> list[Sample]:
    """``n`` yes/no items, ``ceil(n/2)`` of them true (module doc)."""
    levels = _spread(rng, n, DIFFICULTY_MIX)
    labels = ["yes"] * ((n + 1) // 2) + ["no"] * (n // 2)
    rng.shuffle(labels)
    out = []
    for i, (level, label) in enumerate(zip(levels, labels)):
        q, meta = _yes_no_item(rng, level, label == "yes")
        out.append(_sample("yes_no", i, q, label, meta))
    return out


# ----------------------------------------------------------------------------------- chart
def render_table(table: dict, style: str) -> str:
    """A table as text: ``markdown`` (``| name | value |`` rows) or ``lines`` (``name: value``)."""
    rows = list(zip(table["labels"], table["values"]))
    if style == "markdown":
        return "\n".join(["| name | value |", "| --- | --- |"]
                         + [f"| {lab} | {v} |" for lab, v in rows])
    if style == "lines":
        return "\n".join(f"{lab}: {v}" for lab, v in rows)
    raise ValueError(f"unknown table style {style!r}")


_CHART_KINDS = {"easy": ("value", "max"), "medium": ("value", "min", "diff"),
                "hard": ("diff", "range", "sum")}


def _chart_question(rng: random.Random, table: dict, level: str) -> tuple[str, int, dict, str]:
    """``(kind, answer, meta extras, question)``."""
    labels, values = table["labels"], table["values"]
    kind = rng.choice(_CHART_KINDS[level])
    if kind == "value":
        j = rng.randrange(len(labels))
        return kind, values[j], {"row": labels[j]}, f"What is the value of {labels[j]}?"
    if kind == "max":
        return kind, max(values), {}, "What is the largest value in the table?"
    if kind == "min":
        return kind, min(values), {}, "What is the smallest value in the table?"
    if kind == "diff":
        a, b = rng.sample(range(len(labels)), 2)
        if values[a] < values[b]:
            a, b = b, a
        return (kind, values[a] - values[b], {"rows": [labels[a], labels[b]]},
                f"How much larger is the value of {labels[a]} than the value of {labels[b]}?")
    if kind == "range":
        return (kind, max(values) - min(values), {},
                "What is the difference between the largest and the smallest value?")
    return kind, sum(values), {}, "What is the sum of all the values in the table?"


def text_chart(n: int, rng: random.Random) -> list[Sample]:
    """``n`` table questions: 3 rows (easy), 3-4 (medium), 4-5 (hard); distinct values 1-30
    (easy) or 1-99, so the largest and smallest rows are unique (module doc)."""
    out = []
    for i, level in enumerate(_spread(rng, n, DIFFICULTY_MIX)):
        k = {"easy": 3, "medium": rng.randint(3, 4), "hard": rng.randint(4, 5)}[level]
        hi = 30 if level == "easy" else 99
        table = {"title": rng.choice(CHART_TITLES), "labels": rng.sample(CHART_LABELS, k),
                 "values": rng.sample(range(1, hi + 1), k)}  # distinct: max/min unique
        style = rng.choice(("markdown", "lines"))
        kind, value, extra, ask = _chart_question(rng, table, level)
        q = (f"The table below shows {table['title'].lower()}.\n\n"
             f"{render_table(table, style)}\n\n{ask}")
        meta = {"kind": kind, "difficulty": level, "table": table, "style": style, **extra}
        out.append(_sample("chart", i, q, str(value), meta))
    return out


_BUILDERS: dict[str, Callable[[int, random.Random], list[Sample]]] = {
    "math": text_math, "multiple_choice": text_multiple_choice, "yes_no": text_yes_no,
    "chart": text_chart}


def text_samples(sizes: dict[str, int], seed: int = 0) -> list[Sample]:
    """The text mixed set in memory: ``sizes[task]`` items of each text task type, in the order
    of :data:`TEXT_TASK_TYPES` (rules in the module doc). ValueError for an unknown task type
    or a negative size."""
    unknown = set(sizes) - set(TEXT_TASK_TYPES)
    if unknown:
        raise ValueError(f"the text set has no task types {sorted(unknown)} "
                         f"(text task types: {', '.join(TEXT_TASK_TYPES)})")
    samples: list[Sample] = []
    for task in TEXT_TASK_TYPES:
        n = int(sizes.get(task, 0))
        if n < 0:
            raise ValueError(f"size for {task} must be >= 0, got {n}")
        if n:
            samples.extend(_BUILDERS[task](n, random.Random(f"{seed}-text-{task}")))
    return samples


def synthesize_text(out_dir: str | Path, config: TextSynthConfig | None = None, *,
                    overwrite: bool = False) -> Path:
    """Write the text mixed set as ``<out_dir>/text.<fmt>`` and ``text_manifest.json`` (seed,
    counts per task, kind, difficulty and label); returns the dataset file's path. Both are
    written atomically, the dataset first. An existing ``text.<fmt>`` or ``text_manifest.json``
    raises FileExistsError unless ``overwrite`` (other files in ``out_dir`` are left alone)."""
    cfg = config or TextSynthConfig()
    if cfg.fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be jsonl or parquet, got {cfg.fmt!r}")
    out = Path(out_dir)
    for name in (f"text.{cfg.fmt}", "text_manifest.json"):
        if (out / name).exists() and not overwrite:
            raise FileExistsError(f"{out / name} already exists (pass --overwrite to replace "
                                  "it)")
    samples = text_samples(cfg.sizes, cfg.seed)
    path = write_samples(samples, out / f"text.{cfg.fmt}")
    summary: dict = {"seed": cfg.seed, "file": path.name, "counts": {}}
    for task in TEXT_TASK_TYPES:
        rows = [s for s in samples if s.task_type == task]
        summary["counts"][task] = {
            "total": len(rows),
            "kind": _count(s.meta["kind"] for s in rows),
            "difficulty": _count(s.meta["difficulty"] for s in rows),
            "solution": _count(s.solution for s in rows) if task in ("yes_no", "multiple_choice")
            else None}
    with atomic_path(out / "text_manifest.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return path


def _count(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return dict(sorted(out.items()))


__all__ = ["TEXT_TASK_TYPES", "DIFFICULTY_MIX", "UNIT_FACTORS", "TextSynthConfig",
           "linear_text", "render_table", "synthesize_text", "text_samples"]

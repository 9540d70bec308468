"""A real offline mixed set: rendered images, exact answers, no network.

- yes_no / multiple_choice: ``easy-vqa`` images and questions (MCQ options are the answer and
  distractors from the same vocabulary group: shapes or colours); each carries
  ``meta["reasoning"]``, what the image shows of the part asked about ("The shape is red.",
  "The image shows a circle.", read from easy-vqa's own answers about that image) and the step
  to the answer ("There is no gray
  shape.", "The answer is red, option B."): the think text of an SFT warm start
  (``sft.sample_reasoning``);
- chart: bar / line / pie charts rendered with matplotlib from random tables, values printed
  on the chart, numeric and categorical questions with exact answers;
- grounding: scenes of shapes drawn with PIL; "locate the red triangle" with the exact box
  (pixel-edge coordinates: a shape drawn on pixels x1..x2-1 has box x1, x2);
- open_ended: captions of such scenes and charts written from the same description;
- math: arithmetic / algebra word problems with LaTeX answers, a third over a rendered image.

Every task has its own ``random.Random`` seeded by ``f"{seed}-{task}"``, so the output is a
function of ``(seed, sizes)`` alone: the same call writes byte-identical files.
"""
from __future__ import annotations

import functools
import json
import random
import re
import shutil
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from mixed_r1.atomic import atomic_path

from .io import write_samples
from .schema import LETTERS, TASK_TYPES, Sample, format_box

SHAPE_WORDS = ("circle", "rectangle", "triangle")
COLOR_WORDS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SCENE_COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220),
                "yellow": (235, 200, 20), "purple": (140, 50, 170), "orange": (245, 130, 20)}
SCENE_SHAPES = ("circle", "square", "triangle")
CHART_LABELS = ("apples", "pears", "plums", "kiwis", "limes", "figs", "dates", "grapes",
                "north", "south", "east", "west", "alpha", "beta", "gamma", "delta")
CHART_TITLES = ("Fruit sales", "Regional revenue", "Team scores", "Monthly visits", "Stock units")


@dataclass
class SynthConfig:
    """Sizes per task type (0 skips a task), the seed and the output format."""

    seed: int = 0
    sizes: dict = field(default_factory=lambda: {t: 200 for t in TASK_TYPES})
    fmt: str = "jsonl"  # jsonl | parquet
    # easy-vqa's split for yes_no / multiple_choice: "train" (4,000 images) or "test" (1,000
    # other images: a held-out set that shares no image with a "train" set)
    easy_vqa_split: str = "train"
    # yes_no questions: "easy_vqa" (easy-vqa's own; their wording carries the answer: the
    # majority answer of each question template scores ~0.8 without the image) or "balanced"
    # (written from each image's description, half yes and half no for every template and
    # every colour or shape named, so only the image tells the answer)
    yes_no_questions: str = "easy_vqa"


def _save_png(img, path: Path) -> None:
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


# ---------------------------------------------------------------- easy-vqa: yes/no and MCQ
def _easy_vqa_items(rng: random.Random, want_yes_no: bool, n: int, split: str = "train"):
    texts, answers, image_ids = _evqa_questions(split)
    paths = _evqa_paths(split)
    idx = [i for i, a in enumerate(answers) if (a in ("yes", "no")) == want_yes_no]
    rng.shuffle(idx)
    if n > len(idx):
        raise ValueError(f"easy-vqa has only {len(idx)} such questions, asked for {n}")
    return [(texts[i], answers[i], image_ids[i], paths[image_ids[i]]) for i in idx[:n]]


def _named(question: str, words: tuple[str, ...]) -> list[str]:
    """The words of ``words`` that ``question`` names, as whole words, case-insensitive."""
    return [w for w in words if re.search(rf"\b{w}\b", question.lower())]


def _negated(question: str) -> bool:
    """Whether an easy-vqa question is negated: "is there not a circle?", "is no circle present?"."""
    return re.search(r"\b(not|no)\b", question.lower()) is not None


@functools.lru_cache(maxsize=None)
def easy_vqa_descriptions(split: str = "train") -> dict[int, dict[str, str]]:
    """``image_id -> {"color": ..., "shape": ...}`` for easy-vqa's ``split`` ("train" | "test"),
    read from easy-vqa's answers about each image: a colour or shape answer ("What color is the
    shape?" -> "red") names it; a yes/no question naming one colour or shape does when its
    answer says the image has it ("yes", or "no" to a question with "not" or "no"). A part the answers
    never name, or name two ways, is left out. Cached per split (do not mutate the result)."""
    texts, answers, image_ids = _evqa_questions(split)
    seen: dict[int, dict[str, set]] = {}
    for q, a, iid in zip(texts, answers, image_ids):
        d = seen.setdefault(iid, {"color": set(), "shape": set()})
        if a in SHAPE_WORDS:
            d["shape"].add(a)
        elif a in COLOR_WORDS:
            d["color"].add(a)
        if a not in ("yes", "no") or (a == "yes") != _negated(q):
            # what the question names, the image has: "what is the blue shape?" -> "rectangle",
            # "what color is the triangle?" -> "blue", "is there a red shape?" -> "yes",
            # "is there not (is no) circle?" -> "no"
            for part, words in (("shape", SHAPE_WORDS), ("color", COLOR_WORDS)):
                named = _named(q, words)
                if len(named) == 1:
                    d[part].add(named[0])
    return {iid: {part: next(iter(v)) for part, v in d.items() if len(v) == 1}
            for iid, d in seen.items()}


def easy_vqa_reasoning(image_id: int, split: str = "train", part: str | None = None) -> str:
    """What easy-vqa image ``image_id`` shows, as a sentence ("The image shows a red circle.",
    "The shape is red.", "The image shows a circle."); "" when its answers name neither part.
    ``part`` ("color" | "shape") says only that part: the think of a question about it, so that
    every word a policy samples there bears on the answer (a sampled colour in the think of a
    shape question would be rewarded or punished by chance)."""
    d = easy_vqa_descriptions(split).get(image_id, {})
    color, shape = d.get("color"), d.get("shape")
    if part is not None:
        color, shape = (color, None) if part == "color" else (None, shape)
    if color and shape:
        return f"The image shows a {color} {shape}."
    if color:
        return f"The shape is {color}."
    if shape:
        return f"The image shows a {shape}."
    return ""


def question_part(question: str, answer: str = "") -> str | None:
    """The part of an easy-vqa image a question asks about: "color" or "shape" by the answer
    (multiple choice) or the one colour or shape word it names (yes/no); None if unclear."""
    if answer in COLOR_WORDS:
        return "color"
    if answer in SHAPE_WORDS:
        return "shape"
    named = _named(question, (*COLOR_WORDS, *SHAPE_WORDS))
    if len(named) != 1:
        return None
    return "color" if named[0] in COLOR_WORDS else "shape"


def yes_no_reasoning(question: str, answer: str, seen: str) -> str:
    """The think text of an easy-vqa yes/no row: what the image shows (``seen``, from
    :func:`easy_vqa_reasoning`), then whether it has the one colour or shape the question
    names, which the answer and the question's negation give ("Is there not a gray shape?" ->
    "yes": "There is no gray shape."); ``seen`` alone when the question names none or several."""
    named = _named(question, (*COLOR_WORDS, *SHAPE_WORDS))
    if len(named) != 1 or answer not in ("yes", "no"):
        return seen
    has = (answer == "yes") != _negated(question)
    thing = f"{named[0]} shape" if named[0] in COLOR_WORDS else named[0]
    fact = f"There is a {thing}." if has else f"There is no {thing}."
    return f"{seen} {fact}".strip()


def _evqa_questions(split: str) -> tuple[list[str], list[str], list[int]]:
    """easy-vqa's ``(questions, answers, image ids)`` of ``split`` ("train" | "test")."""
    import easy_vqa

    return easy_vqa.get_train_questions() if split == "train" else \
        easy_vqa.get_test_questions()


def _evqa_paths(split: str) -> list[str]:
    """easy-vqa's image paths of ``split`` ("train" | "test"), indexed by image id."""
    import easy_vqa

    return easy_vqa.get_train_image_paths() if split == "train" else \
        easy_vqa.get_test_image_paths()


def _evqa_source(split: str) -> str:
    return "synth/easy_vqa" if split == "train" else f"synth/easy_vqa/{split}"


def _copy_evqa_image(src: str, image_id: int, out: Path, split: str = "train") -> str:
    rel = f"images/evqa_{image_id}.png" if split == "train" else \
        f"images/evqa_{split}_{image_id}.png"
    dst = out / rel
    if not dst.exists():
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    return rel


def synth_yes_no(n: int, rng: random.Random, out: Path, split: str = "train") -> list[Sample]:
    out_samples = []
    for i, (q, a, iid, src) in enumerate(_easy_vqa_items(rng, True, n, split)):
        rel = _copy_evqa_image(src, iid, out, split)
        q = q[0].upper() + q[1:]
        out_samples.append(Sample(id=f"yes_no-{i:05d}", task_type="yes_no", question=q,
                                  solution=a, images=[str(out / rel)],
                                  source=_evqa_source(split),
                                  meta={"image_id": iid, "reasoning": yes_no_reasoning(
                                      q, a, easy_vqa_reasoning(iid, split,
                                                               question_part(q)))}))
    return out_samples


BALANCED_YES_NO = {"color": ("Is there a {} shape in the image?", "Is the shape {}?"),
                   "shape": ("Does the image contain a {}?", "Is there a {} in the image?")}


def synth_yes_no_balanced(n: int, rng: random.Random, out: Path,
                          split: str = "train") -> list[Sample]:
    """``n`` yes/no rows about easy-vqa images of ``split`` whose colour and shape are known
    (:func:`easy_vqa_descriptions`), written by the data engine: each asks about the colour or
    the shape (alternately) with one of :data:`BALANCED_YES_NO`'s templates, and names the
    image's own colour/shape for "yes" or another drawn uniformly for "no"; answers alternate
    within each part, so every template, and every word named, is as often "yes" as "no" up to
    the draw. One row per image (ValueError past the images there are). ``meta["reasoning"]``
    as :func:`yes_no_reasoning` writes it."""
    paths = _evqa_paths(split)
    desc = easy_vqa_descriptions(split)
    ids = sorted(i for i, d in desc.items() if "color" in d and "shape" in d)
    if n > len(ids):
        raise ValueError(f"easy-vqa's {split} split has {len(ids)} described images, asked "
                         f"for {n} balanced yes/no rows")
    rng.shuffle(ids)
    rows = []
    for i, iid in enumerate(ids[:n]):
        part = ("color", "shape")[i % 2]
        has = (i // 2) % 2 == 0
        words = COLOR_WORDS if part == "color" else SHAPE_WORDS
        own = desc[iid][part]
        word = own if has else rng.choice([w for w in words if w != own])
        q = rng.choice(BALANCED_YES_NO[part]).format(word)
        a = "yes" if has else "no"
        rel = _copy_evqa_image(paths[iid], iid, out, split)
        rows.append(Sample(id=f"yes_no-{i:05d}", task_type="yes_no", question=q, solution=a,
                           images=[str(out / rel)], source=_evqa_source(split),
                           meta={"image_id": iid, "generated": "balanced", "reasoning":
                                 yes_no_reasoning(q, a, easy_vqa_reasoning(iid, split, part))}))
    return rows


def synth_multiple_choice(n: int, rng: random.Random, out: Path,
                          split: str = "train") -> list[Sample]:
    out_samples = []
    for i, (q, a, iid, src) in enumerate(_easy_vqa_items(rng, False, n, split)):
        group = SHAPE_WORDS if a in SHAPE_WORDS else COLOR_WORDS
        distract = [w for w in group if w != a]
        rng.shuffle(distract)
        options = [a] + distract[: min(3, len(distract))]
        rng.shuffle(options)
        letter = LETTERS[options.index(a)]
        rel = _copy_evqa_image(src, iid, out, split)
        q = q[0].upper() + q[1:]
        seen = easy_vqa_reasoning(iid, split, question_part(q, a))
        out_samples.append(Sample(id=f"multiple_choice-{i:05d}", task_type="multiple_choice",
                                  question=q, solution=letter, options=options,
                                  images=[str(out / rel)], source=_evqa_source(split),
                                  meta={"image_id": iid, "answer_text": a,
                                        "reasoning": f"{seen} The "
                                                     f"answer is {a}, option {letter}.".strip()}))
    return out_samples


# ---------------------------------------------------------------- charts
def _chart_table(rng: random.Random) -> dict:
    k = rng.randint(3, 6)
    labels = rng.sample(CHART_LABELS, k)
    values = rng.sample(range(2, 100), k)  # distinct: max/min are unique
    return {"kind": rng.choice(("bar", "line", "pie")), "title": rng.choice(CHART_TITLES),
            "labels": labels, "values": values}


def _render_chart(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = table["labels"], table["values"]
    fig, ax = plt.subplots(figsize=(3.6, 2.7), dpi=80)
    if table["kind"] == "bar":
        bars = ax.bar(labels, values, color="#4C72B0")
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v, str(v), ha="center", va="bottom", fontsize=7)
        ax.set_ylim(0, max(values) * 1.2)
    elif table["kind"] == "line":
        ax.plot(labels, values, marker="o", color="#C44E52")
        for x, v in zip(labels, values):
            ax.annotate(str(v), (x, v), textcoords="offset points", xytext=(0, 4),
                        ha="center", fontsize=7)
        ax.set_ylim(0, max(values) * 1.2)
    else:
        ax.pie(values, labels=[f"{lab}: {v}" for lab, v in zip(labels, values)],
               textprops={"fontsize": 7}, startangle=90, counterclock=False)
        ax.axis("equal")
    ax.set_title(table["title"], fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def _chart_qa(table: dict, rng: random.Random) -> tuple[str, str, str]:
    labels, values = table["labels"], table["values"]
    kind = rng.choice(("value", "max", "min", "diff", "sum"))
    if kind == "value":
        j = rng.randrange(len(labels))
        return kind, f"What is the value of {labels[j]}?", str(values[j])
    if kind == "max":
        return kind, "Which category has the highest value?", labels[values.index(max(values))]
    if kind == "min":
        return kind, "Which category has the lowest value?", labels[values.index(min(values))]
    if kind == "diff":
        a, b = rng.sample(range(len(labels)), 2)
        return (kind, f"How much larger is the value of {labels[a]} than that of {labels[b]}?"
                if values[a] > values[b] else
                f"How much smaller is the value of {labels[a]} than that of {labels[b]}?",
                str(abs(values[a] - values[b])))
    return kind, "What is the sum of all values in the chart?", str(sum(values))


def synth_chart(n: int, rng: random.Random, out: Path) -> list[Sample]:
    samples = []
    for i in range(n):
        table = _chart_table(rng)
        rel = f"images/chart_{i:05d}.png"
        _render_chart(table, out / rel)
        kind, q, a = _chart_qa(table, rng)
        samples.append(Sample(id=f"chart-{i:05d}", task_type="chart", question=q, solution=a,
                              images=[str(out / rel)], source="synth/chart",
                              meta={"table": table, "question_kind": kind}))
    return samples


def _chart_caption(table: dict) -> str:
    labels, values = table["labels"], table["values"]
    parts = ", ".join(f"{lab} ({v})" for lab, v in zip(labels, values))
    hi = labels[values.index(max(values))]
    lo = labels[values.index(min(values))]
    return (f"A {table['kind']} chart titled \"{table['title']}\" with {len(labels)} categories: "
            f"{parts}. The highest value is {hi} ({max(values)}) and the lowest is "
            f"{lo} ({min(values)}).")


# ---------------------------------------------------------------- shape scenes
def _scene(rng: random.Random) -> dict:
    w, h = rng.randint(200, 360), rng.randint(160, 300)
    pairs = [(c, s) for c in SCENE_COLORS for s in SCENE_SHAPES]
    rng.shuffle(pairs)
    objs: list[dict] = []
    for color, shape in pairs[: rng.randint(2, 4)]:
        for _ in range(100):  # rejection sampling for a non-overlapping placement
            bw = rng.randint(28, 80)
            bh = bw if shape in ("circle", "square") else rng.randint(28, 80)
            x1, y1 = rng.randint(0, w - bw), rng.randint(0, h - bh)
            box = [x1, y1, x1 + bw, y1 + bh]
            if all(box[2] + 4 <= o["box"][0] or o["box"][2] + 4 <= box[0]
                   or box[3] + 4 <= o["box"][1] or o["box"][3] + 4 <= box[1] for o in objs):
                objs.append({"color": color, "shape": shape, "box": box})
                break
    return {"width": w, "height": h, "objects": objs}


def _render_scene(scene: dict, path: Path) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (scene["width"], scene["height"]), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for o in scene["objects"]:
        x1, y1, x2, y2 = o["box"]
        fill = SCENE_COLORS[o["color"]]
        if o["shape"] == "square":
            draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)
        elif o["shape"] == "circle":
            draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
        else:
            draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), ((x1 + x2 - 1) / 2, y1)], fill=fill)
    _save_png(img, path)


def _where(box: list[int], w: int, h: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else "middle"
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else "center"
    return "center" if (row, col) == ("middle", "center") else f"{row} {col}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _scene_caption(scene: dict) -> str:
    parts = [f"{_article(o['color'])} {o['color']} {o['shape']} at the {_where(o['box'], scene['width'], scene['height'])}"
             for o in scene["objects"]]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"The image shows {len(parts)} shapes on a white background: {listed}."


def synth_grounding(n: int, rng: random.Random, out: Path) -> list[Sample]:
    samples = []
    for i in range(n):
        scene = _scene(rng)
        rel = f"images/scene_{i:05d}.png"
        _render_scene(scene, out / rel)
        target = rng.choice(scene["objects"])
        q = (f"Locate the {target['color']} {target['shape']} in the image and give its "
             "bounding box.")
        samples.append(Sample(id=f"grounding-{i:05d}", task_type="grounding", question=q,
                              solution=[float(v) for v in target["box"]],
                              images=[str(out / rel)], source="synth/shapes",
                              meta={"scene": scene}))
    return samples


def synth_open_ended(n: int, rng: random.Random, out: Path) -> list[Sample]:
    samples = []
    for i in range(n):
        if i % 2 == 0:
            scene = _scene(rng)
            rel = f"images/caption_scene_{i:05d}.png"
            _render_scene(scene, out / rel)
            q, a, src, meta = ("Describe the shapes in the image and where they are.",
                               _scene_caption(scene), "synth/shapes", {"scene": scene})
        else:
            table = _chart_table(rng)
            rel = f"images/caption_chart_{i:05d}.png"
            _render_chart(table, out / rel)
            q, a, src, meta = ("Describe the chart, including its values.",
                               _chart_caption(table), "synth/chart", {"table": table})
        samples.append(Sample(id=f"open_ended-{i:05d}", task_type="open_ended", question=q,
                              solution=a, images=[str(out / rel)], source=src, meta=meta))
    return samples


# ---------------------------------------------------------------- math
def latex_number(x: Fraction | int) -> str:
    """An exact rational as LaTeX: ``7``, ``-3``, ``\\frac{11}{12}``, ``-\\frac{1}{2}``."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    sign = "-" if x < 0 else ""
    return f"{sign}\\frac{{{abs(x.numerator)}}}{{{x.denominator}}}"


def _math_problem(rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(("linear", "fractions", "shopping", "speed", "system"))
    if kind == "linear":
        x, a = rng.randint(-12, 12), rng.randint(2, 9)
        b = rng.randint(-20, 20)
        c = a * x + b
        sign = "+" if b >= 0 else "-"
        return kind, f"Solve for $x$: ${a}x {sign} {abs(b)} = {c}$.", latex_number(x)
    if kind == "fractions":
        f1 = Fraction(rng.randint(1, 9), rng.randint(2, 9))
        f2 = Fraction(rng.randint(1, 9), rng.randint(2, 9))
        op = rng.choice(("+", "-", "\\times"))
        val = f1 + f2 if op == "+" else f1 - f2 if op == "-" else f1 * f2
        return (kind, f"Compute ${latex_number(f1)} {op} {latex_number(f2)}$ and simplify.",
                latex_number(val))
    if kind == "shopping":
        price, count = rng.randint(2, 15), rng.randint(2, 9)
        paid = (price * count // 10 + 1 + rng.randint(0, 3)) * 10
        return (kind, f"A notebook costs {price} dollars. Mia buys {count} notebooks and pays "
                f"with {paid} dollars. How many dollars of change does she get?",
                str(paid - price * count))
    if kind == "speed":
        d, t = rng.randint(20, 300), rng.randint(2, 8)
        return (kind, f"A train travels {d} km in {t} hours at constant speed. What is its "
                "speed in km per hour?", latex_number(Fraction(d, t)))
    x, y = rng.randint(-9, 9), rng.randint(-9, 9)
    a, b = rng.randint(1, 5), rng.randint(1, 5)
    ca, cb = ("" if a == 1 else str(a)), ("" if b == 1 else str(b))
    return (kind, f"If $x + y = {x + y}$ and ${ca}x - {cb}y = {a * x - b * y}$, what is $x$?",
            latex_number(x))


def _render_text_image(lines: list[str], path: Path) -> None:
    from PIL import Image, ImageDraw

    font = _font(18)
    img = Image.new("RGB", (336, 40 + 28 * len(lines)), (250, 250, 245))
    draw = ImageDraw.Draw(img)
    for j, line in enumerate(lines):
        draw.text((14, 20 + 28 * j), line, fill=(10, 10, 10), font=font)
    _save_png(img, path)


def _math_image_problem(rng: random.Random, path: Path) -> tuple[str, str, str]:
    from PIL import Image, ImageDraw

    if rng.random() < 0.5:
        x, a, b = rng.randint(-9, 9), rng.randint(2, 9), rng.randint(1, 30)
        _render_text_image([f"{a}x + {b} = {a * x + b}"], path)
        return "image_linear", "Solve the equation shown in the image for $x$.", latex_number(x)
    w, h = rng.randint(3, 15), rng.randint(3, 15)
    img = Image.new("RGB", (280, 224), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.rectangle((60, 50, 220, 170), outline=(0, 0, 0), width=3)
    font = _font(18)
    draw.text((130, 176), f"{w} cm", fill=(0, 0, 0), font=font)
    draw.text((226, 100), f"{h} cm", fill=(0, 0, 0), font=font)
    _save_png(img, path)
    kind = rng.choice(("area", "perimeter"))
    val = w * h if kind == "area" else 2 * (w + h)
    unit = "square centimetres" if kind == "area" else "centimetres"
    return ("image_" + kind, f"What is the {kind} of the rectangle in the image, in {unit}?",
            str(val))


def synth_math(n: int, rng: random.Random, out: Path) -> list[Sample]:
    samples = []
    for i in range(n):
        if i % 3 == 2:
            rel = f"images/math_{i:05d}.png"
            kind, q, a = _math_image_problem(rng, out / rel)
            images = [str(out / rel)]
        else:
            kind, q, a = _math_problem(rng)
            images = []
        samples.append(Sample(id=f"math-{i:05d}", task_type="math", question=q, solution=a,
                              images=images, source="synth/math", meta={"kind": kind}))
    return samples


_BUILDERS = {"yes_no": synth_yes_no, "multiple_choice": synth_multiple_choice,
             "chart": synth_chart, "math": synth_math, "grounding": synth_grounding,
             "open_ended": synth_open_ended}


def synthesize(out_dir: str | Path, config: SynthConfig | None = None, *,
               overwrite: bool = False) -> Path:
    """Write the mixed set under ``out_dir``: ``images/``, ``synth.<fmt>``, ``manifest.json``.

    Returns the dataset file's path. The set is built in a temporary directory beside
    ``out_dir`` and renamed into place when complete (:func:`mixed_r1.atomic.atomic_dir`), so an
    interrupted run leaves nothing behind and a reader never sees images of one set beside the
    rows of another. A non-empty ``out_dir`` raises FileExistsError unless ``overwrite``, which
    replaces it whole (no orphaned images of the old set).
    """
    from mixed_r1.atomic import atomic_dir

    cfg = config or SynthConfig()
    unknown = set(cfg.sizes) - set(TASK_TYPES)
    if unknown:
        raise ValueError(f"unknown task types in sizes: {sorted(unknown)}")
    if cfg.fmt not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be jsonl or parquet, got {cfg.fmt!r}")
    if cfg.easy_vqa_split not in ("train", "test"):
        raise ValueError(f"easy_vqa_split must be train or test, got {cfg.easy_vqa_split!r}")
    if cfg.yes_no_questions not in ("easy_vqa", "balanced"):
        raise ValueError("yes_no_questions must be easy_vqa or balanced, got "
                         f"{cfg.yes_no_questions!r}")
    for task in TASK_TYPES:
        if int(cfg.sizes.get(task, 0)) < 0:
            raise ValueError(f"size for {task} must be >= 0, got {cfg.sizes[task]}")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty (pass --overwrite to "
                              "replace it)")
    with atomic_dir(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        samples: list[Sample] = []
        for task in TASK_TYPES:
            n = int(cfg.sizes.get(task, 0))
            if n:
                rng = random.Random(f"{cfg.seed}-{task}")
                build = synth_yes_no_balanced if (task == "yes_no" and cfg.yes_no_questions
                                                  == "balanced") else _BUILDERS[task]
                samples.extend(build(n, rng, tmp, cfg.easy_vqa_split)
                               if task in ("yes_no", "multiple_choice")
                               else _BUILDERS[task](n, rng, tmp))
        path = write_samples(samples, tmp / f"synth.{cfg.fmt}")
        counts = {t: sum(s.task_type == t for s in samples) for t in TASK_TYPES}
        with atomic_path(tmp / "manifest.json") as f:
            f.write_text(json.dumps({"seed": cfg.seed, "counts": counts, "file": path.name,
                                     "easy_vqa_split": cfg.easy_vqa_split,
                                     "yes_no_questions": cfg.yes_no_questions},
                                    indent=2, sort_keys=True))
    return out / path.name


__all__ = ["SynthConfig", "synthesize", "latex_number", "format_box"]

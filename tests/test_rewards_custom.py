"""User reward functions (issue 32): ``reward.functions`` adds a task type or replaces a built-in
one's accuracy reward; the function gets the completion and the sample and returns a number or a
dict with ``score`` and named components; it runs in the reward workers, so one that raises or
hangs scores 0 and is counted (the first traceback logged once); ``reward.task_weights`` scales a
task's total. The data schema accepts a custom task type only when a function scores it."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from mixed_r1.rewards import MixedReward
from mixed_r1.rewards.config import RewardConfig

ROOT = Path(__file__).parents[1]
WORD_COUNT = "examples/custom_reward/word_count.py:word_count_reward"

FUNCS = '''
import time

def half(completion, sample):          # replaces yes_no: 0.5 for anything
    return 0.5

def shout(completion, sample):         # a new type: 1 when the answer is upper case
    return {"score": float(completion.isupper()), "length": float(len(completion))}

def boom(completion, sample):
    raise RuntimeError("user bug in " + sample["id"])

def wrong_type(completion, sample):
    return "1.0"

def hang(completion, sample):
    time.sleep(60)
    return 1.0
'''


@pytest.fixture(scope="module")
def funcs(tmp_path_factory) -> str:
    """A module of reward functions importable as ``userfuncs`` (the spawned reward workers
    inherit sys.path) and as a file path."""
    import sys

    d = tmp_path_factory.mktemp("userfuncs")
    (d / "userfuncs.py").write_text(FUNCS)
    sys.path.insert(0, str(d))
    yield str(d / "userfuncs.py")
    sys.path.remove(str(d))


def _sample(i: int, task: str, solution: str = "5", **kw) -> dict:
    return {"id": f"s{i}", "task_type": task, "question": "q", "solution": solution,
            "options": None, "images": [], "meta": {}, **kw}


def test_added_and_replaced_task_types_components_and_weights(funcs):
    reward = MixedReward(RewardConfig(
        functions={"word_count": f"{ROOT / 'examples/custom_reward/word_count.py'}:"
                                 "word_count_reward",
                   "yes_no": "userfuncs:half", "shout": f"{funcs}:shout"},
        task_weights={"word_count": 2.0, "shout": 0.5}))
    try:
        comps = ["<think>x</think><answer>5</answer>", "<answer>4</answer>", "no answer",
                 "<think>x</think><answer>yes</answer>", "LOUD", "quiet", "<answer>A</answer>"]
        samples = [_sample(0, "word_count"), _sample(1, "word_count"), _sample(2, "word_count"),
                   _sample(3, "yes_no", "yes"), _sample(4, "shout", "-"), _sample(5, "shout", "-"),
                   _sample(6, "multiple_choice", "A", options=["x", "y"])]
        batch = reward(comps, samples)
    finally:
        reward.close()
    # word_count: exact, 1 - 1/5 partial credit, no answer; yes_no replaced by the constant
    assert batch.accuracy == [1.0, 0.8, 0.0, 0.5, 1.0, 0.0, 1.0]
    assert batch.format == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    # total = task weight x (accuracy + format); unweighted tasks count once
    assert batch.total == pytest.approx([4.0, 1.6, 0.0, 1.5, 0.5, 0.0, 1.0])
    m = batch.metrics()
    assert m["reward/word_count/answered"] == pytest.approx(2 / 3)
    assert m["reward/word_count/abs_error"] == pytest.approx((0 + 1 + 5) / 3)
    assert m["reward/shout/length"] == pytest.approx((4 + 5) / 2)
    assert m["reward/failures"] == 0


@pytest.mark.slow  # a worker killed after its time limit and restarted (> 5 s here)
def test_raising_wrong_and_hanging_functions_score_zero_counted_logged_once(funcs, caplog):
    reward = MixedReward(RewardConfig(functions={"boom": "userfuncs:boom",
                                                 "wrong": "userfuncs:wrong_type",
                                                 "hang": "userfuncs:hang"},
                                      sample_timeout_s=2.0))
    try:
        with caplog.at_level(logging.WARNING):
            batch = reward(["a", "b", "c", "d"], [_sample(0, "boom"), _sample(1, "boom"),
                                                   _sample(2, "wrong"), _sample(3, "hang")])
            assert batch.accuracy == [0.0] * 4 and batch.failures == 4
            again = reward(["a"], [_sample(9, "boom")])
            assert again.failures == 1
    finally:
        reward.close()
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1 and "RuntimeError: user bug in s0" in tracebacks[0].getMessage()
    assert any("exceeded 2.0s" in r.getMessage() for r in caplog.records)


def test_bad_references_and_unknown_types_are_one_clear_error(funcs, tmp_path):
    from mixed_r1.config import ConfigError, load_config
    from mixed_r1.data.io import load_samples
    from mixed_r1.data.schema import DataError

    for ref, msg in [("userfuncs", "is not 'package.module:function'"),
                     ("no_such_module_x:fn", "cannot import no_such_module_x"),
                     ("userfuncs:nothing", "userfuncs has no function nothing"),
                     ("missing/file.py:fn", "no file missing/file.py")]:
        with pytest.raises(ValueError, match=msg) as e:
            MixedReward(RewardConfig(functions={"t": ref}))
        assert "reward.functions" in str(e.value)
    with pytest.raises(ConfigError, match=r"reward.task_weights.nope: unknown task type"):
        load_config(None, ["reward.task_weights.nope=2"])
    with pytest.raises(ValueError, match="unknown task type 'shout'.*reward.functions"):
        MixedReward()(["x"], [_sample(0, "shout")])

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(_sample(0, "shout", ["any", "json"])) + "\n")
    with pytest.raises(DataError) as e:
        load_samples(data)
    assert str(e.value) == (f"{data}, row 1, key 'task_type': unknown task type 'shout' (known: "
                            "yes_no, multiple_choice, chart, math, grounding, open_ended; a new "
                            "task type needs a reward: reward.functions)")
    (s,), _ = load_samples(data, custom_tasks=["shout"])
    assert s.task_type == "shout" and s.solution == ["any", "json"]
    cfg = load_config(None, [f"data.train_file={data}", "reward.functions.shout=userfuncs:shout",
                             "data.task_type=shout"])
    assert cfg.reward.task_types[-1] == "shout"


@pytest.mark.slow
def test_the_custom_reward_example_trains(tmp_path, monkeypatch):
    """examples/custom_reward.yaml as README runs it (from the repository root), one step: the
    word_count function's components reach metrics.jsonl."""
    from mixed_r1.config import load_config
    from mixed_r1.metrics import read_metrics
    from mixed_r1.trainer import run_training

    monkeypatch.chdir(ROOT)
    run_training(load_config(ROOT / "examples" / "custom_reward.yaml",
                             [f"out_dir={tmp_path / 'run'}", "progress=false", "steps=1"]))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1]
    assert all("reward/word_count/answered" in r and "reward/word_count/abs_error" in r
               for r in rows)
    assert WORD_COUNT in (tmp_path / "run" / "config.yaml").read_text()

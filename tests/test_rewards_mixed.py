"""MixedReward routing, its worker pool's time limits, and a hypothesis fuzz of 10k+ outputs."""
import math
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixed_r1.rewards import (TASK_TYPES, MixedReward, RewardConfig, TableEmbedder, chart_reward,
                              format_reward, iou_reward, matching_reward)
from mixed_r1.rewards.pool import ScoringPool
from reward_pool_helpers import slow_or_crashing

T = "<think>{}</think><answer>{}</answer>"
SAMPLES = [
    {"id": "yn", "task_type": "yes_no", "solution": "yes"},
    {"id": "mc", "task_type": "multiple_choice", "solution": "C", "options": ["red", "green", "blue"]},
    {"id": "ch", "task_type": "chart", "solution": "42%"},
    {"id": "ma", "task_type": "math", "solution": "\\frac{3}{4}"},
    {"id": "gr", "task_type": "grounding", "solution": [0, 0, 10, 10]},
    {"id": "oe", "task_type": "open_ended", "solution": "a small red circle"},
]
COMPLETIONS = [T.format("…", "Yes"), "blue", T.format("…", "42 %"), T.format("…", "0.75"),
               "[0, 0, 5, 10]", T.format("…", "a small red circle")]


def test_routing_weights_and_breakdown():
    batch = MixedReward(RewardConfig(format_weight=0.5))(COMPLETIONS, SAMPLES)
    assert batch.accuracy == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.5, 1.0])
    assert batch.format == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    assert batch.total == pytest.approx([1.5, 1.0, 1.5, 1.5, 0.5, 1.5])
    assert batch.task_types == list(TASK_TYPES)
    metrics = batch.metrics()
    assert metrics["reward/grounding/accuracy"] == 0.5 and metrics["reward/failures"] == 0
    assert batch.by_task()["math"]["count"] == 1


def test_thresholded_iou_config():
    batch = MixedReward(RewardConfig(iou_threshold=0.5))(COMPLETIONS[4:5], SAMPLES[4:5])
    assert batch.accuracy == [1.0]


def test_worker_pool_gives_the_same_rewards_as_in_process():
    comps = COMPLETIONS * 20
    samples = SAMPLES * 20
    serial = MixedReward(RewardConfig())(comps, samples)
    pooled_reward = MixedReward(RewardConfig(num_workers=2))
    try:
        pooled = pooled_reward(comps, samples)
        again = pooled_reward(comps, samples)  # the pool is reused
    finally:
        pooled_reward.close()
    assert pooled.total == serial.total == again.total


def test_data_errors_raise_clearly():
    reward = MixedReward()
    with pytest.raises(ValueError, match=r"sample 0 \(id=x\).*unknown task type 'ocr'"):
        reward(["a"], [{"id": "x", "task_type": "ocr", "solution": "a"}])
    with pytest.raises(ValueError, match=r"sample 0 \(id=g\).*not a box"):
        reward(["a"], [{"id": "g", "task_type": "grounding", "solution": [3, 3, 1, 1]}])
    with pytest.raises(ValueError, match="2 completions for 1 samples"):
        reward(["a", "b"], SAMPLES[:1])
    with pytest.raises(ValueError, match="bmas_embedder"):
        RewardConfig(bmas_embedder="bert")


def test_pool_survives_hung_crashing_and_raising_rewards():
    items = [(0, ("ok", 0.25)), (1, ("hang", 0)), (2, ("ok", 0.5)), (3, ("crash", 0)),
             (4, ("raise", 0)), (5, ("ok", 1.0))]
    with ScoringPool(slow_or_crashing, num_workers=2, timeout_s=1.0, chunk_size=2) as pool:
        start = time.monotonic()
        got = pool.map(items)
        assert time.monotonic() - start < 30
        assert got == {0: 0.25, 1: 0.0, 2: 0.5, 3: 0.0, 4: 0.0, 5: 1.0}
        assert pool.failures == 3
        assert pool.map([(7, ("ok", 0.75))]) == {7: 0.75}  # replaced workers keep serving


# ------------------------------------------------------------------------------ fuzzing
FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<ANSWER>", "yes", "No", "(B)",
             "Option C", "A or B", "1,234", "12%", "−0", "1e999", "nan", "inf", "-inf",
             "[1, 2, 3, 4]", "[nan, 0, 1, 1]", '{"bbox_2d": [0, 0, 5, 5]}', "(1, 2), (3, 4)",
             "\\frac{1}{0}", "\\sqrt{-1}", "x^2", "$", "\\boxed{", "}", "{", "9" * 400, "\x00",
             "😀", "é", "\u202e", " ", "\n", "\\", "'", '"', "[[[[", "))))", "0." * 50]
fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)
completion = st.one_of(st.text(max_size=200), fragment_text,
                       st.tuples(st.text(max_size=40), fragment_text).map("".join))
FUZZ_SAMPLES = [
    {"task_type": "yes_no", "solution": "no"},
    {"task_type": "multiple_choice", "solution": "B", "options": ["x", "y", "z"]},
    {"task_type": "chart", "solution": "1,234"},
    {"task_type": "math", "solution": "\\frac{1}{2}"},
    {"task_type": "grounding", "solution": [0, 0, 5, 5]},
    {"task_type": "open_ended", "solution": "a red square"},
]


class _ByteTokenizer:
    def encode(self, text):
        return list(text.encode("utf-8", "replace"))


# the fuzz targets the router and the parsers; MiniLM is exercised in test_rewards_math_bmas
FUZZ_EMBEDDER = TableEmbedder(_ByteTokenizer(),
                              torch.randn(256, 8, generator=torch.Generator().manual_seed(0)))
FUZZ_REWARD = MixedReward(RewardConfig(math_timeout_s=5.0), embedder=FUZZ_EMBEDDER)
N_EXAMPLES, BATCH = 170, 60  # 10,200 completions, 1,700 per task type
FUZZ_SETTINGS = dict(deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_never_raises_and_in_range(reward: MixedReward, completions: list) -> int:
    samples = [FUZZ_SAMPLES[i % len(FUZZ_SAMPLES)] for i in range(len(completions))]
    batch = reward(completions, samples)
    for total, acc, fmt in zip(batch.total, batch.accuracy, batch.format):
        assert math.isfinite(total) and 0.0 <= acc <= 1.0 and fmt in (0.0, 1.0)
        assert total == pytest.approx(acc + fmt)
    assert batch.failures == 0
    return len(completions)


def test_fuzz_mixed_reward_never_raises_and_stays_in_range():
    """10k+ fuzzed completions scored in-process; the count is asserted by the same test."""
    seen = []

    @settings(max_examples=N_EXAMPLES, **FUZZ_SETTINGS)
    @given(st.lists(completion, min_size=BATCH, max_size=BATCH))
    def run(completions):
        seen.append(_check_never_raises_and_in_range(FUZZ_REWARD, completions))

    run()
    assert sum(seen) >= 10_000


def test_fuzz_worker_pool_never_raises_and_matches_in_process():
    """The worker-pool path of "rewards never raise": fuzzed batches scored by 2 workers, each
    compared with the in-process scores of the same batch."""
    pooled = MixedReward(RewardConfig(math_timeout_s=5.0, num_workers=2), embedder=FUZZ_EMBEDDER)
    seen = []

    @settings(max_examples=25, **FUZZ_SETTINGS)
    @given(st.lists(completion, min_size=BATCH, max_size=BATCH))
    def run(completions):
        seen.append(_check_never_raises_and_in_range(pooled, completions))
        samples = [FUZZ_SAMPLES[i % len(FUZZ_SAMPLES)] for i in range(len(completions))]
        assert pooled(completions, samples).total == FUZZ_REWARD(completions, samples).total

    try:
        run()
    finally:
        pooled.close()
    assert sum(seen) >= 25 * BATCH


# sympy starts evaluating a power tower with a 370-million-digit exponent: math-verify never returns
HANGS_MATH_VERIFY = "<think>…</think><answer>9^{9^{9^{9}}}</answer>"


@pytest.mark.parametrize("num_workers", [0, 1])
def test_math_check_past_its_time_limit_scores_0_and_is_counted(num_workers):
    reward = MixedReward(RewardConfig(math_timeout_s=3.0, sample_timeout_s=60.0,
                                      num_workers=num_workers))
    samples = [{"id": "m", "task_type": "math", "solution": "1"}] * 2 + [SAMPLES[0]]
    try:
        start = time.monotonic()
        batch = reward([HANGS_MATH_VERIFY, T.format("…", "1"), T.format("…", "yes")], samples)
        assert time.monotonic() - start < 60
    finally:
        reward.close()
    assert batch.accuracy == [0.0, 1.0, 1.0]
    assert batch.failures == 1 and batch.metrics()["reward/failures"] == 1.0


def test_unparseable_math_gold_is_a_data_error():
    with pytest.raises(ValueError, match=r"sample 0 \(id=bad\).*math solution '\\\\frac\{'"):
        MixedReward()(["<answer>1</answer>"],
                      [{"id": "bad", "task_type": "math", "solution": "\\frac{"}])


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_single_rewards_total_on_any_text(text):
    assert format_reward(text) in (0.0, 1.0)
    assert matching_reward(text, "B", ["p", "q"]) in (0.0, 1.0)
    assert chart_reward(text, "12.5") in (0.0, 1.0)
    assert 0.0 <= iou_reward(text, [0, 0, 1, 1]) <= 1.0

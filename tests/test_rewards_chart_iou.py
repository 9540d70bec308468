"""chart_reward (ChartQA relaxed accuracy) and iou_reward: hand-made cases + a numpy IoU."""
import numpy as np
import pytest

from mixed_r1.rewards import chart_reward, iou_reward
from mixed_r1.rewards.chart import relaxed_equal

T = "<think>{}</think><answer>{}</answer>"


@pytest.mark.parametrize("answer,solution,expected", [
    ("1234", "1,234", 1.0),
    ("1,234", "1234", 1.0),
    ("104", "100", 1.0),            # 4% off
    ("105", "100", 1.0),            # exactly 5%
    ("106", "100", 0.0),
    ("-95.5", "-100", 1.0),
    ("−3.2", "-3.2", 1.0),          # unicode minus
    ("0", "0", 1.0),
    ("0.001", "0", 0.0),            # exact for zero
    ("12%", "12", 1.0),
    ("0.12", "12%", 1.0),           # a percent read as a fraction
    ("12 %", "12%", 1.0),
    ("45 kg", "45", 1.0),
    ("$1,500", "1500", 1.0),
    ("1.5e3", "1500", 1.0),
    ("The value is 45", "45", 1.0),
    ("about 44", "45", 1.0),
    ("44 or 90", "45", 0.0),        # the last number stated counts
    ("Blue", "blue", 1.0),
    (" Blue. ", "blue", 1.0),
    ("green", "blue", 0.0),
    ("1e400", "5", 0.0),            # overflows to inf
    ("nan", "5", 0.0),
    ("inf", "5", 0.0),
    ("", "5", 0.0),
    ("five", "5", 0.0),
    ("9" * 5000, "5", 0.0),         # huge integer text
])
def test_chart_reward(answer, solution, expected):
    assert chart_reward(T.format("...", answer), solution) == expected


def test_chart_tolerance_is_configurable():
    assert chart_reward("108", "100", tolerance=0.1) == 1.0
    assert chart_reward("108", "100", tolerance=0.05) == 0.0
    assert chart_reward("111", "100", tolerance=0.1) == 0.0


@pytest.mark.parametrize("pred,target,expected", [
    (100.0, 100.0, True),
    (105.0, 100.0, True), (95.0, 100.0, True),          # |pred - target| = 5% of the target
    (105.5, 100.0, False), (94.5, 100.0, False),
    # the tolerance is relative to the target (ChartQA), so the relation is not symmetric:
    (95.2, 100.0, True), (100.0, 95.2, False),          # 4.8 <= 5.0 but 4.8 > 4.76
    (-104.0, -100.0, True), (-106.0, -100.0, False), (100.0, -100.0, False),
    (0.0, 0.0, True), (1e-9, 0.0, False), (-0.0, 0.0, True),   # exact for a zero target
    (float("nan"), 1.0, False), (1.0, float("nan"), False), (float("inf"), float("inf"), False),
])
def test_relaxed_equal(pred, target, expected):
    assert relaxed_equal(pred, target) is expected


def test_untagged_chart_and_grounding_read_the_last_answer():
    assert chart_reward("I estimated 30, but the bar reads 45", "45") == 1.0
    assert chart_reward("I estimated 45, but the bar reads 30", "45") == 0.0
    assert iou_reward("[500, 500, 600, 600]? No: [10, 20, 110, 220]", GT) == 1.0
    assert iou_reward("[10, 20, 110, 220]? No: [500, 500, 600, 600]", GT) == 0.0
    # with a tag, the first box of its content
    assert iou_reward(T.format("…", "[10, 20, 110, 220] or [500, 500, 600, 600]"), GT) == 1.0


# ------------------------------------------------------------------ numbers in other locales
# (issue 32) A decimal comma is a decimal point; thousands separators group in threes (commas,
# points before a decimal comma, spaces); an ambiguous run of digits and separators is no number.
@pytest.mark.parametrize("answer,right,wrong", [
    ("3,5", "3.5", "5"), ("3,5", "3.5", "35"), ("0,75", "0.75", "75"), ("12,5 %", "12.5%", "5"),
    ("−3,5", "-3.5", "5"), ("€3,50", "3.5", "50"), ("The bar reads 3,5.", "3.5", "5"),
    ("1.234,5", "1234.5", "5"), ("1.234.567", "1234567", "567"),
    ("1 234,5", "1234.5", "234.5"), ("It is 1 234,5 tonnes", "1234.5", "5"),
    ("1\u202f234,5", "1234.5", "5"), ("1\u00a0234", "1234", "234"), ("1 234", "1234", "234"),
    ("12,34,567", "1234567", "567"),                                   # Indian lakh grouping
    ("It rose from 2,5 to 3,5", "3.5", "5"),
])
def test_chart_reads_locale_numbers(answer, right, wrong):
    for completion in (T.format("...", answer), answer):
        assert chart_reward(completion, right) == 1.0
        assert chart_reward(completion, wrong) == 0.0


@pytest.mark.parametrize("answer,value", [
    # thousands separators keep their reading (regression guards)
    ("1,234", "1234"), ("1,234.5", "1234.5"), ("12,345,678", "12345678"), ("$1,500", "1500"),
    ("The value is 1,234", "1234"), ("1.234", "1.234"),
])
def test_chart_thousands_separators_are_still_thousands(answer, value):
    assert chart_reward(T.format("...", answer), value) == 1.0


@pytest.mark.parametrize("answer", ["1,234,5", "1.234.5", "10,20,30", "The value is 1,234,5"])
def test_chart_an_ambiguous_number_is_no_number(answer):
    for gold in ("5", "1234.5", "1234", "30", "20", "1.234", "234.5"):
        assert chart_reward(T.format("...", answer), gold) == 0.0, gold


def test_chart_solution_with_a_decimal_comma_is_a_number():
    assert chart_reward(T.format("...", "3.5"), "3,5") == 1.0
    assert chart_reward(T.format("...", "3.6"), "3,5") == 1.0          # within 5 %
    assert chart_reward(T.format("...", "5"), "3,5") == 0.0


@pytest.mark.parametrize("answer", [
    "1 " * 50000, "1,2" * 30000, "1 234 " * 15000 + "567,5", "\x00\ud800٣,٥" * 1000,
    "approximately " * 5000 + "5", "$ " * 50000, "9" * 100000 + ",5",
])
def test_chart_is_total_and_fast_on_hostile_numbers(answer):
    import time

    start = time.perf_counter()
    for completion in (answer, T.format("", answer)):
        assert chart_reward(completion, "5") in (0.0, 1.0)
    assert time.perf_counter() - start < 5.0


def numpy_iou(a, b):
    """Independent reference: IoU by rasterizing nothing, just numpy max/min in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lt, rb = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[0] * wh[1]
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter
    return float(inter / union)


GT = [10, 20, 110, 220]


@pytest.mark.parametrize("answer,expected", [
    ("[10, 20, 110, 220]", 1.0),
    ('{"bbox_2d": [10, 20, 110, 220], "label": "cat"}', 1.0),
    ('[{"bbox_2d": [10,20,110,220]}]', 1.0),
    ("(10, 20), (110, 220)", 1.0),
    ("(10,20) to (110,220)", 1.0),
    ("[10.0, 20.0, 110.0, 220.0]", 1.0),
    ("[60, 20, 160, 220]", numpy_iou([60, 20, 160, 220], GT)),
    ("[0, 0, 10, 20]", 0.0),                 # touching corner, no overlap
    ("[500, 500, 600, 600]", 0.0),
    ("[110, 20, 10, 220]", 0.0),             # x1 > x2
    ("[10, 20, 10, 220]", 0.0),              # zero width
    ("[nan, 20, 110, 220]", 0.0),
    ("[10, 20, inf, 220]", 0.0),
    ("[10, 20, 1e999, 220]", 0.0),
    ("[10, 20, 110]", 0.0),                  # malformed
    ("no box here", 0.0),
    ("", 0.0),
    ("[500, 500, 600, 600] then [10, 20, 110, 220]", 0.0),   # the first box counts
    ("left box: (10, 20), (110, 220) then [0,0,1,1]", 1.0),
    ("[-10, -20, 110, 220]", numpy_iou([-10, -20, 110, 220], GT)),
    ("[20, 30, 100, 200]", numpy_iou([20, 30, 100, 200], GT)),   # contained
    ("框：[10, 20, 110, 220]", 1.0),           # unicode around
])
def test_iou_reward(answer, expected):
    assert iou_reward(T.format("...", answer), GT) == pytest.approx(expected, abs=1e-12)


def test_iou_threshold_variant_and_text_solution():
    half = "[60, 20, 160, 220]"  # IoU 1/3
    assert iou_reward(half, GT, threshold=0.3) == 1.0
    assert iou_reward(half, GT, threshold=0.5) == 0.0
    assert iou_reward(half, "[10, 20, 110, 220]") == pytest.approx(1 / 3)
    assert iou_reward(half, '{"bbox_2d": [10, 20, 110, 220]}') == pytest.approx(1 / 3)


@pytest.mark.parametrize("bad", [[1, 2, 3], [5, 5, 1, 1], [0, 0, float("nan"), 1], "none", None])
def test_iou_invalid_solution_is_a_data_error(bad):
    with pytest.raises(ValueError, match="solution"):
        iou_reward("[0, 0, 1, 1]", bad)


def test_iou_matches_numpy_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        a = np.sort(rng.uniform(0, 100, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        b = np.sort(rng.uniform(0, 100, (2, 2)), axis=0).T.reshape(-1)[[0, 2, 1, 3]]
        text = "[" + ", ".join(repr(float(v)) for v in a) + "]"
        assert iou_reward(text, b.tolist()) == pytest.approx(numpy_iou(a, b), abs=1e-9)

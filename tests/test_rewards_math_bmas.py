"""math_reward against hand-written verdicts, its hard time limit (with an input that really hangs
math-verify), and BMAS against float64 loops."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from mixed_r1.rewards import MiniLMEmbedder, TableEmbedder, bmas_reward, math_reward
from mixed_r1.rewards.bmas import bmas_score
from mixed_r1.rewards.math import MathVerifier, final_math_answer, get_verifier, gold_error

# (gold, answer inside <answer>, verdict): the verdicts are the mathematics, written by hand
MATH_CASES = [
    ("\\frac{1}{2}", "0.5", 1.0), ("\\frac{1}{2}", "1/2", 1.0),
    ("\\frac{1}{2}", "$\\frac{2}{4}$", 1.0), ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", 1.0),
    ("\\frac{1}{2}", "0.6", 0.0), ("(x+1)^2", "x^2+2x+1", 1.0), ("(x+1)^2", "x^2+1", 0.0),
    ("\\sqrt{2}", "2^{1/2}", 1.0), ("\\{1,2,3\\}", "\\{3,2,1\\}", 1.0), ("50\\%", "0.5", 1.0),
    ("3", "The answer is $3$.", 1.0), ("3", "4", 0.0), ("\\pi", "3.14159265358979", 1.0),
    ("\\pi", "3.14", 0.0), ("x=2", "2", 1.0), ("[1, 2]", "[1,2]", 1.0), ("-7", "-7.0", 1.0),
    ("1024", "2^{10}", 1.0), ("2", "2^{10}", 0.0), ("1", "1 - \\sqrt{2}", 0.0),
    ("1 - \\sqrt{2}", "1 - \\sqrt 2", 1.0), ("1 - \\sqrt{2}", "1 + \\sqrt{2}", 0.0),
    ("\\frac{3}{4}", "4/3", 0.0), ("\\frac{3}{4}", "\\dfrac{6}{8}", 1.0), ("12", "12.0001", 0.0),
    ("2\\sqrt{3}", "\\sqrt{12}", 1.0), ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", 1.0),
    ("(-\\infty, 3)", "(-\\infty,3]", 0.0), ("10", "10.5", 0.0), ("5", "5 \\text{ cm}", 1.0),
]


@pytest.mark.parametrize("gold,answer,expected", MATH_CASES)
def test_math_reward_hand_written_verdicts(gold, answer, expected):
    assert math_reward(f"<think>…</think><answer>{answer}</answer>", gold) == expected


def test_math_cases_cover_both_verdicts():
    assert len(MATH_CASES) >= 20
    assert {e for _, _, e in MATH_CASES} == {0.0, 1.0}


@pytest.mark.parametrize("answer,gold,expected", [
    # issue cases: the whole stated expression is scored, not its leading number
    ("2^{10}", "2", 0.0), ("1 - \\sqrt{2}", "1", 0.0), ("2^{1/2}", "2", 0.0),
    ("10^{-3}", "10", 0.0),
    ("3 \\cdot 4", "3", 0.0), ("2x", "2", 0.0),
    # the same expressions score 1 against their value, with or without $…$ or \\boxed{}
    ("2^{10}", "1024", 1.0), ("$2^{10}$", "1024", 1.0), ("\\boxed{2^{10}}", "1024", 1.0),
    ("$\\boxed{2^{10}}$", "1024", 1.0), ("\\(2^{10}\\)", "1024", 1.0),
    ("1 - \\sqrt{2}", "1-\\sqrt{2}", 1.0), ("$1 - \\sqrt{2}$", "1-\\sqrt{2}", 1.0),
    ("\\boxed{1 - \\sqrt{2}}", "1-\\sqrt{2}", 1.0), ("3 \\cdot 4", "12", 1.0),
])
def test_math_answer_is_the_whole_expression(answer, gold, expected):
    assert math_reward(f"<think>…</think><answer>{answer}</answer>", gold) == expected


@pytest.mark.parametrize("completion,expected", [
    # with a tag, its content; without one, the last box, else the last $…$, else the last
    # line when it is an expression, else the last number stated
    ("<answer>$7$</answer> then $9$", "7"),
    ("First \\boxed{3}, then corrected: \\boxed{4}", "4"),
    ("We get $x = 1$, so the answer is $\\frac{3}{4}$", "\\frac{3}{4}"),
    ("<think>try 2, then 5</think>\n3/4", "3/4"),
    ("Is it 2? Looking closer it is 7.", "7"),
    ("<think>Is it 2? No.</think> So 1,234 apples.", "1234"),  # a number, in plain form
    ("no number here", None),
    ("", None),
])
def test_final_math_answer_rule(completion, expected):
    assert final_math_answer(completion) == expected


def test_untagged_math_scores_the_last_answer():
    assert math_reward("First \\boxed{3}, then corrected: \\boxed{4}", "4") == 1.0
    assert math_reward("First \\boxed{3}, then corrected: \\boxed{4}", "3") == 0.0
    assert math_reward("<think>It might be 2, but it is 7.</think>", "7") == 1.0
    assert math_reward("<think>It might be 2, but it is 7.</think>", "2") == 0.0


def test_gold_error_names_unparseable_golds():
    for good in ["12", "\\frac{3}{4}", "x^2+1", "\\text{Monday}", "(1,2)"]:
        assert gold_error(good) is None, good
    for bad in ["", "\\frac{", "}", "$$"]:
        assert gold_error(bad), bad


def test_math_reward_known_values_and_model_garbage():
    assert math_reward("<answer>0.5</answer>", "\\frac{1}{2}") == 1.0
    assert math_reward("<answer>x^2+2x+1</answer>", "(x+1)^2") == 1.0
    assert math_reward("<answer>4/3</answer>", "\\frac{3}{4}") == 0.0
    for junk in ["", "\\frac{", "}}}}{{{{", "\\begin{matrix", "x" * 5000, "__import__('os')"]:
        assert math_reward(junk, "1") == 0.0


def test_math_time_limit_is_hard_and_works_in_threads():
    verifier = MathVerifier(timeout_s=1e-4)  # far below one round trip: every check times out
    results = []
    thread = threading.Thread(target=lambda: results.append(verifier.verify("$1$", "1")))
    thread.start()
    thread.join(timeout=60)
    assert results == [None] and verifier.timeouts == 1
    verifier.timeout_s = 30.0  # the worker restarts on the next call and answers again
    assert verifier.verify("$\\frac{1}{2}$", "0.5") is True
    verifier.close()
    with ThreadPoolExecutor(4) as pool:  # many threads share the per-process worker safely
        got = list(pool.map(lambda a: math_reward(f"<answer>{a}</answer>", "2"), ["2", "3"] * 8))
    assert got == [1.0, 0.0] * 8


@pytest.mark.parametrize("completion,gold,expected", [
    # reward.math_numeric_answer: a plain-number gold is compared with the last number stated
    ("97 + 87", "184", 0.0), ("<answer>97 + 87</answer>", "184", 0.0),
    ("97 + 87 = 184", "184", 1.0), ("<answer>\\boxed{184}</answer>", "184", 1.0),
    ("<answer>2^{10}</answer>", "1024", 0.0), ("<answer>1,010</answer>", "1010", 1.0),
    ("x + 11 = 22", "11", 0.0), ("x = 11.", "11", 1.0), ("<answer>-7</answer>", "-7", 1.0),
    ("no number", "3", 0.0),
    # a gold that is not one plain number is scored as without the option
    ("<answer>2^{1/2}</answer>", "\\sqrt{2}", 1.0), ("<answer>x^2+2x+1</answer>", "(x+1)^2", 1.0),
])
def test_numeric_answer_scores_the_stated_number(completion, gold, expected):
    assert math_reward(completion, gold, numeric_answer=True) == expected


def test_numeric_answer_is_off_by_default_and_set_by_the_reward_config():
    from mixed_r1.rewards import MixedReward, RewardConfig

    sample = {"id": "m", "task_type": "math", "solution": "184"}
    assert math_reward("97 + 87", "184") == 1.0  # an equivalent expression, by default
    assert MixedReward()(["97 + 87"], [sample]).accuracy == [1.0]
    strict = MixedReward(RewardConfig(math_numeric_answer=True))
    assert strict(["97 + 87", "97 + 87 = 184"], [sample, sample]).accuracy == [0.0, 1.0]


# sympy starts evaluating a power tower with a 370-million-digit exponent: math-verify never
# returns on this (by hand: still running when killed after 60 s, at about 120 MB of memory)
HANGS_MATH_VERIFY = "9^{9^{9^{9}}}"


def test_an_input_that_really_hangs_math_verify_scores_0_and_is_counted():
    verifier = get_verifier(3.0)
    before = verifier.timeouts
    start = time.monotonic()
    assert math_reward(f"<answer>{HANGS_MATH_VERIFY}</answer>", "1", timeout_s=3.0) == 0.0
    assert time.monotonic() - start < 60
    assert verifier.timeouts == before + 1
    # the killed child is replaced on the next check, which answers normally
    assert math_reward("<answer>2^{10}</answer>", "1024", timeout_s=3.0) == 1.0


# ------------------------------------------------------------------ several values (issue 32)
# Offering several values scores 0 against one of them whatever joins them, as `2 \text{ or } 3`
# already does; the same answer is right against a gold that is that set of values.
OR_SPELLINGS = [
    r"2 \lor 3", r"2 \vee 3", "2 ∨ 3", r"2 \mathrm{or} 3", r"2 \textrm{or} 3",
    r"2 \,\text{or}\, 3", r"2 \operatorname{or} 3", r"2 \textbf{ or } 3", r"2 \mbox{ or } 3",
    r"2 ,\text{or}, 3", r"x=2 \lor x=3", r"x = 2 \vee x = 3", r"\boxed{2 \lor 3}", r"$2 \vee 3$",
    r"3 \lor 2", r"2 \land 3", r"2 \wedge 3",
]


@pytest.mark.parametrize("answer", OR_SPELLINGS)
def test_values_joined_by_or_in_any_spelling_are_all_offered(answer):
    completion = f"<think>…</think><answer>{answer}</answer>"
    assert math_reward(completion, "2") == 0.0
    assert math_reward(completion, "3") == 0.0
    assert math_reward(completion, "2, 3") == 1.0        # a gold that is the set of both values


@pytest.mark.parametrize("answer", [
    # spellings math-verify already read as the set (regression guards)
    r"2 \text{ or } 3", r"2 \quad\text{or}\quad 3", "2 or 3", r"x=2 \text{ or } x=3",
    r"2 \text{or} 3", r"2\ \text{or}\ 3",
])
def test_text_or_spellings_stay_a_set(answer):
    completion = f"<answer>{answer}</answer>"
    assert [math_reward(completion, g) for g in ("2", "3", "2, 3")] == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("gold", [r"2 \lor 3", r"x = 2 \vee x = 3", r"x=2 \lor x=3"])
def test_a_gold_written_with_or_is_the_set_of_its_values(gold):
    assert gold_error(gold) is None
    assert math_reward("<answer>3</answer>", gold) == 0.0
    assert math_reward("<answer>2, 3</answer>", gold) == 1.0
    assert math_reward(r"<answer>x = 3 \text{ or } x = 2</answer>", gold) == 1.0


@pytest.mark.parametrize("gold", ["2, 3", r"\{2, 3\}", r"x = 2 \text{ or } x = 3"])
def test_a_set_gold_accepts_the_set_in_any_spelling(gold):
    for answer in (r"x=2 \lor x=3", r"3 \vee 2", "2 ∨ 3", r"2 \,\text{or}\, 3"):
        assert math_reward(f"<answer>{answer}</answer>", gold) == 1.0, answer


@pytest.mark.parametrize("completion", [
    "<answer>x = 2 or x = 3</answer>", r"<answer>x = 2 \lor x = 3</answer>",
    r"<answer>\boxed{2 \vee 3}</answer>", "<answer>2, 3</answer>", "<answer>2 and 3</answer>",
    r"The roots are $x=2$ or $x=3$, so \boxed{2 \text{ or } 3}", "It is either 2 or 3.",
])
def test_the_stated_number_is_not_the_last_of_several_values(completion):
    assert math_reward(completion, "3", numeric_answer=True) == 0.0
    assert math_reward(completion, "3") == 0.0


@pytest.mark.parametrize("completion,right,wrong", [
    # the last number stated reads numbers as the chart reward does: a decimal comma is a decimal
    # point, a thousands separator is dropped, an ambiguous run is no number
    ("<answer>3,5</answer>", "3.5", "5"), ("The result is 3,5 litres.", "3.5", "5"),
    ("<answer>x = 1.234,5</answer>", "1234.5", "5"), ("<answer>−0,25</answer>", "-0.25", "25"),
    ("So 1 234,5 in total.", "1234.5", "234.5"), ("<answer>12,34,567</answer>", "1234567", "567"),
])
def test_the_stated_number_reads_locale_decimals(completion, right, wrong):
    assert math_reward(completion, right, numeric_answer=True) == 1.0
    assert math_reward(completion, wrong, numeric_answer=True) == 0.0


def test_an_ambiguous_stated_number_is_no_number():
    for completion in ("<answer>1,234,5</answer>", "Therefore it is 1,234,5."):
        for gold in ("5", "1234.5", "1234"):
            assert math_reward(completion, gold, numeric_answer=True) == 0.0, (completion, gold)
    assert final_math_answer("Therefore it is 1,234,5.") is None


@pytest.mark.parametrize("text", [
    "or" * 50000, r"\lor" * 20000, r"\quad" * 20000 + r"\lor 3", " " * 100000 + "or",
    "1,2" * 30000, "1 234 " * 15000 + "567,5", "\x00\ud800∨" * 1000, r"\text{" * 30000,
])
def test_stated_number_and_alternatives_are_total_on_hostile_text(text):
    start = time.perf_counter()
    for completion in (text, f"<answer>{text}</answer>"):
        for numeric in (True, False):
            assert isinstance(final_math_answer(completion, numeric=numeric), (str, type(None)))
    assert time.perf_counter() - start < 5.0


class CharTokenizer:
    """Independent toy tokenizer: one id per character."""

    def encode(self, text):
        return [ord(c) % 97 for c in text]


def bmas_float64(a, s):
    a = a.double() / a.double().norm(dim=-1, keepdim=True)
    s = s.double() / s.double().norm(dim=-1, keepdim=True)
    best_a = [max(float(a[i] @ s[j]) for j in range(len(s))) for i in range(len(a))]
    best_s = [max(float(a[i] @ s[j]) for i in range(len(a))) for j in range(len(s))]
    return float(np.clip(0.5 * (np.mean(best_a) + np.mean(best_s)), 0, 1))


def test_bmas_matches_float64_loops_with_a_table_embedder():
    torch.manual_seed(0)
    weight = torch.randn(97, 16).abs()  # positive: similarities inside [0, 1]
    emb = TableEmbedder(CharTokenizer(), weight)
    for answer, solution in [("a red cube", "a blue cube"), ("xyz", "abc"), ("hello", "hello!")]:
        a, s = emb.embed([answer, solution])
        assert bmas_reward(f"<answer>{answer}</answer>", solution, emb) == \
            pytest.approx(bmas_float64(a, s), abs=1e-5)
    assert bmas_score(torch.zeros(0, 16), torch.ones(3, 16)) == 0.0


def test_bmas_rules_with_minilm():
    emb = MiniLMEmbedder()
    text = "A red triangle above a blue square."
    assert bmas_reward(f"<answer>{text}</answer>", text, emb) == 1.0
    assert bmas_reward("<answer></answer>", text, emb) == 0.0
    assert bmas_reward("", text, emb) == 0.0
    close = bmas_reward("A blue square below a red triangle.", text, emb)
    far = bmas_reward("The stock market fell sharply on Monday.", text, emb)
    assert 0.0 <= far < close < 1.0
    assert bmas_reward("two green circles", text, emb) == \
        pytest.approx(bmas_reward(text, "two green circles", emb), abs=1e-5)  # symmetric

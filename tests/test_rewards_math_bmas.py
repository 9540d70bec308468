"""math_reward against math-verify itself, its hard time limit, and BMAS against float64 loops."""
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from mixed_r1.rewards import MiniLMEmbedder, TableEmbedder, bmas_reward, math_reward
from mixed_r1.rewards.bmas import bmas_score
from mixed_r1.rewards.math import MathVerifier, wrap_gold

# (gold, answer) pairs in the spirit of math-verify's own README examples
MATH_CASES = [
    ("\\frac{1}{2}", "0.5"), ("\\frac{1}{2}", "1/2"), ("\\frac{1}{2}", "$\\frac{2}{4}$"),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}"), ("\\frac{1}{2}", "0.6"), ("(x+1)^2", "x^2+2x+1"),
    ("(x+1)^2", "x^2+1"), ("\\sqrt{2}", "2^{1/2}"), ("\\{1,2,3\\}", "\\{3,2,1\\}"),
    ("50\\%", "0.5"), ("3", "The answer is $3$."), ("3", "4"), ("\\pi", "3.14159265358979"),
    ("x=2", "2"), ("[1, 2]", "[1,2]"), ("-7", "-7.0"),
]


@pytest.mark.parametrize("gold,answer", MATH_CASES)
def test_math_reward_matches_math_verify(gold, answer):
    from math_verify import parse, verify

    g = parse(wrap_gold(gold), parsing_timeout=None)
    p = parse(answer, parsing_timeout=None) or parse(f"${answer}$", parsing_timeout=None)
    expected = 1.0 if (g and p and verify(g, p, timeout_seconds=None)) else 0.0
    assert math_reward(f"<think>…</think><answer>{answer}</answer>", gold) == expected


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

"""Chart reward: ChartQA's relaxed accuracy, 0 or 1.

The rule is ChartQA's relaxed accuracy (Masry et al., "ChartQA: A Benchmark for Question Answering
about Charts with Visual and Logical Reasoning", Findings of ACL 2022, which takes it from Methani
et al., PlotQA, 2020): a numeric solution is matched by the number the answer states within
``tolerance`` (5 %) relative error (exact when the solution is 0); any other solution is a
case-insensitive exact match after trimming whitespace and a final period.

The number the answer states (:func:`~mixed_r1.rewards.parsing.parse_number`): the whole answer
when it is one number, else its last number — with or without an answer tag, the last number
stated is the committed one; currency, a percent sign or a short unit allowed. A percent sign may
be read either way: ``12%`` matches ``12`` and ``0.12``.

How digits and separators read (:func:`~mixed_r1.rewards.parsing.number_text`; the same rule
reads solutions, and the math reward's stated numbers):

* a point is a decimal point and commas group thousands in threes: ``1,234`` is 1234, ``1,234.5``
  is 1234.5, ``12,345,678``, also Indian lakh grouping ``12,34,567``;
* a comma that cannot group thousands is a decimal comma: ``3,5`` is 3.5 (not 5, not 35),
  ``0,125`` is 0.125; with points grouping thousands: ``1.234,5`` is 1234.5, ``1.234.567``;
* spaces group thousands (``1 234,5``, ``1 234.5``; a no-break, narrow no-break or thin space
  anywhere, a plain space with a decimal part or where the whole answer is the number,
  ``1 234``);
* ``1,234`` (1234) and ``1.234`` (1.234) keep their English reading;
* anything else made of digits and separators (``1,234,5``, ``1.234.5``, ``10,20,30``) is no
  number, and an answer whose number it is scores 0 against a numeric solution: it is never read
  as some of its digits.
"""
from __future__ import annotations

import math

from mixed_r1.rewards.parsing import extract_answer, parse_number, parse_whole_number


def relaxed_equal(pred: float, target: float, tolerance: float = 0.05) -> bool:
    """``|pred − target| ≤ tolerance·|target|``; exact equality when ``target == 0``."""
    if not (math.isfinite(pred) and math.isfinite(target)):
        return False
    if target == 0:
        return pred == 0
    return abs(pred - target) <= tolerance * abs(target)


def _trim(text: str) -> str:
    return text.strip().rstrip(".").strip().casefold()


def chart_reward(completion: str, solution: str, tolerance: float = 0.05) -> float:
    """1.0 iff the answer equals the solution under ChartQA's relaxed accuracy (module doc)."""
    answer = extract_answer(completion)
    if not answer:
        return 0.0
    target = parse_whole_number(str(solution))
    if target is not None:
        pred = parse_number(answer)
        if pred is None:
            return 0.0
        (p, p_pct), (t, t_pct) = pred, target
        candidates = [(p, t)]
        if p_pct != t_pct:  # 12% vs 0.12: compare as fractions too
            candidates.append((p / 100 if p_pct else p, t / 100 if t_pct else t))
        return 1.0 if any(relaxed_equal(a, b, tolerance) for a, b in candidates) else 0.0
    return 1.0 if _trim(answer) == _trim(str(solution)) and _trim(answer) else 0.0


"""Chart reward: ChartQA's relaxed accuracy, 0 or 1.

A numeric solution is matched by the number the answer states (see
:func:`~mixed_r1.rewards.parsing.parse_number`: the whole answer when it is one number, else its
last number — with or without an answer tag, the last number stated is the committed one;
thousands separators, currency, a percent sign or a short unit allowed) within ``tolerance``
relative error (exact when the solution is 0). A percent sign may be read either way: ``12%``
matches ``12`` and ``0.12``. Any other solution is a case-insensitive exact match after trimming
whitespace and a final period.
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


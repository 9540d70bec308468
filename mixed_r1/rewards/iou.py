"""IoU reward for grounding: the answer's box against the solution box (the first box of the
tagged answer; without an answer tag, the last box the completion states)."""
from __future__ import annotations

from collections.abc import Sequence

from mixed_r1.rewards.parsing import Box, answer_span, find_first_box, find_last_box, valid_box


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes (continuous coordinates)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return min(1.0, max(0.0, inter / union)) if union > 0 else 0.0


def parse_solution_box(solution: Sequence[float] | str) -> Box:
    """The solution box from four numbers or their text; a bad box is a data error."""
    box = valid_box(find_first_box(solution) if isinstance(solution, str) else solution)
    if box is None:
        raise ValueError(f"iou_reward: solution {solution!r} is not a box [x1, y1, x2, y2] "
                         "of finite numbers with x1 < x2 and y1 < y2")
    return box


def iou_reward(completion: str, solution: Sequence[float] | str,
               threshold: float | None = None) -> float:
    """IoU of the answer's box with the solution box, in [0, 1].

    The box is the first one inside the ``<answer>`` tag, or without a tag the last one in the
    completion (its committed answer): a ``[x1, y1, x2, y2]`` list (also as a Qwen2.5-VL
    ``{"bbox_2d": […]}``) or ``(x1, y1), (x2, y2)``; a malformed, degenerate or non-finite box
    scores 0. With ``threshold`` set the reward is 1.0 iff IoU ≥ threshold, else 0.0.
    """
    target = parse_solution_box(solution)
    answer, tagged = answer_span(completion)
    box = valid_box((find_first_box(answer) if tagged else find_last_box(answer)) or ())
    iou = box_iou(box, target) if box is not None else 0.0
    if threshold is not None:
        return 1.0 if iou >= threshold else 0.0
    return iou

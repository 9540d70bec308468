"""`mixed-r1 demo-rewards`: score a small mixed batch with Mixed-Reward.

Each task type gets a few completions of different quality (correct and well formatted,
correct without the format, wrong, hedged, malformed), scored in the worker pool; the table
shows the mean reward components per task type.
"""
from __future__ import annotations

import time

T = "<think>{}</think><answer>{}</answer>"

DEMO_BATCH: list[tuple[dict, list[str]]] = [
    ({"task_type": "yes_no", "solution": "yes"},
     [T.format("The circle is red.", "Yes"), "yes", T.format("hm", "No."), "I am not sure"]),
    ({"task_type": "multiple_choice", "solution": "B", "options": ["circle", "triangle", "square"]},
     [T.format("Three corners.", "B"), T.format("…", "triangle"), "The answer is (B).",
      T.format("either", "A or B"), T.format("…", "C")]),
    ({"task_type": "chart", "solution": "1,250"},
     [T.format("Sum the bars.", "1250"), T.format("≈", "1,200 units"), "$1.3k",
      T.format("…", "12")]),
    ({"task_type": "math", "solution": "\\frac{3}{4}"},
     [T.format("6/8 simplifies.", "0.75"), T.format("…", "\\frac{6}{8}"), "3/4",
      T.format("…", "4/3")]),
    ({"task_type": "grounding", "solution": [10, 20, 110, 220]},
     [T.format("It is left.", '{"bbox_2d": [10, 20, 110, 220]}'),
      T.format("…", "(20, 30), (120, 230)"), "[0, 0, 50, 50]", T.format("…", "[nan, 1, 2, 3]")]),
    ({"task_type": "open_ended", "solution": "A red triangle above a blue square."},
     [T.format("Look.", "A red triangle above a blue square."),
      T.format("Look.", "A blue square below a red triangle."),
      T.format("Look.", "Two green circles."), ""]),
]


def run_reward_demo(num_workers: int = 2) -> dict[str, dict[str, float]]:
    """Score :data:`DEMO_BATCH`, print a table per task type and return it."""
    from mixed_r1.rewards import MixedReward, RewardConfig

    completions = [c for _, comps in DEMO_BATCH for c in comps]
    samples = [s for s, comps in DEMO_BATCH for _ in comps]
    reward = MixedReward(RewardConfig(num_workers=num_workers))
    try:
        start = time.perf_counter()
        batch = reward(completions, samples)
        seconds = time.perf_counter() - start
    finally:
        reward.close()
    print(f"Mixed-Reward on {len(samples)} completions ({num_workers} workers, "
          f"{seconds * 1e3:.0f} ms incl. embedder load)\n")
    print(f"{'completion':<58} {'task':<16} {'acc':>5} {'fmt':>4} {'total':>6}")
    for c, t, a, f, tot in zip(completions, batch.task_types, batch.accuracy, batch.format,
                               batch.total):
        shown = c.replace("\n", " ")
        shown = shown if len(shown) <= 56 else shown[:55] + "…"
        print(f"{shown!s:<58} {t:<16} {a:5.2f} {f:4.1f} {tot:6.2f}")
    table = batch.by_task()
    print(f"\n{'task type':<16} {'n':>3} {'accuracy':>9} {'format':>7} {'total':>6}")
    for task, s in table.items():
        print(f"{task:<16} {int(s['count']):>3} {s['accuracy']:9.3f} {s['format']:7.3f} "
              f"{s['total']:6.3f}")
    return table

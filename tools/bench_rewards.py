"""Rewards scored per second per task type, batch of 1,024, in-process vs the worker pool.

    python tools/bench_rewards.py [--batch 1024] [--workers 2] [--repeats 3]

Completions are a realistic mix per task (correct, wrong, unformatted, hedged); the pool is
started before timing (its start-up is a one-off per run). Open-ended rows use the policy-
style table embedder (a random [vocab, 256] table with a byte tokenizer) and MiniLM.
"""
from __future__ import annotations

import argparse
import random
import time

import torch

from mixed_r1.rewards import MixedReward, RewardConfig, TableEmbedder

T = "<think>{}</think><answer>{}</answer>"


def make_batch(task: str, n: int, rng: random.Random) -> tuple[list[str], list[dict]]:
    comps, samples = [], []
    for _ in range(n):
        r = rng.random()
        if task == "yes_no":
            sol = rng.choice(["yes", "no"])
            ans = rng.choice(["Yes", "No.", "yes, it is", "I am not sure"])
            sample = {"task_type": task, "solution": sol}
        elif task == "multiple_choice":
            sample = {"task_type": task, "solution": rng.choice("ABCD"),
                      "options": ["circle", "triangle", "square", "rectangle"]}
            ans = rng.choice(["B", "(C)", "The answer is A", "A or B", "square", "Option D"])
        elif task == "chart":
            v = rng.randint(1, 10**6)
            sample = {"task_type": task, "solution": f"{v:,}"}
            ans = rng.choice([f"{v}", f"{v * 1.03:.1f} units", f"{v * 2}", "blue"])
        elif task == "math":
            a, b = rng.randint(1, 50), rng.randint(1, 50)
            sample = {"task_type": task, "solution": f"\\frac{{{a}}}{{{b}}}"}
            ans = rng.choice([f"{a}/{b}", f"{a / b:.6f}", f"\\frac{{{2 * a}}}{{{2 * b}}}", f"{b}/{a}"])
        elif task == "grounding":
            x, y = rng.uniform(0, 400), rng.uniform(0, 400)
            sample = {"task_type": task, "solution": [x, y, x + 100, y + 80]}
            dx = rng.uniform(-30, 30)
            ans = rng.choice([f'{{"bbox_2d": [{x + dx:.0f}, {y:.0f}, {x + 100 + dx:.0f}, {y + 80:.0f}]}}',
                              f"({x:.1f}, {y:.1f}), ({x + 90:.1f}, {y + 70:.1f})", "[1, 2, 3]"])
        else:
            sample = {"task_type": task, "solution": "a red triangle above a small blue square"}
            ans = rng.choice(["a red triangle above a blue square", "two green circles",
                              "the triangle is red and the square below it is blue"])
        comps.append(T.format("reasoning " * 20, ans) if r < 0.8 else ans)
        samples.append(sample)
    return comps, samples


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", "replace"))


def rate(reward: MixedReward, comps: list[str], samples: list[dict], repeats: int) -> float:
    reward(comps[:8], samples[:8])  # warm-up (workers, math child, embedder)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reward(comps, samples)
        best = min(best, time.perf_counter() - start)
    return len(comps) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(0)
    table = TableEmbedder(ByteTokenizer(), torch.randn(256, 256))
    serial = MixedReward(RewardConfig(), embedder=table)
    pooled = MixedReward(RewardConfig(num_workers=args.workers), embedder=table)
    minilm = MixedReward(RewardConfig(bmas_embedder="minilm"))
    print(f"rewards/s, batch {args.batch}, best of {args.repeats}, torch threads "
          f"{torch.get_num_threads()}\n")
    print(f"| task type | in-process | pool ({args.workers} workers) |")
    print("|---|---:|---:|")
    try:
        for task in ("yes_no", "multiple_choice", "chart", "math", "grounding", "open_ended"):
            comps, samples = make_batch(task, args.batch, rng)
            r1 = rate(serial, comps, samples, args.repeats)
            r2 = rate(pooled, comps, samples, args.repeats)
            print(f"| {task} | {r1:,.0f} | {r2:,.0f} |")
        comps, samples = make_batch("open_ended", args.batch, rng)
        print(f"| open_ended (MiniLM embedder) | {rate(minilm, comps, samples, 1):,.0f} | – |")
    finally:
        pooled.close()


if __name__ == "__main__":
    main()

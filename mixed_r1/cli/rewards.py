"""``mixed-r1 demo-rewards [--workers N]`` (:func:`mixed_r1.rewards.demo.run_reward_demo`)."""
from __future__ import annotations

import argparse


def _demo_rewards(args: argparse.Namespace) -> int:
    from mixed_r1.rewards.demo import run_reward_demo

    run_reward_demo(args.workers)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo-rewards", help="score a small mixed batch with Mixed-Reward")
    from mixed_r1.cli import int_at_least

    p.add_argument("--workers", type=int_at_least(1), default=2,
                   help="reward worker processes (default: %(default)s)")
    p.set_defaults(func=_demo_rewards)

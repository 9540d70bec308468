"""``mixed-r1 demo [--out DIR] [--quick]`` (:func:`mixed_r1.demo.run_demo`)."""
from __future__ import annotations

import argparse


def _demo(args: argparse.Namespace) -> int:
    from mixed_r1.demo import run_demo

    run_demo(args.out, quick=args.quick)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Mixed-R1 end to end on a CPU: data, warm start, GRPO")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    p.set_defaults(func=_demo)

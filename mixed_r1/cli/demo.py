"""``mixed-r1 demo [--out DIR] [--quick] [--multimodal]`` (:mod:`mixed_r1.demo`)."""
from __future__ import annotations

import argparse


def _demo(args: argparse.Namespace) -> int:
    if args.multimodal:
        from mixed_r1.demo import run_multimodal_demo

        run_multimodal_demo(args.out or "runs/demo_multimodal", quick=args.quick)
    else:
        from mixed_r1.demo import run_text_demo

        run_text_demo(args.out or "runs/demo", quick=args.quick)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="GRPO with Mixed-Reward end to end on a CPU: SmolLM2 learns "
                                    "the text mixed set (--multimodal: the image pipeline)")
    p.add_argument("--out", default=None,
                   help="output directory (default runs/demo, runs/demo_multimodal)")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run")
    p.add_argument("--multimodal", action="store_true",
                   help="the multimodal pipeline check: real images, a tiny Qwen2.5-VL policy, "
                        "all six task types")
    p.set_defaults(func=_demo)

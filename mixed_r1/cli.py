"""`mixed-r1 <command>`: the command-line entry point.

Each area registers its own sub-commands (``register(subparsers)``) so that this file stays a
thin router and imports heavy modules only for the command that runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# modules that expose ``register(subparsers)``; missing ones are simply not offered
_COMMAND_MODULES = (
    "mixed_r1.rewards.demo",
    "mixed_r1.data.cli",
    "mixed_r1.convert_cli",
    "mixed_r1.train_cli",
    "mixed_r1.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixed-r1", description="Mixed-R1 GRPO post-training")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real missing dependency inside the module: say so
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

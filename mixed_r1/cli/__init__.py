"""`mixed-r1 <command>`: the command-line entry point.

One module per command group in this package (``train`` = train/eval/plot/bench, ``sft``,
``data``, ``convert``, ``plan``, ``demo``, ``rewards`` = demo-rewards), each defining its parsers
once in
``register(subparsers)``; the library code a command calls lives outside ``mixed_r1.cli`` and is
imported inside the command, so ``mixed-r1 --help`` loads no torch.

Errors (:func:`run_command`, the one place): an error the user caused — a config
(:class:`~mixed_r1.config.ConfigError`), data (:class:`~mixed_r1.data.schema.DataError`),
checkpoint or model file (:class:`~mixed_r1.checkpoint.CheckpointError`), weights that do not fit
the model (:class:`~mixed_r1.engine.ModelMismatchError`), a model directory's processor
(:class:`~mixed_r1.models.processor.ProcessorError`), an unsupported model config, a bad
argument (:class:`UsageError`), a missing/existing file or directory — prints one line
``error: <message>`` (naming the file, row or key) on stderr and exits 2. ``--debug`` (anywhere on
the command line) re-raises it with its traceback instead. Anything else is a bug and keeps its
traceback. Training stopped by SIGINT/SIGTERM (:class:`~mixed_r1.checkpoint.TrainingInterrupted`)
prints where its checkpoint is and exits 128 + signal (130 for SIGINT, 143 for SIGTERM); a
Ctrl-C elsewhere prints ``interrupted`` and exits 130.
"""
from __future__ import annotations

import argparse
import importlib
import math
import os
import re
import sys
from typing import Callable


class UsageError(SystemExit):
    """A bad command-line argument that argparse could not catch: printed as ``error: <message>``
    with exit status 2 (a SystemExit, like argparse's own usage errors; ``str()`` is the message).
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = 2

def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``low``; otherwise argparse's one-line usage error
    (exit 2), raised while parsing, before a command loads anything."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(low: float, high: float, *, low_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in ``[low, high]`` (``(low, high]`` with
    ``low_open``); otherwise argparse's one-line usage error (exit 2)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if (not math.isfinite(value) or not (low < value if low_open else low <= value)
                or not value <= high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {text}")
        return value

    parse.__name__ = f"number in [{low:g}, {high:g}]"
    return parse


# modules that expose ``register(subparsers)``; missing ones are simply not offered
_COMMAND_MODULES = (
    "mixed_r1.cli.rewards",
    "mixed_r1.cli.data",
    "mixed_r1.cli.convert",
    "mixed_r1.cli.train",
    "mixed_r1.cli.sft",
    "mixed_r1.cli.demo",
    "mixed_r1.cli.plan",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mixed-r1", description="Mixed-R1 GRPO post-training")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error instead of one 'error:' line "
                             "(accepted anywhere on the command line)")
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


def _user_error_types() -> tuple[type[BaseException], ...]:
    """The exception types a user causes (imported only once an error happened)."""
    from mixed_r1.checkpoint import CheckpointError
    from mixed_r1.config import ConfigError
    from mixed_r1.data.schema import DataError
    from mixed_r1.engine.base import ModelMismatchError
    from mixed_r1.models.config import UnsupportedConfigError
    from mixed_r1.models.processor import ProcessorError

    return (ConfigError, DataError, CheckpointError, ModelMismatchError, ProcessorError,
            UnsupportedConfigError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError)


def error_line(exc: BaseException) -> str:
    """``exc``'s message on one line (the modules' messages name the file, row or key already;
    :func:`mixed_r1.config.load_config` words a YAML syntax error as its line, column and
    problem)."""
    return re.sub(r"\s*\n\s*", " ", str(exc)).strip()


def _rank_prefix() -> str:
    rank = os.environ.get("RANK", "0")
    return "" if rank in ("", "0") else f"[rank {rank}] "


def run_command(fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Call ``fn`` (a command) with the CLI's error rules (module docstring); its exit status."""
    from mixed_r1.checkpoint import TrainingInterrupted

    try:
        return int(fn() or 0)
    except TrainingInterrupted as exc:
        if debug:
            raise
        print(f"{_rank_prefix()}{exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except UsageError as exc:
        print(f"{_rank_prefix()}error: {error_line(exc)}", file=sys.stderr, flush=True)
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{_rank_prefix()}interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:
        if debug or not isinstance(exc, _user_error_types()):
            raise
        print(f"{_rank_prefix()}error: {error_line(exc)}", file=sys.stderr, flush=True)
        return 2


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without its ``--debug`` flags (before a ``--``), and whether there was one."""
    end = argv.index("--") if "--" in argv else len(argv)
    rest = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    return rest, len(rest) != len(argv)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed by :func:`build_parser`, where a command taking ``key.sub=value``
    overrides (``train``, ``sft``, ``bench``) accepts them on both sides of its flags, as in
    ``train --config C out_dir=X --overwrite steps=1`` (argparse alone ends a ``nargs="*"``
    positional at the first flag and calls what follows unrecognized). Overrides keep their
    command-line order, so a later one wins. Anything else unrecognized is argparse's usage error
    (exit 2)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "overrides", None), list):
        stray = [a for a in extras if a.startswith("-") or "=" not in a]
        if not stray:
            args.overrides = args.overrides + extras
            extras = []
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def quiet_progress_bars(stream=None) -> bool:
    """Off a terminal (``stream``, default stderr, is a log file or a pipe), turn off the tqdm
    bars of the libraries a command calls (transformers' weight loading, the GGUF reader,
    huggingface_hub) through the environment they read at import (``TQDM_DISABLE``,
    ``HF_HUB_DISABLE_PROGRESS_BARS``), unless the user set those; a bar's carriage returns make
    one unreadable line of a log. True when it did. Run progress itself is one line per step
    (:class:`mixed_r1.metrics.MetricsLogger`)."""
    stream = sys.stderr if stream is None else stream
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if terminal:
        return False
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return True


def main(argv: list[str] | None = None) -> int:
    quiet_progress_bars()
    argv, debug = split_debug(list(sys.argv[1:] if argv is None else argv))
    args = parse_args(argv)
    return run_command(lambda: args.func(args), debug=debug or args.debug)

"""``mixed-r1`` run in this test process: the same ``main`` the console script calls, its exit
status, stdout and stderr captured — for commands that are pure computation (``plan``), where a
fresh interpreter per call (torch and megatron imported again, 5-8 s each on 2 cores) costs
more than the check itself. Commands that train, install signal handlers or change the process
(``train``, ``demo``) keep running in a subprocess."""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path = ROOT) -> CliResult:
    """``mixed-r1 ARGS`` in-process from ``cwd``; SystemExit's code is the return code."""
    from mixed_r1.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, (int, type(None))):
                    print(exc.code, file=err)
    finally:
        os.chdir(old)
    return CliResult(int(code or 0), out.getvalue(), err.getvalue())

"""Math reward: symbolic equivalence with math-verify under a hard per-call time limit.

math-verify's own timeout uses ``signal.alarm``, which only works in a process's main
thread. Here every check runs in a small persistent child process per calling process
(:class:`MathVerifier`); a check that exceeds its limit kills the child (it is restarted on
the next call) and scores 0. The limit therefore holds in threads, in worker processes and
against parsers that hang in C code or crash the interpreter.
"""
from __future__ import annotations

import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from mixed_r1.rewards.parsing import extract_answer

log = logging.getLogger(__name__)
_WORKER = Path(__file__).with_name("_math_worker.py")
_STARTUP_TIMEOUT_S = 60.0


def wrap_gold(solution: str) -> str:
    """Gold answers go to math-verify inside ``$…$`` unless already delimited or boxed."""
    solution = solution.strip()
    if "$" in solution or "\\boxed" in solution or "\\(" in solution or "\\[" in solution:
        return solution
    return f"${solution}$"


class MathVerifier:
    """A math-verify child process with a hard time limit per check. Thread-safe."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.timeouts = 0  # checks killed at the limit
        self.crashes = 0  # child died mid-check
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self._lock = threading.Lock()

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-P", str(_WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0,
        )
        self._proc, self._buf = proc, b""
        if self._read_line(_STARTUP_TIMEOUT_S) is None:
            self._kill()
            raise RuntimeError(f"math-verify worker {_WORKER} did not start within "
                               f"{_STARTUP_TIMEOUT_S:.0f}s; is math-verify installed?")
        return proc

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._proc, self._buf = None, b""

    def _read_line(self, timeout: float) -> bytes | None:
        """One line from the child, or ``None`` on timeout or death."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def verify(self, gold: str, answer: str) -> bool | None:
        """``True``/``False`` from math-verify; ``None`` if it timed out or crashed."""
        request = json.dumps({"gold": gold, "answer": answer}).encode() + b"\n"
        with self._lock:
            proc = self._proc if self._proc is not None and self._proc.poll() is None else None
            proc = proc or self._start()
            try:
                proc.stdin.write(request)  # type: ignore[union-attr]
            except (BrokenPipeError, OSError):
                self.crashes += 1
                self._kill()
                return None
            line = self._read_line(self.timeout_s)
            if line is None:
                if proc.poll() is None:
                    self.timeouts += 1
                    log.warning("math_reward: check exceeded %.1fs, scored 0", self.timeout_s)
                else:
                    self.crashes += 1
                    log.warning("math_reward: math-verify worker died, scored 0")
                self._kill()
                return None
            return json.loads(line).get("ok") is True

    def close(self) -> None:
        with self._lock:
            self._kill()

    def __del__(self) -> None:  # best effort: do not leave children behind
        try:
            self._kill()
        except Exception:
            pass


_verifiers: dict[tuple[int, float], MathVerifier] = {}


def get_verifier(timeout_s: float = 5.0) -> MathVerifier:
    """The calling process's verifier (a forked child never reuses its parent's worker)."""
    key = (os.getpid(), float(timeout_s))
    if key not in _verifiers:
        _verifiers[key] = MathVerifier(timeout_s)
    return _verifiers[key]


def math_reward(completion: str, solution: str, timeout_s: float = 5.0) -> float:
    """1.0 iff math-verify finds the answer equivalent to the solution (``$…$``-wrapped).

    A literal match (after normalising spacing and case) short-cuts the check; a check that
    exceeds ``timeout_s`` seconds or crashes scores 0.
    """
    answer = extract_answer(completion)
    if not answer:
        return 0.0
    solution = str(solution)
    if "".join(answer.split()).lower() == "".join(solution.split()).lower():
        return 1.0
    return 1.0 if get_verifier(timeout_s).verify(wrap_gold(solution), answer) else 0.0

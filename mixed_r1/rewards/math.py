"""Math reward: symbolic equivalence with math-verify under a hard per-call time limit.

Which expression is scored (:func:`final_math_answer`): the answer is the whole expression the
completion commits to, never a prefix of it. From the tag's content (or, without an answer tag,
from the whole completion): the content of the last box (``\\boxed{…}``, ``\\boxed x``,
``\\fbox{…}``, MATH reference conventions); else the content of the last ``$…$`` / ``\\(…\\)`` /
``\\[…\\]`` span; else, with a tag, the tag's whole content; without one, the last line when it is
a bare expression, else the last number stated. That expression reaches math-verify wrapped in
``$…$``, so ``2^{10}`` is read as 1024 and ``1 - \\sqrt{2}`` as itself (bare text would let
math-verify's plain-number extraction read only the leading ``2`` or ``1``).

Several values: an answer that offers several values scores 0 against a gold that is one value,
whatever joins them. Values joined by a logical or/and in any spelling (``2 \\lor 3``,
``2 \\vee 3``, ``2 ∨ 3``, ``2 \\text{ or } 3``, ``2 \\mathrm{or} 3``,
``2 \\quad\\text{or}\\quad 3``, ``2 \\,\\text{or}\\, 3``, ``x=2 \\text{ or } x=3``, ``2 or 3``) are
the list ``2 , 3`` (:func:`~mixed_r1.rewards.latex.join_alternatives`), which math-verify reads
as the set {2, 3}; the same is done to golds. So an answer listing the gold's set, in any order and spelling, is right
when the gold is a set of values (``2, 3``, ``\\{2, 3\\}``, ``x = 2 \\text{ or } x = 3``) and
wrong when it is one of them. "The last number stated" (the untagged fallback and
``numeric_answer``, :func:`stated_number`) is no number when it is the last of several values
offered together (``2 or 3``, ``2, 3``, ``2 and 3``, ``x = 2 \\lor x = 3``), and is read by the
chart reward's locale rule (:func:`~mixed_r1.rewards.parsing.number_text`: ``3,5`` is 3.5,
``1,234`` is 1234, ``1,234,5`` is no number); inside an expression a comma stays a list
separator (``\\boxed{3,5}`` is the set {3, 5}).

math-verify's own timeout uses ``signal.alarm``, which only works in a process's main
thread. Here every check runs in a small persistent child process per calling process
(:class:`MathVerifier`); a check that exceeds its limit kills the child (it is restarted on
the next call) and scores 0. The limit therefore holds in threads, in worker processes and
against parsers that hang in C code or crash the interpreter.

Golds: :func:`gold_error` says why math-verify cannot use a solution (the data layer raises it as
a data error naming file and row), so a bad gold never silently scores every answer 0.
"""
from __future__ import annotations

import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from mixed_r1.rewards.latex import is_bare_expression, join_alternatives, last_boxed, last_math_span
from mixed_r1.rewards.parsing import _NUM, answer_span, last_number, number_text, strip_tags

log = logging.getLogger(__name__)
_WORKER = Path(__file__).with_name("_math_worker.py")
_STARTUP_TIMEOUT_S = 60.0
GOLD_TIMEOUT_S = 10.0  # limit for checking that math-verify parses one gold (data validation)

# "n / " right before the last number: it is a fraction's denominator (3/4 stays a fraction)
_NUMERATOR_BEFORE_RE = re.compile(rf"(?<![\w.])(?P<num>{_NUM})\s*/\s*$")
# the last number is the second of several values: "2 , 3", "x = 2 , x = 3" (after
# join_alternatives), "2 and 3", "2; 3"
_ALTERNATIVE_BEFORE_RE = re.compile(r"[\d})\]]\s*(?:,|;|\band\b)\s*(?:[A-Za-z]\w*\s*=\s*)?$")
_DOLLARS_RE = re.compile(r"\\?\$")
# a gold that is one plain number (English notation: "1,234" is 1234, "3,5" is the set {3, 5})
_PLAIN_NUMBER_RE = re.compile(r"^\s*[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?\s*$"
                              r"|^\s*[-+−]?\.\d+\s*$")


def wrap_gold(solution: str) -> str:
    """Gold answers go to math-verify inside ``$…$`` unless already delimited or boxed; values
    joined by a logical or/and in any spelling are a list of values (:func:`join_alternatives`)."""
    solution = join_alternatives(solution.strip())
    if "$" in solution or "\\boxed" in solution or "\\(" in solution or "\\[" in solution:
        return solution
    return f"${solution}$"


def stated_number(text: str) -> str | None:
    """The last number ``text`` states, in plain form (``1,234`` → ``1234``, ``3,5`` → ``3.5``;
    :func:`~mixed_r1.rewards.parsing.number_text`'s rule), with a ``/ n`` before it kept as a
    fraction (``3/4``). ``None`` when there is none, when it is not a number by that rule, or when
    it is the last of several values offered together (``2 or 3``, ``x = 2 \\lor x = 3``,
    ``2, 3``, ``2 and 3``: :func:`~mixed_r1.rewards.latex.join_alternatives`)."""
    text = join_alternatives(text)
    span = last_number(text)
    if span is None:
        return None
    start, end = span
    value = number_text(text[start:end])
    if value is None:
        return None
    before = _NUMERATOR_BEFORE_RE.search(text, max(0, start - 200), start)
    if before is not None and value.isdecimal():
        numerator = number_text(before["num"])
        if numerator is None:
            return None
        value, start = f"{numerator}/{value}", before.start()
    if _ALTERNATIVE_BEFORE_RE.search(text, max(0, start - 200), start):
        return None
    return value


def final_math_answer(completion: object, *, numeric: bool = False) -> str | None:
    """The expression ``completion`` commits to (rule in the module doc), or ``None``.
    ``numeric``: the last number stated instead (GSM8K's rule, :func:`stated_number`), in the
    last box if there is one, else in the answer (the tag's content, or the whole completion);
    an unevaluated expression such as ``97 + 87`` then states ``87``."""
    text, tagged = answer_span(completion)
    if not text:
        return None
    if numeric:
        box = last_boxed(text)
        return stated_number(strip_tags(box if box is not None else text))
    expr = last_boxed(text)
    if expr is None:
        expr = last_math_span(text)
    if expr is None:
        if tagged:
            expr = text
        else:
            lines = [ln.strip() for ln in strip_tags(text).splitlines() if ln.strip()]
            line = lines[-1].rstrip(".").strip() if lines else ""
            expr = line if is_bare_expression(line) else stated_number(text)
    if expr is None:
        return None
    expr = _DOLLARS_RE.sub("", expr).strip()  # stray or escaped dollars are not delimiters here
    return join_alternatives(expr) or None


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

    def _ask(self, request: dict) -> dict | None:
        """One request to the child; ``None`` if it timed out or crashed (counted, logged)."""
        line_out = json.dumps(request).encode() + b"\n"
        with self._lock:
            proc = self._proc if self._proc is not None and self._proc.poll() is None else None
            proc = proc or self._start()
            try:
                proc.stdin.write(line_out)  # type: ignore[union-attr]
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
            return json.loads(line)

    def verify(self, gold: str, answer: str) -> bool | None:
        """``True``/``False`` from math-verify; ``None`` if it timed out or crashed."""
        reply = self._ask({"gold": gold, "answer": answer})
        return None if reply is None else reply.get("ok") is True

    def parses(self, gold: str) -> bool | None:
        """Whether math-verify parses ``gold`` to an expression (not a fallback string);
        ``None`` if it timed out or crashed."""
        reply = self._ask({"parse": gold})
        return None if reply is None else reply.get("ok") is True

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


def math_score(completion: str, solution: str, timeout_s: float = 5.0,
               numeric_answer: bool = False) -> float | None:
    """:func:`math_reward`, but ``None`` when the check did not finish (time limit or crash), so
    a caller can count it (:class:`~mixed_r1.rewards.router.MixedReward` does)."""
    solution = str(solution)
    numeric = numeric_answer and _PLAIN_NUMBER_RE.match(solution) is not None
    answer = final_math_answer(completion, numeric=numeric)
    if answer is None:
        return 0.0
    gold = wrap_gold(solution)
    if "".join(answer.split()).lower() in ("".join(solution.split()).lower(),
                                           "".join(gold.strip("$").split()).lower()):
        return 1.0
    ok = get_verifier(timeout_s).verify(gold, f"${answer}$")
    return None if ok is None else (1.0 if ok else 0.0)


def math_reward(completion: str, solution: str, timeout_s: float = 5.0,
                numeric_answer: bool = False) -> float:
    """1.0 iff math-verify finds the committed expression (:func:`final_math_answer`, wrapped in
    ``$…$``) equivalent to the solution (``$…$``-wrapped unless delimited), else 0.0.

    A literal match (after normalising spacing and case) short-cuts the check; a check that
    exceeds ``timeout_s`` seconds or crashes scores 0 (and is counted by the verifier).
    ``numeric_answer``: a solution that is one plain number is compared with the last number the
    answer states (``final_math_answer(numeric=True)``), so restating the question's
    ``97 + 87`` is not the answer 184; other solutions are scored as without it.
    """
    return math_score(completion, solution, timeout_s, numeric_answer) or 0.0


_gold_cache: dict[str, str | None] = {}


def gold_error(solution: object, timeout_s: float = GOLD_TIMEOUT_S) -> str | None:
    """Why ``solution`` cannot serve as a math gold, or ``None`` when math-verify parses it (as
    :func:`math_reward` passes it, :func:`wrap_gold`) to an expression. Cached per text."""
    gold = str(solution).strip()
    if gold in _gold_cache:
        return _gold_cache[gold]
    if not gold:
        problem: str | None = "the solution is empty"
    else:
        ok = get_verifier(timeout_s).parses(wrap_gold(gold))
        if ok is None:
            problem = f"math-verify did not parse it within {timeout_s:.0f}s"
        elif not ok:
            problem = "math-verify cannot parse it as an expression"
        else:
            problem = None
    if problem is not None or len(_gold_cache) < 100_000:
        _gold_cache[gold] = problem
    return problem

"""Worker processes that score rule-based rewards with a time limit per sample.

The parent hands out chunks of samples; a worker answers one message per sample, so the
parent always knows which sample a worker is on and since when. A worker that spends more
than ``timeout_s`` on one sample, or dies, is killed and replaced: that sample scores 0 and
is counted, and the rest of its chunk goes to the new worker. A training step never dies of
a reward.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import time
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger(__name__)

Item = tuple[int, Any]  # (index, payload)
ScoreFn = Callable[[Any], float]


_STARTUP_TIMEOUT_S = 120.0


def _worker_main(conn: Connection, score_fn: ScoreFn) -> None:
    conn.send("ready")  # imports are done: time limits start counting from here
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        for index, payload in chunk:
            error = None
            try:
                value = score_fn(payload)
                if not isinstance(value, tuple):  # (score, components) of a custom function
                    value = float(value)
            except Exception:  # a user's function (our rules never raise); never fatal
                value, error = float("nan"), traceback.format_exc()
            conn.send((index, value, error))


class _Worker:
    def __init__(self, ctx, score_fn: ScoreFn) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, score_fn), daemon=True)
        self.proc.start()
        child.close()
        self.pending: deque[Item] = deque()
        self.since = 0.0

    def wait_ready(self) -> None:
        if not self.conn.poll(_STARTUP_TIMEOUT_S) or self.conn.recv() != "ready":
            self.kill()
            raise RuntimeError(f"reward worker did not start within {_STARTUP_TIMEOUT_S:.0f}s")

    def give(self, chunk: list[Item]) -> None:
        self.pending.extend(chunk)
        self.since = time.monotonic()
        self.conn.send(chunk)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class ScoringPool:
    """``num_workers`` processes applying ``score_fn`` (a picklable top-level function)."""

    def __init__(self, score_fn: ScoreFn, num_workers: int, timeout_s: float = 10.0,
                 chunk_size: int = 32, start_method: str = "spawn") -> None:
        if num_workers < 1:
            raise ValueError(f"ScoringPool: num_workers must be ≥ 1, got {num_workers}")
        self.score_fn, self.timeout_s, self.chunk_size = score_fn, timeout_s, chunk_size
        self._ctx = mp.get_context(start_method)
        self._workers = [_Worker(self._ctx, score_fn) for _ in range(num_workers)]
        for w in self._workers:  # started together, awaited together
            w.wait_ready()
        self.failures = 0  # samples scored 0 because a worker hung, died or raised
        self._logged_error = False

    def map(self, items: list[Item]) -> dict[int, Any]:
        """Scores for every item index (a float, or the tuple a custom function's scorer
        returns); failed ones are 0.0 and counted in ``failures``."""
        results: dict[int, Any] = {}
        todo = deque(items[i:i + self.chunk_size] for i in range(0, len(items), self.chunk_size))
        while todo or any(w.pending for w in self._workers):
            for w in self._workers:
                if not w.pending and todo:
                    w.give(todo.popleft())
            busy = {w.conn: w for w in self._workers if w.pending}
            for conn in wait(list(busy), timeout=min(1.0, self.timeout_s)):
                w = busy[conn]
                try:
                    index, value, error = conn.recv()
                except (EOFError, OSError):
                    results[self._replace(w, "died")] = 0.0
                    continue
                w.pending.popleft()
                w.since = time.monotonic()
                if error is not None and not self._logged_error:  # the first traceback, once
                    self._logged_error = True
                    log.warning("reward for sample %d scored 0: the function raised (logged once; "
                                "later failures are counted only):\n%s", index, error.rstrip())
                if not isinstance(value, tuple) and value != value:  # NaN: the rule raised
                    self.failures += 1
                    value = 0.0
                results[index] = value
            now = time.monotonic()
            for w in list(self._workers):
                if w.pending and now - w.since > self.timeout_s:
                    results[self._replace(w, f"exceeded {self.timeout_s:.1f}s")] = 0.0
                elif w.pending and not w.proc.is_alive():
                    results[self._replace(w, "died")] = 0.0
        return results

    def _replace(self, w: _Worker, why: str) -> int:
        """Kill a worker and start another with the rest of its chunk; returns the index of
        the sample it was on (scored 0 by the caller)."""
        index, _ = w.pending.popleft()
        self.failures += 1
        log.warning("reward for sample %d scored 0: worker %s", index, why)
        rest = list(w.pending)
        w.kill()
        new = _Worker(self._ctx, self.score_fn)
        new.wait_ready()
        self._workers[self._workers.index(w)] = new
        if rest:
            new.give(rest)
        return index

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.kill()
        self._workers = []

    def __enter__(self) -> "ScoringPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

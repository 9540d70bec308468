"""Top-level score functions for the pool tests (spawned workers import them by name)."""
import os
import time


def slow_or_crashing(payload):
    kind, value = payload
    if kind == "hang":
        time.sleep(3600)
    if kind == "crash":
        os._exit(1)
    if kind == "raise":
        raise RuntimeError("boom")
    return value

"""Test-wide environment and the suite's time budget.

Environment: offline hubs, and the Triton interpreter on machines without CUDA; both must be set
before torch/triton/transformers are imported by any test module.

Budget (issue 2/7): ``make test-fast`` runs every test marked neither ``slow`` nor ``multirank``
with ``MIXED_R1_FAST_BUDGET_S=10``; a test of that tier whose setup (its fixtures) or call takes
longer fails with one line saying so (mark it ``slow``, or make it cheaper). Every run prints its 25 slowest tests
(``--durations=25`` in pyproject's addopts).
"""
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

TIERED = ("slow", "multirank")


def fast_budget_s() -> float | None:
    """The fast tier's limit per test call in seconds (``MIXED_R1_FAST_BUDGET_S``), or None."""
    raw = os.environ.get("MIXED_R1_FAST_BUDGET_S", "").strip()
    return float(raw) if raw else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    budget = fast_budget_s()
    if (budget is None or report.when not in ("setup", "call") or not report.passed
            or any(item.get_closest_marker(m) for m in TIERED)):
        return
    if report.duration > budget:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: its {report.when} took {report.duration:.1f} s, over "
                           f"the fast tier's "
                           f"{budget:g} s budget: mark it slow (or multirank), or make it cheaper")

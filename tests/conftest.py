"""Test-wide environment and the suite's time budget.

Environment: offline hubs, and the Triton interpreter on machines without CUDA; both must be set
before torch/triton/transformers are imported by any test module.

Order: the longest test files run first (:data:`LONGEST_FIRST`, from the suite's measured
durations), so the two xdist workers (``--dist loadfile`` deals whole files in collection order)
do not end with one of them alone on a long multi-rank file; the rest keep their order.

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


# test files by measured suite time, longest first (clean-clone make test, 2026-12-07): LPT
# scheduling for xdist's loadfile distribution
LONGEST_FIRST = (
    "test_trainer_mcore.py", "test_text_lm.py", "test_examples.py", "test_trainer_resume.py",
    "test_smollm2_grpo.py", "test_kernels_memory.py", "test_parallel_multimodal.py",
    "test_demo.py", "test_run_dirs.py", "test_sft.py", "test_example_smollm2_vllm.py",
    "test_data_engine.py", "test_convert_gguf.py", "test_engine_megatron.py", "test_rollout_sync.py",
    "test_mixed_precision.py", "test_parallel_policy.py", "test_collectives_device.py",
    "test_gpu_check.py", "test_weight_sync_memory.py", "test_convert_smollm2.py", "test_plan.py",
    "test_rewards_custom.py", "test_rollout_vllm.py", "test_rollout_replicas.py",
    "test_cli_args.py", "test_loggers.py",
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: files stay together

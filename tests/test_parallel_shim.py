"""The CPU shim's RNG tracker follows megatron's fork rule: named streams advance independently and the
global generator is restored after each fork (checked against plain torch.Generator streams)."""
import torch

from mixed_r1.parallel.cpu_shim import CpuRNGStatesTracker


def test_fork_uses_named_stream_and_restores_global():
    tr = CpuRNGStatesTracker()
    tr.add("model-parallel-rng", 123)
    torch.manual_seed(7)
    ref_global = torch.Generator().manual_seed(7)
    ref_named = torch.Generator().manual_seed(123)
    with tr.fork("model-parallel-rng"):
        a = torch.randn(5)
    with tr.fork("model-parallel-rng"):
        b = torch.randn(5)
    assert torch.equal(a, torch.randn(5, generator=ref_named))
    assert torch.equal(b, torch.randn(5, generator=ref_named))  # the named stream advanced, not restarted
    assert torch.equal(torch.randn(5), torch.randn(5, generator=ref_global))  # global untouched by forks


def test_duplicate_seed_or_name_rejected():
    tr = CpuRNGStatesTracker()
    tr.add("a", 1)
    for name, seed in (("b", 1), ("a", 2)):
        try:
            tr.add(name, seed)
        except Exception:
            continue
        raise AssertionError(f"add({name!r}, {seed}) should raise")

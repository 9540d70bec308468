"""mixed_r1.checkpoint.capture_rng / restore_rng directly: every RNG state the checkpoint stores
(Python's random incl. its cached gauss, numpy's global RNG incl. its cached gauss, torch's CPU
generator, and the CUDA generators where present) is put back exactly, and restoring a different
captured state gives different draws (so a restore that did nothing would fail)."""
import random

import numpy as np
import pytest
import torch

from mixed_r1.checkpoint import capture_rng, restore_rng


def _draw() -> dict:
    out = {
        "python": [random.random() for _ in range(3)] + [random.gauss(0.0, 1.0) for _ in range(3)],
        "numpy": np.random.rand(3).tolist() + np.random.standard_normal(3).tolist(),
        "torch": torch.rand(3).tolist() + torch.randn(3).tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [torch.rand(3, device=f"cuda:{i}").tolist()
                       for i in range(torch.cuda.device_count())]
    return out


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds the CUDA generators too
    # leave a cached second gaussian in Python's and numpy's state: the restore must carry it
    random.gauss(0.0, 1.0)
    np.random.standard_normal()


def test_restore_repeats_the_draws_of_every_stored_rng():
    _seed(123)
    state = capture_rng()
    expected_keys = {"python_version", "python_state", "python_gauss", "numpy_keys", "numpy_pos",
                     "numpy_gauss", "torch"}
    if torch.cuda.is_available():
        expected_keys |= {f"cuda_{i}" for i in range(torch.cuda.device_count())}
    assert set(state) == expected_keys
    first = _draw()
    _seed(999)  # move every generator somewhere else
    restore_rng(state)
    assert _draw() == first


def test_restoring_a_different_state_gives_different_draws():
    _seed(1)
    state_a = capture_rng()
    draws_a = _draw()
    _seed(2)
    state_b = capture_rng()
    draws_b = _draw()
    restore_rng(state_a)
    again_a = _draw()
    restore_rng(state_b)
    again_b = _draw()
    assert again_a == draws_a and again_b == draws_b
    for key in draws_a:  # every generator, not just one, follows the restored state
        assert again_a[key] != again_b[key], key


@pytest.mark.parametrize("which", ["python", "numpy", "torch"])
def test_each_generator_is_restored_on_its_own(which):
    """Only one generator is moved after the capture: the restore must bring exactly it back."""
    _seed(7)
    state = capture_rng()
    first = _draw()
    restore_rng(state)
    {"python": lambda: random.random(), "numpy": lambda: np.random.rand(),
     "torch": lambda: torch.rand(1)}[which]()
    moved = _draw()
    assert moved[which] != first[which]
    restore_rng(state)
    assert _draw() == first

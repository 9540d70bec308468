"""mixed_r1.plan: per-rank parameter counts from the real shapes, and the static memory formula."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[1] / "examples" / "model_configs"


@pytest.fixture(scope="module")
def qwen7b():
    return json.loads((CONFIGS / "qwen25vl_7b.json").read_text())


def _hf_param_count(cfg: dict) -> tuple[int, int]:
    """(total, replicated-under-TP) from transformers' own model, built on the meta device."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        m = Qwen2_5_VLForConditionalGeneration._from_config(Qwen2_5_VLConfig.from_dict(cfg))
    total = sum(p.numel() for p in m.parameters())
    norms = sum(p.numel() for n, p in m.named_parameters() if "language_model" in n and "norm" in n)
    vision = sum(p.numel() for p in m.model.visual.parameters())
    return total, norms + vision


def test_parameter_counts_match_transformers(qwen7b):
    from mixed_r1.plan import stage_params

    total, replicated = _hf_param_count(qwen7b)
    assert total == 8_292_166_656  # the published Qwen2.5-VL-7B-Instruct size
    assert stage_params(qwen7b, 1, 1) == [total]
    # TP=2: every LM tensor but the norms is split in half (vocab 152,064 divides by 2)
    assert 2 * stage_params(qwen7b, 2, 1)[0] - replicated == total
    # PP=2 over 28 layers: the stages hold everything once (untied: no embedding copy)
    s0, s1 = stage_params(qwen7b, 1, 2)
    assert s0 + s1 == total and s0 > s1  # the vision tower lives on the first stage


def test_static_memory_formula(qwen7b):
    from mixed_r1.plan import stage_params, static_memory

    n = stage_params(qwen7b, 2, 1)[0]
    plain, = static_memory(qwen7b, tp=2, pp=1, dp=4, dtype="bfloat16")
    dist, = static_memory(qwen7b, tp=2, pp=1, dp=4, dtype="bfloat16", distributed_optimizer=True)
    assert plain.total == n * (2 + 4 + 4 + 8 + 4)  # bf16 weights, fp32 grads/masters/Adam/snapshot
    assert dist.total == n * 2 + n * 4 + (n * 4) // 4 + (8 * n) // 4 + (n * 4) // 4
    fp32, = static_memory(qwen7b, tp=2, pp=1, dp=4, dtype="float32")
    assert fp32.masters == 0 and fp32.total == n * (4 + 4 + 8 + 4)

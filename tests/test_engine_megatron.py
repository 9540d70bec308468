"""megatron-core's own training machinery behind the engine seam, at several layouts (gloo ranks).

Each run is ``tests/engine_checks.py``: two GRPO updates (PPO-style old log-probs, KL to a reference,
clipping, weight decay, global-norm clipping) of a tiny Qwen2 LM, float32, on fixed micro-batches.
The reference is the same updates at TP = PP = DP = 1 (world of one), itself checked against the
single-process HF backend by tests/test_trainer_mcore.py. Measured here: PP=2 (tied and untied),
DP=2 with the distributed optimizer and recompute all agree with the reference to ≤ 1e-7 relative
on every metric and ≤ 2e-8 on the weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _trainer_util import free_port

pytestmark = [pytest.mark.multirank, pytest.mark.slow]
SCRIPT = Path(__file__).parent / "engine_checks.py"
METRICS = ("loss", "grad_norm", "entropy", "kl_mean", "clip_frac", "ratio_mean", "ratio_min",
           "ratio_max", "update/rel_change")



def _tiny_qwen2(path: Path, tie: bool, layers: int = 4) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=96, num_hidden_layers=layers, vocab_size=101,
                      rms_norm_eps=1e-6, max_position_embeddings=64, tie_word_embeddings=tie,
                      rope_parameters={"rope_theta": 5000.0, "rope_type": "default"})
    model = Qwen2ForCausalLM(cfg).float()
    with torch.no_grad():  # non-trivial norms and biases so a sharding slip shows up
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return path


def _run(hf: Path, out: Path, world: int, tp: int, pp: int, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
         "--master_port", str(free_port()), str(SCRIPT), str(hf), str(out), str(tp), str(pp),
         *extra],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[1],
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and (out / "result.json").is_file(), \
        proc.stdout[-3000:] + proc.stderr[-6000:]
    from safetensors.torch import load_file

    res = json.loads((out / "result.json").read_text())
    res["weights"] = load_file(str(out / "weights.safetensors"))
    return res


def _same_updates(got: dict, ref: dict, hf: Path) -> None:
    """Every update metric within 1e-5 relative; the updated weights within 1e-5 of the weights
    and 1e-3 of the update (Adam steps near-zero gradients by ±lr, so float noise in those moves
    a few elements by lr-sized amounts)."""
    from safetensors.torch import load_file

    assert len(got["updates"]) == len(ref["updates"]) == 2
    for g, r in zip(got["updates"], ref["updates"]):
        assert g["skipped"] == 0 and g["tokens"] == r["tokens"]
        for k in METRICS:
            assert g[k] == pytest.approx(r[k], rel=1e-5, abs=1e-8), (k, g[k], r[k])
    a, b = got["weights"], ref["weights"]
    assert sorted(a) == sorted(b)
    init = {}
    for f in hf.glob("*.safetensors"):
        init.update(load_file(str(f)))
    diff = sum(float((a[k] - b[k]).double().square().sum()) for k in b) ** 0.5
    norm = sum(float(b[k].double().square().sum()) for k in b) ** 0.5
    step = sum(float((b[k] - init[k if k in init else "model.embed_tokens.weight"]).double()
                     .square().sum()) for k in b) ** 0.5
    assert step > 0, "the weights did not change"
    assert diff / norm < 1e-5 and diff / step < 1e-3, (diff / norm, diff / step)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_models")
    return {"tied": _tiny_qwen2(root / "tied", tie=True),
            "untied": _tiny_qwen2(root / "untied", tie=False),
            "tied3": _tiny_qwen2(root / "tied3", tie=True, layers=3)}


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine_ref")
    return {name: _run(hf, root / name, 1, 1, 1) for name, hf in models.items()}


@pytest.mark.parametrize("split", ["2,1", "1,2"])
def test_uneven_pp2_over_3_layers_matches_pp1(models, reference, tmp_path, split):
    """3 layers on 2 stages (megatron's first/last-stage layer counts): the same updates."""
    got = _run(models["tied3"], tmp_path, 2, 1, 2, f"layers={split}")
    _same_updates(got, reference["tied3"], models["tied3"])


@pytest.mark.parametrize("tie", ["tied", "untied"])
def test_pp2_matches_pp1(models, reference, tmp_path, tie):
    """Pipeline-parallel training over 2 stages: megatron's 1F1B schedule, the tied-embedding
    gradient summed over the first and last stage (finalize_model_grads), the grad norm counting
    the shared copy once, and the weight stream taking turns over the stages."""
    got = _run(models[tie], tmp_path, 2, 1, 2)
    _same_updates(got, reference[tie], models[tie])


def test_distributed_optimizer_dp2_matches_dp1(models, reference, tmp_path):
    """DP=2 with megatron-core's distributed optimizer (fp32 gradients reduce-scattered, Adam state
    and masters sharded over DP, parameters all-gathered after the step) equals DP=1, and each
    rank holds about half of DP=1's optimizer state."""
    got = _run(models["tied"], tmp_path, 2, 1, 1, "dist_opt")
    _same_updates(got, reference["tied"], models["tied"])
    full = reference["tied"]["optimizer_bytes"][0]
    per_rank = got["optimizer_bytes"]
    print(f"optimizer state bytes per rank: DP=1 {full}, DP=2 distributed {per_rank} "
          f"({[round(b / full, 3) for b in per_rank]} of DP=1)")
    assert len(per_rank) == 2 and all(0.45 < b / full < 0.55 for b in per_rank)


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_activation_recompute_is_exact(models, reference, tmp_path, mode):
    """megatron activation recompute (core attention, or every layer) recomputes in the backward
    and changes no number."""
    got = _run(models["tied"], tmp_path, 1, 1, 1, f"recompute={mode}")
    assert got["checkpoint_calls"] > 0, "no layer was checkpointed"
    assert reference["tied"]["checkpoint_calls"] == 0
    for g, r in zip(got["updates"], reference["tied"]["updates"]):
        assert g["loss"] == r["loss"] and g["grad_norm"] == r["grad_norm"]
    assert all(torch.equal(got["weights"][k], reference["tied"]["weights"][k])
               for k in got["weights"])


def _same_old_logprobs(got: dict, ref: dict) -> None:
    """Old log-probs of every micro-batch within 1e-5 (a packed batch's [B, T] is as wide as its
    longest completion; the padded reference's extra columns are masked zeros)."""
    for g, r in zip(got["old"], ref["old"], strict=True):
        g, r = torch.tensor(g), torch.tensor(r)
        assert torch.allclose(g, r[:, :g.shape[1]], atol=1e-5, rtol=0), (g - r[:, :g.shape[1]]).abs().max()
        assert not r[:, g.shape[1]:].any()


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_packed_rows_match_the_padded_updates(models, reference, tmp_path, tp, pp):
    """Rows packed into one sequence per micro-batch (megatron-core THD ``PackedSeqParams``:
    attention confined to each row by ``PackedDotProductAttention``, RoPE restarting per row)
    give the padded single-rank updates: log-probs within 1e-5, every metric within 1e-5
    relative, the same weights. TP=2 shards the heads; PP=2 pads the packs of one update to one
    length (the pipeline sends one activation shape), the pad a row of its own."""
    got = _run(models["tied"], tmp_path, 2, tp, pp, "packed")
    tokens = 3 * got["tokens"]  # the LM head of each last stage sees only completion positions
    assert got["head_positions"] == ([tokens] * 2 if tp == 2 else [0, tokens])
    _same_old_logprobs(got, reference["tied"])
    _same_updates(got, reference["tied"], models["tied"])


def test_only_completion_positions_reach_the_lm_head(reference):
    """The last stage slices its hidden states to the completion positions before the output
    layer: over the run (one log-prob pass and two updates of the same micro-batches) the head
    computes exactly 3 × the completion tokens, not every padded position."""
    ref = reference["tied"]
    assert ref["head_positions"] == [3 * ref["tokens"]]

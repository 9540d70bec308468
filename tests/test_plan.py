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


def test_plan_total_counts_the_larger_window():
    from mixed_r1.plan import Plan, PlanLine

    lines = [PlanLine("update", "weights", 100), PlanLine("update", "acts", 30, window="backward"),
             PlanLine("update", "logits", 25, window="backward"),
             PlanLine("update", "snapshot", 40, window="step"), PlanLine("rollout", "kv", 7)]
    plan = Plan("t", 1000, 0, lines)
    assert plan.total("update") == 100 + 55 and plan.total("rollout") == 7
    assert plan.failure() is None
    assert "update phase needs" in Plan("t", 150, 0, lines).failure()


@pytest.mark.slow
def test_estimate_matches_measured_peaks(tmp_path):
    """tools/check_plan.py: the plan's update-phase estimate against the measured peak of a real
    update on CPU (megatron-core and the HF engine with real images), within 25%."""
    import subprocess
    import sys

    out = tmp_path / "rows.json"
    # rows of 1,024 tokens: megatron's local attention scores [2·8, 1024, 1024] (its resident
    # buffer, the saved probabilities and the backward's gradient copies) are most of the peak
    cases = "mcore-bf16-none-long,mcore-bf16-full-long,hf-vl-bf16-full"
    subprocess.run([sys.executable, str(Path(__file__).parents[1] / "tools" / "check_plan.py"),
                    "--cases", cases, "--json", str(out)], check=True, capture_output=True,
                   timeout=600)
    rows = json.loads(out.read_text())
    assert [r["case"] for r in rows] == cases.split(",")
    for r in rows:
        assert 0.75 <= r["ratio"] <= 1.25, r
    # recompute really is in the estimate and in the measurement: full < none, both ways
    none, full = rows[0], rows[1]
    assert full["estimate"] < none["estimate"] and full["measured"] < none["measured"]


def _plan_cli(*args: str):
    """``mixed-r1 plan ARGS`` in this process (the console script's ``main``; tests/_cli.py)."""
    from _cli import run_cli

    return run_cli("plan", *args)


@pytest.mark.parametrize("size", ["7b", "3b"])
def test_examples_fit_their_hardware(size):
    r = _plan_cli("--config", f"examples/qwen25vl_{size}_8xh100.yaml", "--model-config",
                  f"examples/model_configs/qwen25vl_{size}.json", "--gpus", "8",
                  "--gpu-mem-gib", "80")
    assert r.returncode == 0, r.stderr
    assert "DOES NOT FIT" not in r.stdout and r.stdout.count(": fits") == 2
    assert "fp32 master weights (/" in r.stdout  # the distributed optimizer's shard


def test_plan_refuses_a_layout_that_cannot_fit():
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "--gpu-mem-gib", "24",
                  "parallel.tensor_parallel=1", "parallel.data_parallel=8")
    assert r.returncode == 1
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "update phase needs" in err[0] and "fp32 gradients" in err[0], err


def test_plan_config_errors_are_one_line():
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "--gpus", "4")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "4 GPUs" in err[0], err
    # a TP size that does not divide the model's heads names the key
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "parallel.tensor_parallel=3",
                  "parallel.data_parallel=1")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "tensor_parallel" in err[0], err
    assert "Traceback" not in r.stderr


# ------------------------------------------------------------------------ attention accounting
SEQ_8K = ("rollout.max_prompt_length=4096", "rollout.max_new_tokens=4096")


def test_local_attention_bytes_by_hand(qwen7b):
    """Qwen2.5-VL-7B (28 heads) at TP 2, micro-batch 4, 8,192 tokens, bf16: one copy of the
    scores [4·14, 8192, 8192] is 7,516,192,768 bytes (the issue's 7.5 GB)."""
    from mixed_r1.plan import lm_activation_memory, local_attention_memory

    copy = 4 * 14 * 8192 * 8192 * 2
    assert copy == 7_516_192_768
    kw = dict(seq=8192, micro_batch=4, tp=2, dtype="bfloat16", impl="mcore-local")
    full = lm_activation_memory(qwen7b, recompute="full", **kw)
    # resident baddbmm buffer: one copy; backward of one layer: grad of the probabilities, grad of
    # the scores, CopySlices' buffer (+ the rebuilt layer's probabilities and mask, in its line)
    assert full.attention_buffer == copy and full.attention_transient == 3 * copy
    assert full.attention.scores_total == 5 * copy + 8192 * 8192
    sel = local_attention_memory(heads=28, tp=2, seq=8192, micro_batch=4, recompute="selective")
    assert sel.transient == 4 * copy + 8192 * 8192 and sel.buffer == copy
    # without recompute every one of the 28 layers keeps its probabilities and its bool mask
    none = lm_activation_memory(qwen7b, recompute="none", **kw)
    assert none.attention.in_layers == 28 * (copy + 8192 * 8192)
    assert none.attention_transient == 3 * copy
    # the update's peak adds the buffer to the resident state, the transient to the backward
    from mixed_r1.plan import static_memory, update_peak_bytes

    st, = static_memory(qwen7b, tp=2, pp=1, dp=4, distributed_optimizer=True)
    te = lm_activation_memory(qwen7b, recompute="full", **{**kw, "impl": "mcore-te"})
    assert te.attention is None and te.attention_buffer == 0
    resident = st.weights + st.grads + st.masters + st.optimizer
    assert update_peak_bytes(st, full) == resident + copy + max(full.total, st.update_snapshot)


def test_plan_refuses_local_attention_scores_in_one_line():
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "--gpu-mem-gib", "80",
                  "--attention", "local", *SEQ_8K)
    assert r.returncode == 1, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert "local attention" in line and "[4*14, 8192, 8192]" in line and "7.00 GiB" in line, line
    assert "Transformer Engine" in line and "micro_batch_size" in line and "tensor_parallel" in line
    assert "Traceback" not in r.stderr


def test_plan_with_te_fits_at_8k_and_names_it():
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "--gpu-mem-gib", "80",
                  "--attention", "te", *SEQ_8K)
    assert r.returncode == 0, r.stderr
    assert "attention: te" in r.stdout and "Transformer Engine" in r.stdout
    assert "local attention" not in r.stdout and r.stdout.count(": fits") == 2


def test_plan_names_the_attention_this_install_runs():
    """No GPU here: auto is megatron's local attention, and the plan says why and counts it."""
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "--gpu-mem-gib", "80")
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[1]
    assert head.startswith("attention: local") and "no GPU" in head, head
    copy = 4 * 14 * 2048 * 2048 * 2 / 2**30  # [4·14, 2048, 2048] bf16 in GiB
    buf = next(x for x in r.stdout.splitlines() if "local attention scores buffer" in x)
    assert f"{copy:.2f}" in buf.split(), buf


def test_resolve_attention_follows_the_platform():
    from mixed_r1.parallel.platform import Platform
    from mixed_r1.plan import resolve_attention

    assert resolve_attention("auto", Platform("cpu", "cpu"))[0] == "local"
    impl, why = resolve_attention("auto", Platform("cuda", "cuda"))  # no TE installed here
    assert impl == "local" and "not installed" in why
    assert resolve_attention("te", Platform("cpu", "cpu")) == ("te", "--attention te")


def test_plan_impl_and_attention_must_agree():
    r = _plan_cli("--config", "examples/qwen25vl_7b_8xh100.yaml", "--model-config",
                  "examples/model_configs/qwen25vl_7b.json", "--impl", "mcore-te",
                  "--attention", "local")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "--attention local" in err[0], err

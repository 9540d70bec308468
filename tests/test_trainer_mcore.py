"""GRPO on the megatron-core policy backend: TP=2 and DP=2 (2 gloo ranks each) vs TP=1 vs the HF
backend.

Each run is ``tests/mcore_trainer_checks.py`` (two GRPO steps of the tiny Qwen2.5-VL, float32, HF
generator on rank 0, 2 PPO epochs and beta > 0 so old/ref log-probs, KL and clipping are all used).
The independent reference is the single-process HF backend (``HFPolicy``, transformers forward and
the fused-kernel loss) on the same config.

Tolerances (measured on the 2-core CPU: TP=2 vs TP=1 loss 9e-7 / 1.2e-5 relative at steps 1 / 2;
weights: ||w_tp2 - w_tp1|| / ||w_tp1 - w_init|| = 8e-5):
- sampled tokens and rewards identical (same generator, same seeds, same weights to ~1e-5);
- loss, KL, grad norm, ratio mean/min/max within 1e-4 relative; clip fractions within 1e-6;
- the exported weights' update differs by < 1e-3 relative (AdamW turns float noise in near-zero
  gradients into full-size steps on a handful of elements, so an elementwise bound would be lr-sized).

DP=2 (TP=1, PP=1; the 8 rows of a step are 2 micro-batches of 4, one per replica) is held to the same
tolerances against TP=1 (measured: loss 5e-8 / 7e-7 relative at steps 1 / 2, grad norm <= 4e-8,
weights 8e-7); the update's log-probs gathered over the replicas equal the old log-probs (< 1e-5).

The TP=2, DP=2 and PP=2 runs also take one SFT step with the vision tower's and the merger's
own learning rates (``partlr``, tests/sft_checks.py; about 2-3 s each).

The TP=2 run also trains an assembled Qwen2.5-VL directory (``mixed-r1 convert lm-to-qwen25vl`` of
a small Llama in SmolLM2's vocabulary) for one step as ``model.kind=pretrained``; its first update
is recomputed here on the HF backend (measured: gradients within 9e-7 relative, language model,
vision tower and merger alike).
"""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _trainer_util import free_port, make_data

SCRIPT = Path(__file__).parent / "mcore_trainer_checks.py"
CLOSE = ("loss", "kl_mean", "grad_norm", "ratio_mean", "ratio_min", "ratio_max", "entropy")
EXACT = ("clip_frac", "clip_frac_low", "clip_frac_high", "adv/abs_mean", "reward/total")



def _run(out: Path, data: Path, backend: str, tp: int, *extra: str, dp: int = 1, pp: int = 1,
         platform: str | None = None) -> dict:
    """One run of mcore_trainer_checks.py; ``platform="cuda-shaped"`` takes every CUDA decision
    (issue 1/7) on these CPU ranks."""
    out.mkdir(parents=True, exist_ok=True)
    if dp > 1:
        extra = (*extra, f"dp={dp}")
    if pp > 1:
        extra = (*extra, f"pp={pp}")
    if backend == "hf":
        cmd = [sys.executable, str(SCRIPT), str(out), str(data), backend, str(tp), *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(tp * dp * pp),
               "--master_port", str(free_port()), str(SCRIPT), str(out), str(data), backend,
               str(tp), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[1],
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               **({"MIXED_R1_PLATFORM": platform} if platform else {})})
    assert proc.returncode == 0 and (out / "result.json").is_file(), \
        proc.stdout[-3000:] + proc.stderr[-6000:]
    from safetensors.torch import load_file

    result = json.loads((out / "result.json").read_text())
    result["weights"] = load_file(str(out / "weights.safetensors"))
    result["dir"] = out
    return result


def _image_rows(data: Path) -> Path:
    """The rows of ``data`` that have images, beside it (their image paths are relative to it)."""
    rows = [line for line in data.read_text().splitlines() if json.loads(line)["images"]]
    out = data.with_name("with_images.jsonl")
    out.write_text("\n".join(rows) + "\n")
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from _trainer_util import assembled_vl_dir

    root = tmp_path_factory.mktemp("mcore")
    data = make_data(root / "data")
    _, vl = assembled_vl_dir(root / "assembled")
    return {"tp2": _run(root / "tp2", data, "mcore", 2, "resume", "sft", "partlr",
                        f"assembled={vl}", f"vl_data={_image_rows(data)}"),
            "assembled": vl,
            "tp1": _run(root / "tp1", data, "mcore", 1),
            "hf": _run(root / "hf", data, "hf", 1, "sft", platform="cuda-shaped"),
            "init": root / "tp1" / "run" / "init_model", "data": data}


@pytest.fixture(scope="module")
def dp2(runs, tmp_path_factory):
    """TP=1, PP=1, DP=2 with the distributed optimizer on the same data (2 gloo ranks), with a
    checkpoint resume."""
    return _run(tmp_path_factory.mktemp("mcore_dp2"), runs["data"], "mcore", 1, "resume",
                "distopt", "partlr", dp=2)


@pytest.fixture(scope="module")
def pp2(runs, tmp_path_factory):
    """TP=1, PP=2, DP=1: the tiny Qwen2.5-VL's two layers on two stages, the vision tower on the
    first; with a checkpoint resume. CUDA-shaped (issue 1/7): no gloo side groups, batched
    pipeline p2p, parameters initialised through megatron's device path, with the distributed
    optimizer and ``overlap_grad_reduce``."""
    return _run(tmp_path_factory.mktemp("mcore_pp2"), runs["data"], "mcore", 1, "resume", "distopt",
                "overlap", "partlr", pp=2, platform="cuda-shaped")


def _compare_metrics(got: list[dict], ref: list[dict]) -> None:
    assert len(got) == len(ref) == 2
    for step, (g, r) in enumerate(zip(got, ref), start=1):
        assert g["tokens"] == r["tokens"], f"step {step}: sampled tokens differ"
        assert g["rewards"] == r["rewards"], f"step {step}: rewards differ"
        assert g["update/count"] == r["update/count"] == 2 and g["update/skipped"] == 0
        for k in CLOSE:  # entropy: the vocab-parallel op's on mcore, the fused loss's on HF
            assert g[k] == pytest.approx(r[k], rel=1e-4, abs=1e-7), (step, k, g[k], r[k])
        for k in EXACT:
            assert g[k] == pytest.approx(r[k], abs=1e-6), (step, k, g[k], r[k])
        # the trainer's pre-update log-probs agree with the sampler's
        assert g["rollout/logprob_abs_diff"] < 1e-5
        # the first update's per-micro-batch log-probs (gathered over DP) are the old log-probs
        assert g["update_logprob_diff"] < 1e-5


def _update_rel_diff(a: dict, b: dict, init: dict) -> float:
    """||a - b|| / ||a - init|| over all tensors (the relative difference of the updates)."""
    num = sum(float((a[k] - b[k]).double().square().sum()) for k in a)
    den = sum(float((a[k] - init[k]).double().square().sum()) for k in a)
    assert den > 0, "the weights did not change"
    return (num / den) ** 0.5


def _init_weights(init_dir: Path, names) -> dict:
    """The initial HF weights under the names the stream uses (transformers may save legacy names)."""
    from safetensors.torch import load_file

    raw = {}
    for f in glob.glob(str(init_dir / "*.safetensors")):
        raw.update(load_file(f))
    out = {}
    for n in names:
        legacy = n.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        out[n] = raw[n] if n in raw else raw[legacy]
    return out


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_tp1_matches_hf_backend(runs):
    """The megatron path (packing, vocab-parallel log-probs, algo loss, manual grad clip, AdamW)
    reproduces the HF backend's GRPO steps."""
    assert runs["hf"]["platform"] == "cuda-shaped"  # the HF backend + HF rollout, GPU decisions
    _compare_metrics(runs["tp1"]["metrics"], runs["hf"]["metrics"])
    hf, tp1 = runs["hf"]["weights"], runs["tp1"]["weights"]
    assert sorted(hf) == sorted(tp1)  # the stream yields exactly the HF model's parameter names
    assert _update_rel_diff(tp1, hf, _init_weights(runs["init"], hf)) < 1e-3


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_tp2_matches_tp1(runs):
    """2 GRPO steps at TP=2 give TP=1's metrics and (streamed) weights."""
    _compare_metrics(runs["tp2"]["metrics"], runs["tp1"]["metrics"])
    tp1, tp2 = runs["tp1"]["weights"], runs["tp2"]["weights"]
    assert sorted(tp1) == sorted(tp2)
    assert all(tp1[k].shape == tp2[k].shape for k in tp1)
    assert _update_rel_diff(tp2, tp1, _init_weights(runs["init"], tp1)) < 1e-3


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_dp2_matches_tp1(runs, dp2):
    """2 GRPO steps at DP=2 (micro-batches split over the replicas, gradients reduce-scattered and
    metrics summed over the DP group, Adam state sharded by the distributed optimizer) give TP=1's
    metrics and weights; the checkpoint holds one copy of the model shard (DP rank 0 writes it) and
    one optimizer shard per DP rank, and resumes exactly on both replicas."""
    for m in dp2["metrics"]:
        assert m["rows/kept"] == 8  # 2 micro-batches: one per replica
    # 2 rollout replicas (one HF generator each) sampled one of the 2 prompts per step each, and
    # the completions equal TP=1's (one generator): per-prompt seeds (_compare_metrics)
    assert dp2["generated_per_rank"] == [2, 2]
    _compare_metrics(dp2["metrics"], runs["tp1"]["metrics"])
    tp1, got = runs["tp1"]["weights"], dp2["weights"]
    assert sorted(tp1) == sorted(got)
    assert all(tp1[k].shape == got[k].shape for k in tp1)
    assert _update_rel_diff(got, tp1, _init_weights(runs["init"], tp1)) < 1e-3
    assert dp2["ckpt_files"] == ["config.yaml", "manifest.json", "model_tp00_pp000.safetensors",
                                 "optimizer_tp00_pp000_dp000.pt", "optimizer_tp00_pp000_dp001.pt",
                                 "rng.pt", "trainer_state.json"]
    assert dp2["resume_exact"]


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_vl_pp2_matches_tp1(runs, pp2):
    """Qwen2.5-VL trains at PP=2: the vision tower runs on the first stage only, mrope positions are
    computed on every stage, the tied embedding's gradient is summed over the first and last stage,
    and the weight stream carries the vision tower from the first stage to every generator."""
    _compare_metrics(pp2["metrics"], runs["tp1"]["metrics"])
    tp1, got = runs["tp1"]["weights"], pp2["weights"]
    assert sorted(tp1) == sorted(got)
    assert _update_rel_diff(got, tp1, _init_weights(runs["init"], tp1)) < 1e-3
    assert pp2["ckpt_files"] == ["config.yaml", "manifest.json", "model_tp00_pp000.safetensors",
                                 "model_tp00_pp001.safetensors", "optimizer_tp00_pp000_dp000.pt",
                                 "optimizer_tp00_pp001_dp000.pt", "rng.pt", "trainer_state.json"]
    assert pp2["resume_exact"]
    assert pp2["platform"] == "cuda-shaped"


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_tp2_sharded_checkpoint_resumes_exactly(runs):
    r = runs["tp2"]
    assert r["ckpt_files"] == ["config.yaml", "manifest.json", "model_tp00_pp000.safetensors",
                               "model_tp01_pp000.safetensors", "optimizer_tp00_pp000.pt",
                               "optimizer_tp01_pp000.pt", "rng.pt", "trainer_state.json"]
    assert r["resume_exact"]  # weights (via the stream) and AdamW state equal after resume


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_tp2_sft_step_matches_hf_with_a_frozen_vision_tower(runs):
    """``mixed-r1 sft``'s step (tests/sft_checks.py: the stream's first 4 rows in 2
    micro-batches, ``model.freeze_vision_tower``) at TP=2 on 2 gloo ranks has the HF backend's
    NLL (1e-5 relative), token accuracy and gradient norm (1e-4); on both backends the vision
    tower streams out bit-identical after the step while the language model and merger changed,
    the optimizer holds only trainable parameters (no fp32 master, moment or gradient buffer of
    a frozen one) and the trainable-only export leaves the tower out."""
    tp2, hf = runs["tp2"]["sft"], runs["hf"]["sft"]
    for res in (tp2, hf):
        assert res["checks"] == dict.fromkeys(res["checks"], True), res["checks"]
        assert res["metrics"]["update/skipped"] == 0
    assert tp2["frozen_counts"]["vision_tower"] > 0 and tp2["frozen_counts"]["language_model"] == 0
    got, ref = tp2["metrics"], hf["metrics"]
    assert got["tokens"] == ref["tokens"] > 0
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    assert got["token_acc"] == pytest.approx(ref["token_acc"], abs=1e-6)
    assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)
    assert got["update/rel_change"] == pytest.approx(ref["update/rel_change"], rel=1e-3)


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_part_learning_rates_on_the_first_step(runs, dp2, pp2):
    """``optim.lr=1e-4``, ``optim.vision_lr=1e-3``, ``optim.merger_lr=3e-4`` on the megatron
    backend (tests/sft_checks.py ``part_lr_step``: megatron-core param groups with ``lr_mult``
    from ``config_overrides``) at TP=2, at DP=2 with the distributed optimizer (the groups'
    parameters are DP shards) and at PP=2 (the vision tower's groups only on the first stage,
    empty on the second): one SFT step, a bias-corrected first AdamW step, moves each part's
    largest element by the part's rate (1e-2 relative). Each part's groups keep megatron-core's
    standard split (``wd_mult`` 0 for biases and 1-D parameters), which it drops for any
    ``config_overrides`` not merged with them."""
    from sft_checks import PART_LRS

    for name, res in (("tp2", runs["tp2"]), ("dp2", dp2), ("pp2", pp2)):
        got = res["part_lr"]
        assert got["lr"] == PART_LRS["language_model"] and got["skipped"] == 0, (name, got)
        assert got["reloaded"], name  # its checkpoint state fits the engine's groups
        assert sorted(map(tuple, got["groups"])) == [(m, w) for m in (1.0, 3.0, 10.0)
                                                     for w in (0.0, 1.0)], (name, got["groups"])
        assert sorted(got["max_change"]) == sorted(PART_LRS), (name, got)
        for part, want in PART_LRS.items():
            assert got["max_change"][part] == pytest.approx(want, rel=1e-2), (name, part, got)


def test_pack_microbatch_left_aligns_rows():
    """Left-padded prompt + right-padded completion → left-aligned rows; the gather index points
    at the logits that score each completion token."""
    from mixed_r1.engine import PolicyBatch
    from mixed_r1.engine.megatron import completion_logprobs, pack_microbatch

    pad = 0
    ids = torch.tensor([[pad, pad, 5, 6, 7, 8, pad], [9, 10, 11, 12, 13, 14, 15]])
    am = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]])
    targets = torch.tensor([[7, 8, pad], [13, 14, 15]])  # prompt length 4, T = 3
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    b = PolicyBatch(inputs={"input_ids": ids, "attention_mask": am}, targets=targets, mask=mask,
                    advantages=torch.zeros(2))
    mb = pack_microbatch(b, pad, rows=3, seq_len=9)
    assert mb["input_ids"].shape == (3, 9) and mb["n_rows"] == 2
    assert mb["input_ids"][0].tolist() == [5, 6, 7, 8, 0, 0, 0, 0, 0]
    assert mb["input_ids"][1].tolist() == [9, 10, 11, 12, 13, 14, 15, 0, 0]
    assert mb["gather_index"].tolist() == [[1, 2, 3], [3, 4, 5]]
    # the packed targets at the gathered positions are the completion tokens
    got = mb["targets"][:2].gather(1, mb["gather_index"])
    assert (got * mask.long()).tolist() == (targets * mask.long()).tolist()
    logp = torch.arange(27, dtype=torch.float32).view(3, 9)
    assert completion_logprobs(logp, mb, mask).tolist() == [[1.0, 2.0, 0.0], [12.0, 13.0, 14.0]]


def test_pack_thd_microbatch_cuts_rows_at_position_zero():
    """A packed batch → megatron-core THD: ``cu_seqlens`` at every row start (position 0), the
    longest row as ``max_seqlen``, a pad tail to ``seq_len`` as one more row, targets shifted by
    one; the gather index reads each completion token's scoring position."""
    from mixed_r1.data.prompts import pack_rows
    from mixed_r1.engine import PolicyBatch
    from mixed_r1.engine.megatron import completion_logprobs, pack_thd_microbatch

    inputs, targets, mask, index = pack_rows([[5, 6], [9, 10, 11]], [[7, 8], [12]], 0)
    b = PolicyBatch(inputs=inputs, targets=targets, mask=mask, advantages=torch.zeros(2),
                    logit_index=index)
    mb = pack_thd_microbatch(b, 0, seq_len=10)
    psp = mb["packed_seq_params"]
    assert psp.qkv_format == "thd" and psp.cu_seqlens_q.dtype == torch.int32
    assert psp.cu_seqlens_q.tolist() == psp.cu_seqlens_kv.tolist() == [0, 4, 8, 10]
    assert psp.max_seqlen_q == psp.max_seqlen_kv == 4
    assert mb["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11, 12, 0, 0]]
    assert mb["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]]
    assert mb["targets"][0][mb["gather_index"]].mul(mask.long()).tolist() == [[7, 8], [12, 0]]
    logp = torch.arange(10, dtype=torch.float32)[None]
    assert completion_logprobs(logp, mb, mask).tolist() == [[1.0, 2.0], [6.0, 0.0]]
    assert pack_thd_microbatch(b, 0)["packed_seq_params"].cu_seqlens_q.tolist() == [0, 4, 8]
    with pytest.raises(ValueError, match="seq_len 7 is below the pack's 8 tokens"):
        pack_thd_microbatch(b, 0, seq_len=7)


@pytest.mark.multirank
@pytest.mark.slow
def test_mcore_tp2_assembled_policy_matches_hf_backend(runs):
    """An assembled Qwen2.5-VL directory (``mixed-r1 convert lm-to-qwen25vl`` of a Llama: zero
    q/k/v biases, tied embeddings, vocab 49,157 padded for TP, a fresh vision tower) as
    ``model.kind=pretrained`` on the mcore trainer at TP=2 (2 gloo ranks): the first update of its
    first GRPO step, on micro-batches whose rows all carry an image, has the HF backend's
    (``HFEngine``, the same micro-batches and loss) per-micro-batch losses (1e-4 relative),
    log-probs (1e-5) and gradients of every parameter, language model, vision tower and merger
    (1e-4 relative to each tensor's largest |g|, test_parallel_multimodal's bound); the step's
    gradient norm is the HF one's, and its update the HF backend's (the 1e-3 weight bound above)."""
    from safetensors.torch import load_file

    from mixed_r1.engine import HFEngine, LossConfig, PolicyBatch, load_pretrained_model, run_update

    out = runs["tp2"]["dir"]
    res = runs["tp2"]["assembled"]
    batch = load_file(str(out / "assembled_batch.safetensors"))
    mbs = []
    for i in range(res["n"]):
        f = {k[len(f"mb{i}/"):]: v for k, v in batch.items() if k.startswith(f"mb{i}/")}
        inputs = {k[len("inputs."):]: v for k, v in f.items() if k.startswith("inputs.")}
        assert inputs["pixel_values"].shape[0] > 0 and inputs["image_grid_thw"].shape[0] > 0
        mbs.append(PolicyBatch(inputs=inputs, targets=f["targets"], mask=f["mask"],
                               advantages=f["advantages"], old_logprobs=f.get("old_logprobs"),
                               ref_logprobs=f.get("ref_logprobs"),
                               rollout_logprobs=f.get("rollout_logprobs"), scale=res["scale"][i],
                               num_items=res["num_items"][i]))
    o = res["optim"]
    model = load_pretrained_model(runs["assembled"])
    hf = HFEngine(model, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"],
                  weight_decay=o["weight_decay"])
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: dict = {}  # the HF update's per-micro-batch results and its unclipped gradients
    forward_backward, step = hf.forward_backward, hf.step
    hf.forward_backward = lambda mbs, fn: seen.setdefault("res", forward_backward(mbs, fn))

    def grabbing_step(lr, scale):
        seen["grads"] = {n: p.grad.clone() for n, p in model.named_parameters()}
        step(lr, scale)

    hf.step = grabbing_step
    m = res["metrics"]
    assert (m["update/count"], m["update/skipped"]) == (1, 0)
    upd = run_update(hf, mbs, LossConfig(**res["loss_cfg"]), m["lr"], grad_clip=o["grad_clip"])
    ref = sorted(seen["res"], key=lambda r: r.index)
    assert len(ref) == len(mbs) == 2
    assert [r.loss.item() for r in ref] == pytest.approx(res["loss"], rel=1e-4, abs=1e-7)
    for r in ref:
        got = batch[f"mb{r.index}/result.logprobs"]
        assert torch.allclose(got, r.logprobs, atol=1e-5, rtol=1e-5), r.index
    grads = load_file(str(out / "assembled_grads.safetensors"))
    assert sorted(grads) == sorted(init)
    worst: dict[str, float] = {}
    for name, g in seen["grads"].items():
        assert g.abs().max() > 0, name  # every parameter learns: the image reaches the tower
        err = float((grads[name].double() - g.double()).abs().max() / g.double().abs().max())
        part = "merger" if ".merger." in name else "vision" if ".visual." in name else "lm"
        worst[part] = max(worst.get(part, 0.0), err)
        assert err < 1e-4, (name, err)
    assert set(worst) == {"lm", "vision", "merger"}
    print("assembled TP=2 vs HF, max relative gradient errors:", worst)
    assert upd["grad_norm"] == pytest.approx(m["grad_norm"], rel=1e-4)
    assert upd["loss"] == pytest.approx(m["loss"], rel=1e-4, abs=1e-7)
    after = {n: p.detach() for n, p in model.named_parameters()}
    streamed = load_file(str(out / "assembled_weights.safetensors"))
    assert sorted(streamed) == sorted(after)
    assert _update_rel_diff(streamed, after, init) < 1e-3

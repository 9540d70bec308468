"""GRPO trainer end to end on CPU: steps run, the loss falls on a fixed batch, the generator
serves new weights after each step, metrics are written; errors are clear."""
from __future__ import annotations

import json
import math

import pytest
import torch

from _trainer_util import make_data, tiny_overrides
from mixed_r1.config import load_config
from mixed_r1.engine import run_update
from mixed_r1.trainer import PromptStream, build_trainer


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trainer(data_file, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = load_config(None, tiny_overrides(data_file, run) + ["algo.ppo_epochs=2", "algo.beta=0.05"])
    return build_trainer(cfg, run)


def _gen_params(tr):
    return {k: v.detach().clone() for k, v in tr.generator.model.named_parameters()}


def test_steps_sync_weights_and_write_metrics(trainer, tmp_path):
    from mixed_r1.metrics import MetricsLogger, read_metrics

    logger = MetricsLogger(tmp_path, tensorboard=False, progress=False)
    for _ in range(3):
        before = _gen_params(trainer)
        m = trainer.step()
        logger.log(trainer.step_count, m)
        after = _gen_params(trainer)
        changed = [k for k in after if not torch.equal(before[k], after[k])]
        if m["update/count"] and not m["update/skipped"] and m["adv/abs_mean"] > 0:
            assert changed, "the generator serves the same weights after an update"
        pol = dict(trainer.policy.model.named_parameters())
        assert all(torch.equal(after[k], pol[k].detach()) for k in after)  # in sync
    logger.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # the rollout's two parts add up to it
        assert 0 <= r["time/generate"] + r["time/reward"] <= r["time/generate_and_reward"] + 1e-6, r
    for key in ("reward/total", "reward/format", "reward/accuracy", "adv/abs_mean",
                "response/length_mean", "time/generate_and_reward", "time/update",
                "perf/tokens_per_s", "counters/nonfinite_skips", "lr"):
        assert key in rows[-1], key
    updated = [r for r in rows if r["update/count"] and r["adv/abs_mean"] > 0]
    assert updated, "no step had a non-zero advantage"
    for key in ("loss", "kl_mean", "clip_frac", "entropy", "rollout/logprob_abs_diff"):
        assert key in updated[-1], key
    # the sampler and trainer log-probs agree on the pre-update policy (same weights)
    assert updated[-1]["rollout/logprob_abs_diff"] < 1e-3
    from mixed_r1.data import TASK_TYPES

    for r in rows:  # per-task reward components for the task types sampled in that step
        assert any(f"reward/{t}/accuracy" in r and f"reward/{t}/format" in r for t in TASK_TYPES)


def _fixed_batch(trainer, step=100, with_rollouts=False):
    ro = trainer.rollout(step)
    ro.keep = list(range(len(ro.completions)))
    ro.advantages = torch.tensor([1.0, -1.0] * (len(ro.completions) // 2))
    minis = trainer.micro_batches(ro, step)
    for mb in (mb for mini in minis for mb in mini):
        mb.old_logprobs = trainer.policy.forward_logprobs(mb, 1.0)
        mb.ref_logprobs = trainer.ref.forward_logprobs(mb, 1.0)
    return (ro, minis) if with_rollouts else minis


def _mb_loss(trainer, mb):
    from mixed_r1.engine import PolicyLoss

    return PolicyLoss(trainer.loss_cfg).from_logits(trainer.policy.logits(mb), mb)[0]


def _loss(trainer, minis):
    with torch.no_grad():
        return sum(float(_mb_loss(trainer, mb)) * mb.scale for mini in minis for mb in mini)


def test_loss_decreases_on_fixed_batch(trainer):
    minis = _fixed_batch(trainer)
    start = _loss(trainer, minis)
    for _ in range(4):
        run_update(trainer.policy, minis[0], trainer.loss_cfg, 3e-3)
    end = _loss(trainer, minis)
    assert end < start - 1e-3, (start, end)


def test_micro_batches_accumulate_exactly(trainer):
    """Gradient of one 8-row micro-batch == accumulated gradient of two 4-row ones (dapo)."""
    ro, minis4 = _fixed_batch(trainer, step=101, with_rollouts=True)
    assert len(minis4[0]) == 2
    mbs = minis4[0]

    def grads(batches):
        model = trainer.policy.model
        model.zero_grad(set_to_none=True)
        for mb in batches:
            (_mb_loss(trainer, mb) * mb.scale).backward()
        out = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    g_acc = grads(mbs)
    # rebuild the same 8 rows as one micro-batch from the 4-row ones
    from mixed_r1.engine import PolicyBatch

    T = max(mb.targets.shape[1] for mb in mbs)
    rows = [r for mb in mbs for r in mb.rows]
    comps = [ro.completions[i] for i in rows]
    from mixed_r1.data.prompts import encode_rows

    inputs, targets, mask = encode_rows(trainer.processor, [ro.prompt_texts[c.prompt_index] for c in comps],
                                        [ro.samples[c.prompt_index].images for c in comps],
                                        [c.token_ids for c in comps], trainer.pad_id)
    pad = lambda x: torch.nn.functional.pad(x, (0, targets.shape[1] - x.shape[1]))  # noqa: E731
    one = PolicyBatch(inputs=inputs, targets=targets, mask=mask,
                      advantages=torch.cat([mb.advantages for mb in mbs]),
                      old_logprobs=torch.cat([pad(mb.old_logprobs) for mb in mbs]),
                      ref_logprobs=torch.cat([pad(mb.ref_logprobs) for mb in mbs]),
                      num_items=float(mask.sum()))
    assert T <= targets.shape[1]
    g_one = grads([one])
    # equal up to float32 noise from the different padding; a wrong micro-batch scale or
    # token normalizer would be off by tens of percent
    num = sum(float((g_acc[k] - g_one[k]).square().sum()) for k in g_one) ** 0.5
    den = sum(float(g_one[k].square().sum()) for k in g_one) ** 0.5
    assert den > 0 and num / den < 1e-3, num / den


def test_nonfinite_loss_skips_update(trainer):
    minis = _fixed_batch(trainer, step=102)
    for mb in minis[0]:
        mb.advantages = torch.full_like(mb.advantages, float("nan"))
    before = {k: v.detach().clone() for k, v in trainer.policy.model.named_parameters()}
    out = run_update(trainer.policy, minis[0], trainer.loss_cfg, 1e-2)
    assert out["skipped"] == 1.0 and not math.isfinite(out["loss"])
    after = dict(trainer.policy.model.named_parameters())
    assert all(torch.equal(before[k], after[k].detach()) for k in before)


def test_dynamic_sampling_drops_tied_groups(trainer, monkeypatch):
    from mixed_r1.rewards.router import RewardBatch

    def tied(completions, samples):
        n = len(completions)
        return RewardBatch(total=[1.0] * n, accuracy=[1.0] * n, format=[0.0] * n,
                           task_types=[s.task_type for s in samples])

    monkeypatch.setattr(trainer, "reward", tied)
    monkeypatch.setattr(trainer.cfg.algo, "dynamic_sampling", True)
    before = trainer.counters["dropped_groups"]
    ro = trainer.rollout(200)
    assert ro.keep == [] and trainer.counters["dropped_groups"] == before + 2
    assert float(ro.advantages.abs().max()) == 0.0


def test_kept_rows_are_counted_per_task(trainer, monkeypatch):
    """``rows/kept/<task>``: the rows of each task that enter the update, i.e. the rows of its
    groups whose rewards are not tied (the first prompt's group tied, the others not)."""
    from collections import Counter

    from mixed_r1.rewards.router import RewardBatch

    seen = []

    def first_group_tied(completions, samples):
        first = samples[0].id
        seen.extend(s.task_type for s in samples if s.id != first)
        total = [1.0 if s.id == first else float(i % 2) for i, s in enumerate(samples)]
        return RewardBatch(total=total, accuracy=total, format=[0.0] * len(total),
                           task_types=[s.task_type for s in samples])

    monkeypatch.setattr(trainer, "reward", first_group_tied)
    monkeypatch.setattr(trainer.cfg.algo, "dynamic_sampling", True)
    m = trainer.step()
    ro_tasks = {k[len("rows/kept/"):]: v for k, v in m.items() if k.startswith("rows/kept/")}
    G, P = trainer.cfg.rollout.group_size, trainer.cfg.rollout.prompts_per_step
    assert sum(ro_tasks.values()) == m["rows/kept"] == G * (P - 1)
    assert {k: v for k, v in ro_tasks.items() if v} == dict(Counter(seen))


def test_prompt_stream_resumes():
    a = PromptStream(list(range(5)), seed=3)
    first = a.next(7)
    b = PromptStream(list(range(5)), seed=3)
    b.load_state_dict(a.state_dict())
    assert a.next(9) == b.next(9)
    assert sorted(first[:5]) == list(range(5))  # an epoch is a permutation


def test_missing_data_file_is_clear(tmp_path):
    cfg = load_config(None, tiny_overrides(tmp_path / "nope.jsonl", tmp_path))
    with pytest.raises(FileNotFoundError, match="data.train_file: no such file or directory: .*nope.jsonl"):
        build_trainer(cfg, tmp_path)


def test_model_mismatch_is_clear(trainer, data_file, tmp_path):
    from mixed_r1.checkpoint import load_checkpoint
    from mixed_r1.engine import ModelMismatchError

    path = trainer.save()
    cfg = load_config(None, tiny_overrides(data_file, tmp_path) + ["model.hidden_size=48"])
    other = build_trainer(cfg, tmp_path)
    ck = load_checkpoint(path)
    with pytest.raises(ModelMismatchError, match=r"model.safetensors: tensor '.*' has shape"):
        other.policy.load(ck.model, None, source=str(path / "model.safetensors"))
    with pytest.raises(ModelMismatchError, match="model.safetensors"):
        other.resume(path)


def test_checkpoint_roundtrip_and_keep_last(trainer, tmp_path):
    import random

    from mixed_r1.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint

    random.seed(5)
    for step in (1, 2, 3):
        p = save_checkpoint(tmp_path, step, trainer.policy.state_dict_for_checkpoint(),
                            {"data": {"epoch": 0, "index": step}}, "seed: 0\n", keep_last=2)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step_00000002", "step_00000003"]
    assert not list(tmp_path.glob(".tmp-*"))
    x = random.random()
    ck = load_checkpoint(p)
    from mixed_r1.checkpoint import restore_rng

    restore_rng(ck.rng)
    assert random.random() == x
    sd = trainer.policy.model.state_dict()
    for k, v in ck.model.items():
        assert torch.equal(v, sd[k])
    assert json.loads((p / "trainer_state.json").read_text())["step"] == 3


def test_truncated_importance_sampling_in_a_step(data_file, tmp_path):
    """algo.rollout_is: token_tis weights the surrogate by min(exp(old − rollout), cap) and logs the
    mean weight; with the sampler and the trainer in float32 the weights are ~1."""
    cfg = load_config(None, tiny_overrides(data_file, tmp_path) + [
        "algo.rollout_is=token_tis", "algo.rollout_is_cap=2.0"])
    tr = build_trainer(cfg, tmp_path)
    m = {}
    for _ in range(3):
        m = tr.step()
        if m["update/count"]:
            break
    assert m["update/count"] and m["rollout_is_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    assert m["rollout_is_clip_frac"] == 0.0


@pytest.mark.slow  # trains with evaluations (integration, > 5 s here)
def test_periodic_eval_on_the_eval_file(data_file, tmp_path):
    """eval_every: the held-out file is evaluated greedily every eval_every steps and logged per
    task; the logged accuracy equals one recomputed row by row with the final weights."""
    from mixed_r1.data.prompts import build_messages, model_frame_sample
    from mixed_r1.metrics import MetricsLogger, read_metrics
    from mixed_r1.rollout import Prompt, SamplingParams

    cfg = load_config(None, tiny_overrides(data_file, tmp_path / "run", steps=2) + [
        f"data.eval_file={data_file}", "eval_every=1", "eval_samples=5", "log_every=2"])
    tr = build_trainer(cfg, tmp_path / "run")
    assert len(tr.eval_set) == 5
    assert [s.id for s in tr.eval_set] == [s.id for s in build_trainer(cfg, tmp_path / "b").eval_set]
    logger = MetricsLogger(tmp_path / "run", tensorboard=False, progress=False)
    hist = tr.train(logger)
    logger.close()
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2]  # step 1 is logged for its eval despite log_every
    tasks = {s.task_type for s in tr.eval_set}
    for h in hist:
        assert h["eval/n"] == 5
        assert {k.split("/")[1] for k in h
                if k.startswith("eval/") and k.endswith("/accuracy") and k.count("/") == 2} == tasks
    acc = []
    for s in tr.eval_set:  # one prompt at a time, scored alone
        c, = tr.generator.generate([Prompt(messages=build_messages(s), images=list(s.images))], 1,
                                   SamplingParams(max_new_tokens=6, temperature=0.0, seed=0))
        acc.append(tr.reward([c.text], [model_frame_sample(s, tr.processor)]).accuracy[0])
    assert hist[-1]["eval/accuracy"] == pytest.approx(sum(acc) / len(acc))


def test_eval_every_needs_an_eval_file(data_file, tmp_path):
    from mixed_r1.config import ConfigError

    with pytest.raises(ConfigError, match="'eval_every'=2 needs 'data.eval_file'"):
        load_config(None, tiny_overrides(data_file, tmp_path) + ["eval_every=2"])


def test_token_budget_micro_batches_give_the_same_update(trainer, monkeypatch):
    """``algo.max_tokens_per_micro_batch`` regroups an update's rows by length (less padding) and
    leaves its gradient unchanged (dapo: the token normalizer is the whole update's)."""
    from mixed_r1.algo.batching import padded_positions

    ro = trainer.rollout(103)
    ro.keep = list(range(len(ro.completions)))
    ro.advantages = torch.linspace(-1.0, 1.0, len(ro.completions))
    length = trainer.row_lengths(ro)
    for mb in (mb for mini in trainer.micro_batches(ro, 103) for mb in mini):
        assert [sum(length[r]) for r in mb.rows] == mb.inputs["attention_mask"].sum(1).tolist()
        assert padded_positions([mb.rows], length) == mb.inputs["input_ids"].numel()

    def grads_and_layout(budget):
        monkeypatch.setattr(trainer.cfg.algo, "max_tokens_per_micro_batch", budget)
        minis = trainer.micro_batches(ro, 103)
        mbs = minis[0]
        model = trainer.policy.model
        model.zero_grad(set_to_none=True)
        for mb in mbs:
            mb.old_logprobs = trainer.policy.forward_logprobs(mb, 1.0)
            mb.ref_logprobs = trainer.ref.forward_logprobs(mb, 1.0)
            (_mb_loss(trainer, mb) * mb.scale).backward()
        g = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return g, [mb.rows for mb in mbs], [tuple(mb.inputs["input_ids"].shape) for mb in mbs]

    g_rows, by_rows, _ = grads_and_layout(None)
    budget = 2 * max(sum(x) for x in length.values())
    g_tok, by_tokens, shapes = grads_and_layout(budget)
    assert sorted(r for mb in by_tokens for r in mb) == sorted(ro.keep)
    assert all(b * s <= budget or b == 1 for b, s in shapes), shapes
    assert all(len(mb) <= trainer.cfg.algo.micro_batch_size for mb in by_tokens)
    assert padded_positions(by_tokens, length) <= padded_positions(by_rows, length)
    assert len(by_tokens) > len(by_rows)  # a budget of two longest rows cuts finer
    num = sum(float((g_rows[k] - g_tok[k]).square().sum()) for k in g_rows) ** 0.5
    den = sum(float(g_rows[k].square().sum()) for k in g_rows) ** 0.5
    assert den > 0 and num / den < 1e-5, num / den


def test_chunked_lm_head_equals_the_materialized_logits(trainer, monkeypatch):
    """``model.chunked_lm_head``: the HF engine scores the decoder's hidden states with
    linear_token_logprobs instead of the model's [B, T, V] logits, only the real completion
    tokens' states (``[1, mask.sum(), H]``). On the tiny Qwen2.5-VL's image batches: old log-probs
    within 1e-5, and the update's loss, metrics (entropy included) and gradients those of the
    materialized path (1e-5 relative)."""
    import mixed_r1.kernels
    from mixed_r1.engine import PolicyLoss

    op, seen = mixed_r1.kernels.linear_token_logprobs, []

    def spy(hidden, *a, **k):
        seen.append(tuple(hidden.shape[:2]))
        return op(hidden, *a, **k)
    monkeypatch.setattr(mixed_r1.kernels, "linear_token_logprobs", spy)

    minis = _fixed_batch(trainer, step=103)
    mbs = [mb for mini in minis for mb in mini]
    assert any("pixel_values" in mb.inputs for mb in mbs)
    for mb in mbs:  # padded completion positions (the fixed batch's completions are all full length)
        mb.mask = mb.mask.clone()
        mb.mask[0, -3:] = 0
    policy, model = trainer.policy, trainer.policy.model
    assert not policy.chunked_lm_head
    head_calls = [0]  # the model's own LM head must not run on the chunked path
    hook = model.get_output_embeddings().register_forward_hook(
        lambda *a: head_calls.__setitem__(0, head_calls[0] + 1))
    want = [policy.forward_logprobs(mb) for mb in mbs]
    assert head_calls[0] == len(mbs)
    policy.chunked_lm_head = True
    try:
        for mb, w in zip(mbs, want):
            torch.testing.assert_close(policy.forward_logprobs(mb), w, atol=1e-5, rtol=0)
    finally:
        policy.chunked_lm_head = False
        hook.remove()
    assert head_calls[0] == len(mbs)
    loss = PolicyLoss(trainer.loss_cfg)

    def run(chunk: bool):
        model.zero_grad(set_to_none=True)
        policy.chunked_lm_head = chunk
        try:
            res = policy.forward_backward(mbs, loss)
        finally:
            policy.chunked_lm_head = False
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return res, grads

    (want, g_want), (got, g_got) = run(False), run(True)
    n_real = [(1, int(mb.mask.sum())) for mb in mbs]
    assert seen == n_real + n_real and sum(n for _, n in n_real) < sum(mb.mask.numel() for mb in mbs)
    for a, b in zip(got, want, strict=True):
        assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5, abs=1e-7)
        assert sorted(a.metrics) == sorted(b.metrics) and "entropy" in a.metrics
        for k in b.metrics:
            assert float(a.metrics[k]) == pytest.approx(float(b.metrics[k]), rel=1e-5, abs=1e-6), k
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    num = sum(float((g_got[k] - g_want[k]).square().sum()) for k in g_want) ** 0.5
    den = sum(float(g_want[k].square().sum()) for k in g_want) ** 0.5
    assert sorted(g_got) == sorted(g_want) and den > 0 and num / den < 1e-5, num / den


def test_chunked_lm_head_is_refused_where_it_does_not_apply():
    from mixed_r1.config import ConfigError, TrainConfig, validate
    from mixed_r1.engine.hf import check_chunkable_head
    from transformers import Gemma2Config, Gemma2ForCausalLM

    cfg = TrainConfig()
    cfg.model.chunked_lm_head = True
    cfg.parallel.backend = "mcore"
    with pytest.raises(ConfigError, match="'model.chunked_lm_head' is for parallel.backend: hf"):
        validate(cfg)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=8))
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        check_chunkable_head(gemma)


def test_completion_tokens_only_reach_the_lm_head(trainer):
    """With a plain ``hidden · Wᵀ`` head the HF engine sends only the real completion tokens'
    hidden states through it (``[n, H]``, n = the mask's sum) instead of every row padded to the
    longest completion. On the tiny Qwen2.5-VL's image batches: old log-probs, the update's loss,
    metrics (entropy included) and gradients equal the fused ``grpo_loss`` over the model's
    ``[B, T, V]`` logits (1e-5 relative)."""
    from mixed_r1.engine import PolicyLoss

    minis = _fixed_batch(trainer, step=104)
    mbs = [mb for mini in minis for mb in mini]
    for mb in mbs:  # shorter completions in every other row (the random policy never stops)
        mb.mask[::2, mb.mask.shape[1] // 2:] = 0
    policy, model = trainer.policy, trainer.policy.model
    assert policy._plain_head and all(bool((mb.mask == 0).any()) for mb in mbs)
    rows: list[int] = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, args, out: rows.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
    loss = PolicyLoss(trainer.loss_cfg)

    def run(compact: bool):
        policy._plain_head = compact
        rows.clear()
        try:
            lps = [policy.forward_logprobs(mb) for mb in mbs]
            model.zero_grad(set_to_none=True)
            res = policy.forward_backward(mbs, loss)
        finally:
            policy._plain_head = True
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return lps, res, grads, list(rows)

    try:
        (lp_want, want, g_want, rows_want), (lp_got, got, g_got, rows_got) = run(False), run(True)
    finally:
        hook.remove()
    assert rows_got == [int(mb.mask.sum()) for mb in mbs] * 2
    assert rows_want == [mb.mask.numel() for mb in mbs] * 2
    for a, b in zip(lp_got, lp_want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for a, b, mb in zip(got, want, mbs, strict=True):
        assert float(a.loss) == pytest.approx(float(b.loss), rel=1e-5, abs=1e-7)
        assert sorted(a.metrics) == sorted(b.metrics) and "entropy" in a.metrics
        for k in b.metrics:
            assert float(a.metrics[k]) == pytest.approx(float(b.metrics[k]), rel=1e-5, abs=1e-6), k
        torch.testing.assert_close(a.logprobs * mb.mask, b.logprobs * mb.mask, atol=1e-5, rtol=0)
    num = sum(float((g_got[k] - g_want[k]).square().sum()) for k in g_want) ** 0.5
    den = sum(float(g_want[k].square().sum()) for k in g_want) ** 0.5
    assert sorted(g_got) == sorted(g_want) and den > 0 and num / den < 1e-5, num / den

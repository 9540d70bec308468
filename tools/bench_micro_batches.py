#!/usr/bin/env python
"""Padding and update time: row-count micro-batches vs token-budget ones, same rows, one run.

    python tools/bench_micro_batches.py [--backend hf|mcore] [--chunked-lm-head] [--rows 64]
        [--group 1] [--layers 4] [--reps 3]

Rows: ``--rows`` prompt + completion pairs with prompts of 40–120 tokens and completions of
16–256 tokens (uniform, seeded), in a seeded shuffle as the trainer draws them, laid out as the
trainer lays them out (prompts left-padded, completions right-padded). ``--group G``: GRPO groups,
every ``G`` consecutive rows sharing one prompt (its length drawn once), and one more path,
``shared`` (HF): ``algo.shared_prefix`` with the same budget counted in its layout (rows
regrouped by prompt, each prompt computed once per micro-batch, one batch row per prompt). Policy: SmolLM2-135M's
architecture (hidden 576, 9 heads / 3 KV heads, FFN 1536, 49,152-token tied vocab) with
``--layers`` decoder layers (30 in the real model; fewer keep the CPU run short, and the padding
share of the cost does not depend on depth), random weights, float32, through
:class:`mixed_r1.engine.HFEngine` (``--backend hf``) or :class:`mixed_r1.engine.megatron.MegatronEngine`
(``--backend mcore``: the same weights converted to megatron-core, one gloo rank, the local layer
spec) and the trainer's GRPO loss (dapo, β = 0). ``--chunked-lm-head`` (HF): log-probs through
``linear_token_logprobs`` instead of the materialized logits (``model.chunked_lm_head``).

Paths: ``rows`` = micro-batches of ``--micro-batch-size`` rows (``algo.micro_batch_size``);
``tokens`` = ``algo.max_tokens_per_micro_batch`` set to the largest row-count micro-batch's
padded size (the same peak activation memory); ``packed`` = ``algo.pack_sequences`` with the
same budget, now counting packed tokens (rows concatenated without padding, attention within
each row: transformers' packed-sequence mask over the whole pack on HF; megatron-core THD
``PackedSeqParams``, attention row by row, on mcore). Timed: forward + backward of the whole update
(``forward_backward`` over every micro-batch) and the no-grad log-prob pass, interleaved,
``--reps`` times after one warm-up of each; median and minimum. Positions: those the backend
computes (HF: rows × (longest prompt + longest completion); megatron re-aligns every row to the
left: rows × (longest row + 1); packed: Σ row lengths).
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_rows(n: int, seed: int, group: int = 1) -> list[tuple[int, int]]:
    """(prompt, completion) lengths; every ``group`` consecutive rows share the prompt's."""
    rng = random.Random(seed)
    out: list[tuple[int, int]] = []
    for r in range(n):
        prompt = rng.randint(40, 120) if r % group == 0 else out[-1][0]
        out.append((prompt, rng.randint(16, 256)))
    return out


def make_ids(lengths: list[tuple[int, int]], group: int, vocab: int, seed: int):
    """Seeded random token ids of every row: one prompt per group of rows, a completion and an
    advantage per row."""
    import torch

    g = torch.Generator().manual_seed(seed)
    prompts: list[list[int]] = []
    for r, (p, _) in enumerate(lengths):
        prompts.append(torch.randint(0, vocab, (p,), generator=g).tolist() if r % group == 0
                       else prompts[-1])
    comps = [torch.randint(0, vocab, (c,), generator=g).tolist() for _, c in lengths]
    return prompts, comps, torch.randn(len(lengths), generator=g)


def policy_batch(rows: list[int], ids, pad: int, total_tokens: int, layout: str = "rows"):
    """The trainer's micro-batch of these rows (mixed_r1.data.prompts.append_completions after
    left-padded prompts, pack_rows, or pack_shared_prefix_rows), with ``ids`` from make_ids."""
    import torch

    from mixed_r1.data.prompts import append_completions, pack_rows, pack_shared_prefix_rows
    from mixed_r1.engine import PolicyBatch

    prompts = [ids[0][r] for r in rows]
    comps = [ids[1][r] for r in rows]
    adv = ids[2][rows]
    index = real = None
    if layout == "packed":
        inputs, targets, mask, index = pack_rows(prompts, comps, pad)
    elif layout == "shared":
        inputs, targets, mask, index, real = pack_shared_prefix_rows(prompts, comps, pad)
    else:
        S = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (S - len(p)) + p for p in prompts])
        attn = torch.tensor([[0] * (S - len(p)) + [1] * len(p) for p in prompts])
        inputs, targets, mask = append_completions({"input_ids": ids, "attention_mask": attn},
                                                   comps, pad)
    return PolicyBatch(inputs=inputs, targets=targets, mask=mask, advantages=adv,
                       num_items=float(total_tokens), scale=1.0, rows=list(rows),
                       logit_index=index, input_tokens=real)


def megatron_engine(model, pad: int):
    """``model`` saved, converted to megatron-core and loaded as a one-rank (gloo) MegatronEngine."""
    import atexit
    import shutil
    import tempfile

    from mixed_r1.engine.megatron import MegatronEngine
    from mixed_r1.parallel import init_parallel, single_process_env

    single_process_env()
    init_parallel()
    root = Path(tempfile.mkdtemp(prefix="bench_mb_"))
    atexit.register(shutil.rmtree, root, True)
    model.save_pretrained(root / "hf")
    return MegatronEngine.from_hf(root / "hf", root / "mcore", pad_id=pad, lr=1e-6)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", choices=("hf", "mcore"), default="hf")
    ap.add_argument("--chunked-lm-head", action="store_true")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--group", type=int, default=1,
                    help="rows per prompt (GRPO group size); > 1 adds the shared-prefix path (hf)")
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from mixed_r1.algo.batching import (padded_positions, shared_prefix_micro_batches,
                                        shared_prefix_positions, token_budget_micro_batches)
    from mixed_r1.engine import HFEngine, LossConfig, PolicyLoss

    torch.manual_seed(args.seed)
    vocab, pad = 49152, 2
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=args.layers, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5,
                      rope_theta=100000.0, pad_token_id=pad)
    model = LlamaForCausalLM(cfg).float()
    shared = args.group > 1
    if shared and args.backend != "hf":
        ap.error("--group > 1 (the shared-prefix path) is for --backend hf")
    if args.backend == "hf":
        engine = HFEngine(model, lr=1e-6, chunked_lm_head=args.chunked_lm_head,
                          shared_prefix=shared)
    else:
        engine = megatron_engine(model, pad)
    loss = PolicyLoss(LossConfig(loss_type="dapo", beta=0.0, eps_low=0.2, eps_high=0.28))

    lengths = make_rows(args.rows, args.seed, args.group)
    ids = make_ids(lengths, args.group, vocab, args.seed)
    order = list(range(args.rows))
    random.Random(args.seed + 1).shuffle(order)
    parts = {r: lengths[r] for r in order}
    total = sum(c for _, c in lengths)
    mbs = args.micro_batch_size
    by_rows = [order[s:s + mbs] for s in range(0, len(order), mbs)]
    budget = max(padded_positions([mb], parts) for mb in by_rows)
    by_tokens = token_budget_micro_batches(order, [parts[r] for r in order], budget, mbs)
    by_packed = token_budget_micro_batches(order, [parts[r] for r in order], budget, None,
                                           packed=True)
    layouts = {"rows": by_rows, "tokens": by_tokens, "packed": by_packed}
    if shared:  # the trainer's regrouping: prompts in a seeded order, rows shuffled within
        prompts = list(range(args.rows // args.group + 1))
        random.Random(args.seed + 2).shuffle(prompts)
        rank = {p: i for i, p in enumerate(prompts)}
        grouped = sorted(order, key=lambda r: rank[r // args.group])
        layouts["shared"] = shared_prefix_micro_batches(
            grouped, [r // args.group for r in grouped], [parts[r] for r in grouped], budget)
    batches = {k: [policy_batch(mb, ids, pad, total, k) for mb in v]
               for k, v in layouts.items()}

    def fwd_bwd(name: str) -> float:
        engine.zero_grad()
        t = time.perf_counter()
        engine.forward_backward(batches[name], loss)
        return time.perf_counter() - t

    def logprobs(name: str) -> float:
        t = time.perf_counter()
        for mb in batches[name]:
            engine.forward_logprobs(mb)
        return time.perf_counter() - t

    times: dict[tuple[str, str], list[float]] = {}
    for rep in range(args.reps + 1):  # rep 0 warms up
        for name in layouts:
            for phase, fn in (("fwd+bwd", fwd_bwd), ("logprobs", logprobs)):
                dt = fn(name)
                if rep:
                    times.setdefault((name, phase), []).append(dt)

    real = sum(p + c for p, c in lengths)
    print(f"{args.rows} rows{f' in groups of {args.group} per prompt' if shared else ''}: "
          f"prompts 40-120, completions 16-256 tokens ({real} tokens); "
          f"SmolLM2-135M shape with {args.layers} layers, float32, {args.backend} backend"
          f"{' (chunked LM head)' if args.chunked_lm_head else ''}, "
          f"torch threads "
          f"{torch.get_num_threads()}; token budget {budget} (= the largest {mbs}-row "
          f"micro-batch); median (min) of {args.reps}")
    head = f"{'path':<8}{'micro-batches':>14}{'positions':>11}{'padding':>9}"
    head += "".join(f"{ph + ' s':>20}{'ratio':>7}" for ph in ("fwd+bwd", "logprobs"))
    print(head)
    for name, layout in layouts.items():
        pos = padded_positions(layout, parts, packed=name == "packed")
        if args.backend == "mcore" and name != "packed":  # megatron left-aligns each row
            pos = sum(len(mb) * (max(sum(parts[r]) for r in mb) + 1) for mb in layout)
        computed = real
        if name == "shared":  # each prompt once per micro-batch
            pos = sum(shared_prefix_positions([r // args.group for r in mb], [parts[r] for r in mb])
                      for mb in layout)
            computed = sum(b.real_input_tokens for b in batches[name])
        line = f"{name:<8}{len(layout):>14}{pos:>11}{1 - computed / pos:>9.1%}"
        for phase in ("fwd+bwd", "logprobs"):
            med = statistics.median(times[(name, phase)])
            base = statistics.median(times[("rows", phase)])
            line += f"{med:>11.2f} ({min(times[(name, phase)]):>6.2f}){med / base:>7.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

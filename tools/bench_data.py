"""Benchmark: samples/s for loading + collating batches of 64 samples with images.

Builds a small synthetic set (or uses --data), then times, per batch of 64: JSONL load +
validation (amortised), prompt rendering, image decoding and the Qwen2.5-VL processor
(PIL image processor, real tokenizer). Prints a table; CPU only, times are this machine's.

    .venv/bin/python tools/bench_data.py [--data FILE] [--batches 8] [--max-pixels N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--max-pixels", type=int, nargs="+", default=[64 * 28 * 28, 256 * 28 * 28])
    args = ap.parse_args()

    from mixed_r1.data import TASK_TYPES, load_samples
    from mixed_r1.data.prompts import Collator
    from mixed_r1.data.synth import SynthConfig, synthesize
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor

    need = args.batch_size * args.batches
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data or synthesize(tmp, SynthConfig(seed=0, sizes={
            t: -(-need // len(TASK_TYPES)) for t in TASK_TYPES}))
        t0 = time.perf_counter()
        samples, _ = load_samples(path)
        t_load = time.perf_counter() - t0
        samples = (samples * (need // len(samples) + 1))[:need]
        n_img = sum(len(s.images) for s in samples)
        print(f"samples={need} images={n_img} load+validate={len(samples) / t_load:,.0f} samples/s")
        print(f"{'max_pixels':>10} {'batch':>6} {'ms/batch':>10} {'samples/s':>10} "
              f"{'rel':>6} {'tokens/batch':>13}")
        base = None
        for mp in args.max_pixels:
            coll = Collator(build_qwen25vl_processor(max_pixels=mp))
            coll(samples[: args.batch_size])  # warm-up
            t0 = time.perf_counter()
            tokens = 0
            for b in range(args.batches):
                batch = coll(samples[b * args.batch_size:(b + 1) * args.batch_size])
                tokens += int(batch["attention_mask"].sum())
            dt = time.perf_counter() - t0
            rate = need / dt
            base = base or rate
            print(f"{mp:>10} {args.batch_size:>6} {1000 * dt / args.batches:>10.1f} "
                  f"{rate:>10.1f} {rate / base:>6.2f} {tokens // args.batches:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``mixed-r1 train | eval | plot | bench``: ``register(subparsers)`` adds them to the main CLI.

Heavy imports happen inside each command; the CLI's error rules are :func:`mixed_r1.cli.run_command`'s
(one ``error:`` line and exit 2 for a user error, ``--debug`` for the traceback).

``train`` and its run directory: a new run refuses a non-empty ``out_dir`` unless ``--overwrite``
(which deletes what an earlier run wrote there); ``--resume`` refuses an ``out_dir`` that does not
exist and says which step it resumes from (:func:`mixed_r1.trainer.run_training`). SIGINT/SIGTERM
finish the current step, write a checkpoint and exit 130/143.
"""
from __future__ import annotations

import argparse
import json


def _train(args: argparse.Namespace) -> int:
    from mixed_r1.config import load_config
    from mixed_r1.trainer import run_training

    cfg = load_config(args.config, args.overrides)
    trainer = run_training(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"trained to step {trainer.step_count}; run dir {trainer.run_dir}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mixed_r1.evaluate import format_table, run_eval

    if args.out and Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already exists (pass --overwrite to replace it)")

    report = run_eval(args.model, args.data, k=args.k, temperature=args.temperature,
                      max_new_tokens=args.max_new_tokens, limit=args.limit, seed=args.seed,
                      out=args.out)
    print(format_table(report, f"{args.model} on {args.data} "
                               f"({'greedy' if report['temperature'] == 0 else 'sampled'}, k={args.k})"))
    if args.out:
        print(f"report: {args.out}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from mixed_r1.metrics import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0


def _bench(args: argparse.Namespace) -> int:
    import tempfile

    from mixed_r1.config import load_config

    overrides = list(args.overrides)
    if args.config is not None or any(o.startswith("data.train_file=") for o in overrides):
        return _bench_run(args, load_config(args.config, overrides))
    from mixed_r1.data.synth import SynthConfig, synthesize

    with tempfile.TemporaryDirectory(prefix="mixed-r1-bench-") as tmp:
        path = synthesize(tmp, SynthConfig(sizes={t: 8 for t in
                                                  ("yes_no", "multiple_choice", "chart", "math",
                                                   "grounding", "open_ended")}))
        overrides = [f"data.train_file={path}", f"out_dir={tmp}/run", "model.max_pixels=12544",
                     "progress=false"] + overrides
        return _bench_run(args, load_config(None, overrides))


def _bench_run(args: argparse.Namespace, cfg) -> int:
    from mixed_r1.trainer import bench_step

    rows = bench_step(cfg, args.steps)
    phases = ("generate", "reward", "old_ref_logprobs", "update", "sync", "step")
    print(f"{'phase':<22}{'seconds':>10}{'share':>8}")
    for ph in phases:  # generate + reward = generate_and_reward
        sec = sum(r[f"time/{ph}"] for r in rows) / len(rows)
        tot = sum(r["time/step"] for r in rows) / len(rows)
        print(f"{ph:<22}{sec:>10.3f}{sec / tot:>8.1%}")
    for key in ("perf/samples_per_s", "perf/gen_tokens", "perf/tokens_per_s",
                "perf/gen_and_reward_tokens_per_s", "perf/logprob_tokens_per_s",
                "perf/update_tokens_per_s", "perf/train_tokens_per_s", "perf/padding_fraction"):
        if all(key in r for r in rows):
            print(f"{key:<34}{sum(r[key] for r in rows) / len(rows):>12.3f}")
    if args.json:
        print(json.dumps(rows[-1], indent=1, sort_keys=True))
    return 0


def add_run_args(p: argparse.ArgumentParser, config_help: str, example: str) -> None:
    """The arguments of a command that writes a run directory (train, sft): --config,
    --resume | --overwrite, and the key.sub=value overrides (``example`` in their help)."""
    p.add_argument("--config", required=True, help=config_help)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue the run in out_dir from its newest complete checkpoint "
                           "(out_dir must exist)")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete what an earlier run wrote to out_dir and start over (without "
                           "it, a non-empty out_dir is refused)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help=f"config overrides, e.g. {example}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from mixed_r1.cli import float_in, int_at_least

    p = subparsers.add_parser(
        "train", help="GRPO training from a YAML config",
        description="GRPO training from a YAML config. Overrides (key.sub=value, any number, "
                    "before or after the flags; a later one wins) change the config's values: "
                    "mixed-r1 train --config C out_dir=X --overwrite steps=1")
    add_run_args(p, "YAML config (examples/*.yaml; every key, its default and meaning: "
                    "mixed_r1/config.py's dataclasses)", "steps=1 algo.lr=1e-6")
    p.set_defaults(func=_train)

    p = subparsers.add_parser(
        "eval", help="greedy or pass@k evaluation on a mixed set",
        description="Generate with an HF model directory on a mixed set (JSONL/Parquet in the "
                    "sample schema) and score with the Mixed-Reward: per task type, accuracy and "
                    "pass@k.")
    p.add_argument("--model", required=True,
                   help="HF model directory (a run's <out_dir>/model, or a converted checkpoint)")
    p.add_argument("--data", required=True, help="JSONL/Parquet file in the sample schema")
    p.add_argument("--k", type=int_at_least(1), default=1,
                   help="completions per prompt, pass@k (default: %(default)s)")
    p.add_argument("--temperature", type=float_in(0.0, 100.0), default=None,
                   help="sampling temperature (default: 0, greedy, for k=1; 1.0 for k>1)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=64,
                   help="tokens generated per completion at most (default: %(default)s)")
    p.add_argument("--limit", type=int_at_least(0), default=0,
                   help="only the first N samples (default: %(default)s = all)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--out", default=None,
                   help="also write the JSON report to this file (default: print only)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out file (without it, one is refused)")
    p.set_defaults(func=_eval)

    p = subparsers.add_parser("plot", help="draw a run's curves to PNG",
                              description="Draw a run's metrics.jsonl curves (rewards, loss, KL, "
                                          "lengths, timings) to one PNG.")
    p.add_argument("run_dir", help="a run directory (train's out_dir)")
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/curves.png)")
    p.set_defaults(func=_plot)

    p = subparsers.add_parser(
        "bench", help="per-phase time and tokens/s of GRPO steps",
        description="Time GRPO steps after one warm-up step: seconds and share per phase "
                    "(generate, reward, old/ref log-probs, update, weight sync) and tokens/s. "
                    "Without --config: the tiny Qwen2.5-VL policy on 48 synthesized samples in "
                    "a temporary directory (removed afterwards).")
    p.add_argument("--config", default=None,
                   help="YAML config (default: the tiny CPU setup described above)")
    p.add_argument("--steps", type=int_at_least(1), default=2,
                   help="timed steps after the warm-up step (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="also print the last step's metrics")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="config overrides, as for train")
    p.set_defaults(func=_bench)

"""``mixed-r1 data {synth, select, convert}`` (heavy modules are imported inside the commands)."""
from __future__ import annotations

import argparse
import json
import sys

from mixed_r1.tasks import TASK_TYPES


def _task_counts(pairs: list[str] | None, flag: str) -> dict[str, int]:
    """``TASK=N`` items of ``flag``; :class:`~mixed_r1.cli.UsageError` (exit 2) naming the flag
    and the bad item."""
    from mixed_r1.cli import UsageError

    out: dict[str, int] = {}
    for item in pairs or []:
        task, sep, n = item.partition("=")
        if not sep or task not in TASK_TYPES or not n.isdigit():
            raise UsageError(f"{flag}: expected TASK=N with TASK in {', '.join(TASK_TYPES)}, "
                             f"got {item!r}")
        out[task] = int(n)
    return out


def cmd_synth(args: argparse.Namespace) -> int:
    if args.text:
        return _synth_text(args)
    from mixed_r1.data.synth import SynthConfig, synthesize

    sizes = {t: args.per_task for t in TASK_TYPES}
    sizes.update(_task_counts(args.size, "--size"))
    path = synthesize(args.out, SynthConfig(seed=args.seed, sizes=sizes, fmt=args.format))
    print(f"wrote {sum(sizes.values())} samples to {path}")
    return 0


def _synth_text(args: argparse.Namespace) -> int:
    from mixed_r1.data.textsynth import TEXT_TASK_TYPES, TextSynthConfig, synthesize_text

    sizes = {t: args.per_task for t in TEXT_TASK_TYPES}
    overrides = _task_counts(args.size, "--size")
    other = sorted(set(overrides) - set(TEXT_TASK_TYPES))
    if other:
        from mixed_r1.cli import UsageError

        raise UsageError(f"--size: the --text set has no task type {', '.join(other)} "
                         f"(text task types: {', '.join(TEXT_TASK_TYPES)})")
    sizes.update(overrides)
    path = synthesize_text(args.out, TextSynthConfig(seed=args.seed, sizes=sizes, fmt=args.format))
    print(f"wrote {sum(sizes.values())} text samples to {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from mixed_r1.data.converters import CONVERTERS
    from mixed_r1.data.io import write_samples

    kwargs = {"image_root": args.image_root, "on_error": args.on_error,
              "check_images": not args.no_check_images}
    if args.kind == "refcoco":
        kwargs.update(box_format=args.box_format, coords=args.coords)
    if args.source:
        kwargs["source"] = args.source
    samples, report = CONVERTERS[args.kind](args.input, **kwargs)
    summary = {"out": args.out, "rows": report.rows, "samples": len(samples),
               "skipped": dict(report.skipped)}
    if args.kind == "math":  # golds math-verify cannot parse (rows named on stderr)
        summary["unparseable_golds"] = report.skipped.get("unparseable_gold", 0)
    unparseable = [e for e in report.errors if ": math solution " in e]  # schema's message
    others = [e for e in report.errors if ": math solution " not in e]
    for line in unparseable:  # every one of them, so each bad gold can be fixed
        print(f"unparseable gold: {line}", file=sys.stderr)
    for line in others[:20]:
        print(f"skipped: {line}", file=sys.stderr)
    if len(others) > 20:
        print(f"skipped: … and {len(others) - 20} more", file=sys.stderr)
    if not samples:
        summary["out"] = None
        print(json.dumps(summary))
        print(f"error: nothing converted from {args.input} ({report.rows} rows read, "
              f"{report.n_skipped} skipped); {args.out} not written", file=sys.stderr)
        return 1
    write_samples(samples, args.out)
    print(json.dumps(summary))
    return 0


def _load_policy(args: argparse.Namespace):
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl

    processor = build_qwen25vl_processor(min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    if args.policy == "tiny":
        model = build_tiny_qwen25vl(seed=args.seed)
    else:
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(args.policy,
                                                                   local_files_only=True)
    return model, processor


def cmd_select(args: argparse.Namespace) -> int:
    import torch

    from mixed_r1.data.engine import SelectConfig, select
    from mixed_r1.data.io import load_many
    from mixed_r1.rollout.hf import HFGenerator

    torch.set_num_threads(max(1, args.threads))
    samples, load_report = load_many(args.pool, on_error=args.on_error)
    if load_report.n_skipped:
        print(f"skipped {load_report.n_skipped} bad rows: {dict(load_report.skipped)}",
              file=sys.stderr)
    targets = _task_counts(args.target, "--target")
    if args.per_task is not None:
        targets = {t: targets.get(t, args.per_task) for t in TASK_TYPES}
    cfg = SelectConfig(k=args.k, pass_band=(args.band[0], args.band[1]),
                       closed_band=args.closed_band, pass_threshold=args.pass_threshold,
                       targets=targets or None, batch_size=args.batch_size, seed=args.seed,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_p=args.top_p, dedup=not args.no_dedup)
    model, processor = _load_policy(args)
    gen = HFGenerator(model, processor, batch_size=args.gen_batch_size)
    res = select(samples, gen, processor, args.out, cfg,
                 progress=lambda m: print(m, file=sys.stderr, flush=True),
                 load_report=load_report.to_dict())
    print(json.dumps({"out": str(res.out_dir), "totals": res.report["totals"],
                      "selected_per_task": res.report["selected_per_task"]}))
    return 0


def register(subparsers) -> None:
    """Add ``data`` with its sub-commands to the top-level ``mixed-r1`` parser."""
    data = subparsers.add_parser("data", help="datasets: synthesize, convert, select")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("synth", help="build the offline mixed set with real images "
                       "(--text: the text-only set for text LMs)")
    p.add_argument("--out", required=True)
    p.add_argument("--text", action="store_true", help="text-only set (math, multiple_choice, "
                   "yes_no, chart as a table in the question; no images) in OUT/text.jsonl")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-task", type=int, default=200, help="samples per task type")
    p.add_argument("--size", action="append", metavar="TASK=N", help="override one task's size")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert a public layout into the sample schema")
    p.add_argument("kind", choices=("llava", "chartqa", "refcoco", "math"))
    p.add_argument("--input", required=True)
    p.add_argument("--out", required=True, help="output .jsonl or .parquet")
    p.add_argument("--image-root", default=None)
    p.add_argument("--source", default=None)
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.add_argument("--no-check-images", action="store_true")
    p.add_argument("--box-format", choices=("xyxy", "xywh"), default="xywh")
    p.add_argument("--coords", choices=("pixel", "norm", "norm1000"), default="pixel")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("select", help="difficulty-filter, dedup and balance candidate pools")
    p.add_argument("--pool", nargs="+", required=True, help="candidate .jsonl/.parquet files")
    p.add_argument("--out", required=True)
    p.add_argument("--policy", default="tiny", help="'tiny' (random tiny Qwen2.5-VL) or a local "
                   "HF model directory")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--band", type=float, nargs=2, default=(0.0, 1.0), metavar=("LO", "HI"))
    p.add_argument("--closed-band", action="store_true", help="keep LO <= p <= HI")
    p.add_argument("--pass-threshold", type=float, default=0.5)
    p.add_argument("--target", action="append", metavar="TASK=N")
    p.add_argument("--per-task", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8, help="prompts per resumable chunk")
    p.add_argument("--gen-batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-dedup", action="store_true")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    p.add_argument("--min-pixels", type=int, default=56 * 56)
    p.add_argument("--max-pixels", type=int, default=256 * 28 * 28)
    p.add_argument("--threads", type=int, default=2)
    p.set_defaults(func=cmd_select)

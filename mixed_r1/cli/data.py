"""``mixed-r1 data {synth, select, convert}`` (heavy modules are imported inside the commands)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    path = synthesize(args.out, SynthConfig(seed=args.seed, sizes=sizes, fmt=args.format,
                                            yes_no_questions=args.yes_no),
                      overwrite=args.overwrite)
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
    path = synthesize_text(args.out, TextSynthConfig(seed=args.seed, sizes=sizes, fmt=args.format),
                           overwrite=args.overwrite)
    print(f"wrote {sum(sizes.values())} text samples to {path}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from mixed_r1.data.converters import CONVERTERS
    from mixed_r1.data.io import write_samples

    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} already exists (pass --overwrite to replace it)")

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


def _load_policy(args: argparse.Namespace, processor=None):
    """(model, processor) of ``--policy``: the tiny random Qwen2.5-VL, or a local HF model
    directory's weights with ``processor``, its own (:func:`_policy_processor`)."""
    if args.policy == "tiny":
        from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl

        return (build_tiny_qwen25vl(seed=args.seed),
                build_qwen25vl_processor(min_pixels=args.min_pixels, max_pixels=args.max_pixels))
    from mixed_r1.engine import load_pretrained_model

    return load_pretrained_model(args.policy).eval(), processor


def _policy_processor(args: argparse.Namespace):
    """``--policy``'s processor, its files checked, before its weights load: None for 'tiny'."""
    if args.policy == "tiny":
        return None
    from mixed_r1.evaluate import load_eval_processor

    return load_eval_processor(args.policy, flag="--policy", max_pixels=args.max_pixels)


def _text_only_pools(args: argparse.Namespace, pools: list[tuple[str, list]]) -> list:
    """The samples of ``pools`` ((file, samples) pairs) a text-only policy can score: a sample
    with images is a DataError naming its file and id (``--on-error skip``: dropped, counted on
    stderr)."""
    from mixed_r1.data.schema import DataError

    out = []
    for path, samples in pools:
        bad = [s for s in samples if s.images]
        if bad and args.on_error == "raise":
            raise DataError(f"{len(bad)} of {len(samples)} samples have images (first: id "
                            f"'{bad[0].id}'), but --policy {args.policy} is a text-only LM; "
                            "give text pools (mixed-r1 data synth --text) or --on-error skip",
                            file=path, key="images", reason="image_for_text_model")
        if bad:
            print(f"{path}: skipped {len(bad)} samples with images (text-only policy)",
                  file=sys.stderr)
        out.extend(s for s in samples if not s.images)
    if not out:
        raise DataError(f"no text-only samples in {', '.join(p for p, _ in pools)} for the "
                        f"text-only policy {args.policy}")
    return out


def cmd_select(args: argparse.Namespace) -> int:
    from mixed_r1.cli import UsageError

    lo, hi = args.band
    if lo > hi:
        raise UsageError(f"--band: LO must not exceed HI, got {lo:g} {hi:g}")
    if lo == hi and not args.closed_band:
        raise UsageError(f"--band {lo:g} {hi:g} is empty as an open band (LO < p < HI); pass "
                         f"--closed-band to keep pass rate == {lo:g}")
    targets = _task_counts(args.target, "--target")

    import torch

    from mixed_r1.data.engine import SelectConfig, select
    from mixed_r1.data.io import LoadReport, load_samples
    from mixed_r1.models.processor import is_multimodal
    from mixed_r1.rollout.hf import HFGenerator

    torch.set_num_threads(args.threads)
    load_report, pools = LoadReport(), []
    for path in args.pool:
        if not Path(path).exists():
            raise FileNotFoundError(f"--pool: no such file or directory: {path}")
        pools.append((path, load_samples(path, on_error=args.on_error, report=load_report)[0]))
    if load_report.n_skipped:
        print(f"skipped {load_report.n_skipped} bad rows: {dict(load_report.skipped)}",
              file=sys.stderr)
    if args.per_task is not None:
        targets = {t: targets.get(t, args.per_task) for t in TASK_TYPES}
    cfg = SelectConfig(k=args.k, pass_band=(lo, hi),
                       closed_band=args.closed_band, pass_threshold=args.pass_threshold,
                       targets=targets or None, batch_size=args.batch_size, seed=args.seed,
                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                       top_p=args.top_p, dedup=not args.no_dedup,
                       conflicts="keep" if args.keep_conflicts else "drop")
    processor = _policy_processor(args)
    if processor is not None and not is_multimodal(processor):
        samples = _text_only_pools(args, pools)
    else:
        samples = [s for _, ss in pools for s in ss]
    model, processor = _load_policy(args, processor)
    gen = HFGenerator(model, processor, batch_size=args.gen_batch_size)
    from mixed_r1.data.prompts import PromptTemplate

    res = select(samples, gen, processor, args.out, cfg,
                 progress=lambda m: print(m, file=sys.stderr, flush=True),
                 load_report=load_report.to_dict(),
                 template=None if args.policy == "tiny" else PromptTemplate.load(args.policy))
    print(json.dumps({"out": str(res.out_dir), "totals": res.report["totals"],
                      "selected_per_task": res.report["selected_per_task"]}))
    return 0


_CONVERT_FORMATS = """input formats (one file; image paths resolve against --image-root, default
the input file's directory):
  llava    LLaVA conversations, JSON list or JSONL: {"image": "a.jpg", "conversations":
           [{"from": "human", "value": "<image>\\nQ"}, {"from": "gpt", "value": "A"}, ...]};
           one sample per human->gpt pair; task type inferred (yes/no answer -> yes_no,
           "A."-style options with a letter answer -> multiple_choice, else open_ended)
  chartqa  ChartQA JSON or CSV with columns imgname, query, label (a string or a one-answer
           list such as ["14"]) -> chart samples
  refcoco  JSON or JSONL of image, expression (or sentence/sentences/refs) and bbox -> one
           grounding sample per expression; the box is read as --box-format in --coords and
           stored as absolute-pixel [x1, y1, x2, y2]; a box outside its image is a bad row
  math     JSONL of problem (or question) and answer (or solution): the gold is a GSM8K
           "#### 42" tail, else the last \\boxed{} of a MATH solution, else a bare expression
bad rows: --on-error raise (default) stops at the first, naming file and row; skip counts them
and prints each on stderr."""

_SELECT_RULES = """steps (mixed_r1.data.engine): dedup (same task, normalised question,
colour-matched images and answer; the same question and image with different answers is a label
conflict: dropped, or one per answer with --keep-conflicts, and listed in the report), difficulty
filter (the policy samples K answers per prompt; an answer passes when its
accuracy reward >= --pass-threshold; a prompt is kept when LO < pass rate < HI, or
LO <= rate <= HI with --closed-band), balance (per task at most --target/--per-task prompts,
pass rates nearest 0.5 first). Scores are saved per chunk under OUT/state: rerunning the same
command into the same OUT resumes; other settings there are refused. Writes OUT/selected.jsonl,
OUT/report.json and OUT/pass_rates.png."""


def register(subparsers) -> None:
    """Add ``data`` with its sub-commands to the top-level ``mixed-r1`` parser."""
    from mixed_r1.cli import float_in, int_at_least

    data = subparsers.add_parser("data", help="datasets: synthesize, convert, select")
    sub = data.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("synth", help="build the offline mixed set with real images "
                       "(--text: the text-only set for text LMs)",
                       description="Build the offline mixed set: OUT/images/, OUT/synth.jsonl "
                       "and OUT/manifest.json (all six task types on real images), or with "
                       "--text OUT/text.jsonl and OUT/text_manifest.json (no images).")
    p.add_argument("--out", required=True, help="output directory (refused when not empty, "
                   "or with --text when its text set exists, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what is in --out (the image set: the whole directory)")
    p.add_argument("--text", action="store_true", help="text-only set (math, multiple_choice, "
                   "yes_no, chart as a table in the question; no images) in OUT/text.jsonl")
    p.add_argument("--seed", type=int, default=0, help="data seed (default: %(default)s)")
    p.add_argument("--per-task", type=int_at_least(0), default=200,
                   help="samples per task type (default: %(default)s)")
    p.add_argument("--size", action="append", metavar="TASK=N",
                   help="one task's size instead of --per-task (repeatable)")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                   help="dataset file format (default: %(default)s)")
    p.add_argument("--yes-no", choices=("easy_vqa", "balanced"), default="easy_vqa",
                   help="yes/no questions: easy-vqa's own (their wording carries the answer) or "
                        "balanced ones written from each image's description, half yes "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert a public layout into the sample schema",
                       description="Convert one file of a public dataset layout into the sample "
                       "schema (README, \"Mixed data\").", epilog=_CONVERT_FORMATS,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("llava", "chartqa", "refcoco", "math"),
                   help="the input's layout (see below)")
    p.add_argument("--input", required=True, help="the file to convert")
    p.add_argument("--out", required=True, help="output .jsonl or .parquet (an existing file "
                   "is refused unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--image-root", default=None,
                   help="directory image paths are relative to (default: the input's directory)")
    p.add_argument("--source", default=None,
                   help="each sample's source tag (default: the kind, e.g. refcoco)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="a bad row: stop naming it, or skip and count it (default: %(default)s)")
    p.add_argument("--no-check-images", action="store_true",
                   help="do not open the images (faster; missing/unreadable images go unchecked, "
                        "and so do pixel boxes against the image size)")
    p.add_argument("--box-format", choices=("xyxy", "xywh"), default="xywh",
                   help="refcoco: box layout, xywh = COCO [x, y, width, height] "
                        "(default: %(default)s)")
    p.add_argument("--coords", choices=("pixel", "norm", "norm1000"), default="pixel",
                   help="refcoco: box units, pixels, 0..1 or 0..1000 of the image size "
                        "(default: %(default)s)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("select", help="difficulty-filter, dedup and balance candidate pools",
                       description="The data engine: from candidate pools, keep prompts the "
                       "policy solves sometimes but not always, deduplicated and balanced per "
                       "task type.", epilog=_SELECT_RULES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool", nargs="+", required=True,
                   help="candidate .jsonl/.parquet files in the sample schema")
    p.add_argument("--out", required=True, help="output directory (resumes a run there)")
    p.add_argument("--policy", default="tiny", help="'tiny' (a random tiny Qwen2.5-VL, for "
                   "trying the pipeline) or a local HF model directory: Qwen2.5-VL, or a text "
                   "LM, which scores text samples only (default: %(default)s)")
    p.add_argument("--k", type=int_at_least(1), default=8,
                   help="answers sampled per prompt (default: %(default)s)")
    p.add_argument("--band", type=float_in(0.0, 1.0), nargs=2, default=(0.0, 1.0),
                   metavar=("LO", "HI"),
                   help="pass-rate band kept, LO <= HI in [0, 1] (default: 0 1, open: drops "
                        "never- and always-solved prompts)")
    p.add_argument("--closed-band", action="store_true", help="keep LO <= p <= HI")
    p.add_argument("--pass-threshold", type=float_in(0.0, 1.0), default=0.5,
                   help="accuracy reward at which an answer passes (default: %(default)s)")
    p.add_argument("--target", action="append", metavar="TASK=N",
                   help="keep at most N prompts of TASK (repeatable)")
    p.add_argument("--per-task", type=int_at_least(0), default=None,
                   help="at most N prompts of every task without a --target "
                        "(default: no limit)")
    p.add_argument("--batch-size", type=int_at_least(1), default=8,
                   help="prompts per resumable chunk (default: %(default)s)")
    p.add_argument("--gen-batch-size", type=int_at_least(1), default=16,
                   help="sequences per generate call (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int_at_least(1), default=128,
                   help="tokens per sampled answer at most (default: %(default)s)")
    p.add_argument("--temperature", type=float_in(0.0, 100.0), default=1.0,
                   help="sampling temperature (default: %(default)s)")
    p.add_argument("--top-p", type=float_in(0.0, 1.0, low_open=True), default=1.0,
                   help="nucleus sampling mass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: %(default)s)")
    p.add_argument("--no-dedup", action="store_true", help="skip the dedup step")
    p.add_argument("--keep-conflicts", action="store_true",
                   help="keep one sample per answer of a label conflict (default: drop them all; "
                        "either way they are listed in report.json)")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="a bad pool row (or an image sample for a text LM): stop naming it, or "
                        "skip and count it (default: %(default)s)")
    p.add_argument("--min-pixels", type=int_at_least(1), default=56 * 56,
                   help="tiny policy: image processor's pixel floor (default: %(default)s)")
    p.add_argument("--max-pixels", type=int_at_least(1), default=256 * 28 * 28,
                   help="image processor's pixel budget per image (default: %(default)s)")
    p.add_argument("--threads", type=int_at_least(1), default=2,
                   help="torch CPU threads (default: %(default)s)")
    p.set_defaults(func=cmd_select)

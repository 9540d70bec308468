"""``mixed-r1 demo [--out DIR] [--quick] [--multimodal] [--overwrite]`` (:mod:`mixed_r1.demo`).

Each kind of demo has its own default directory (``runs/demo``, ``runs/demo_quick``,
``runs/demo_multimodal``, ``runs/demo_multimodal_quick``), so a quick run never replaces a full
run's results. Like ``train``, a demo refuses a directory holding anything but the text demo's
converted model (``hf/``, reused) unless ``--overwrite``, which deletes what a demo writes there
(``run/``, ``data/``, ``report.json``, ``demo_report.json``) and nothing else.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# what a demo writes into its directory, and the conversion cache it reuses
DEMO_OUTPUTS = ("run", "data", "report.json", "demo_report.json")
DEMO_CACHE = ("hf",)


def default_out(multimodal: bool, quick: bool) -> str:
    """The demo's directory when ``--out`` is not given."""
    return "runs/demo" + ("_multimodal" if multimodal else "") + ("_quick" if quick else "")


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse (FileExistsError, naming what is there) a directory holding more than the demo's
    conversion cache, unless ``overwrite``; with it delete the demo's own outputs."""
    import shutil

    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    others = [n for n in present if n not in DEMO_CACHE]
    if others and not overwrite:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise FileExistsError(f"--out {out} is not empty ({shown}); pass --overwrite to replace "
                              "an earlier demo's results there, or --out elsewhere")
    for name in DEMO_OUTPUTS:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _demo(args: argparse.Namespace) -> int:
    out = Path(args.out or default_out(args.multimodal, args.quick))
    prepare_out(out, args.overwrite)
    if args.multimodal:
        from mixed_r1.demo import run_multimodal_demo

        run_multimodal_demo(out, quick=args.quick)
    else:
        from mixed_r1.demo import run_text_demo

        run_text_demo(out, quick=args.quick)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="GRPO with Mixed-Reward end to end on a CPU: SmolLM2 learns "
                                    "the text mixed set (--multimodal: the image pipeline)",
                       description=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=None,
                   help="output directory (default: runs/demo, runs/demo_quick, "
                        "runs/demo_multimodal or runs/demo_multimodal_quick)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo's results in the output directory")
    p.add_argument("--quick", action="store_true",
                   help="a one-minute smoke run (1 step; its own default directory)")
    p.add_argument("--multimodal", action="store_true",
                   help="the multimodal pipeline check: real images, a tiny Qwen2.5-VL policy, "
                        "all six task types")
    p.set_defaults(func=_demo)

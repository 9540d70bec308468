"""`mixed-r1 convert`: HF <-> megatron-core checkpoints.

    mixed-r1 convert hf-to-mcore --hf DIR --out DIR --tp N --pp M
    mixed-r1 convert mcore-to-hf --mcore DIR --out DIR [--max-shard-gb G]
    mixed-r1 convert reshard     --mcore DIR --out DIR --tp N --pp M

Wire with ``mixed_r1.convert_cli.register(subparsers)``; each sub-command sets ``func(args) -> int``.
A user error (unsupported config, missing/mis-shaped/corrupt tensor, existing output) prints one line
``error: ...`` naming the tensor or file and returns 2; nothing is left under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time


def _run(fn, *a, **kw) -> int:
    from .models.config import UnsupportedConfigError
    from .models.safetensors_io import CheckpointError

    t0 = time.perf_counter()
    try:
        fn(*a, **kw)
    except (UnsupportedConfigError, CheckpointError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _hf_to_mcore(args: argparse.Namespace) -> int:
    from .models.convert import hf_to_mcore

    return _run(hf_to_mcore, args.hf, args.out, tp=args.tp, pp=args.pp)


def _mcore_to_hf(args: argparse.Namespace) -> int:
    from .models.convert import mcore_to_hf

    return _run(mcore_to_hf, args.mcore, args.out, max_shard_bytes=int(args.max_shard_gb * 1024 ** 3))


def _reshard(args: argparse.Namespace) -> int:
    from .models.convert import reshard

    return _run(reshard, args.mcore, args.out, tp=args.tp, pp=args.pp)


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``convert`` command (hf-to-mcore, mcore-to-hf, reshard) to an argparse subparsers object."""
    p = subparsers.add_parser("convert", help="convert checkpoints between HF and megatron-core (TP/PP shards)")
    sub = p.add_subparsers(dest="convert_cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> mcore shards at TP/PP")
    a.add_argument("--hf", required=True, help="HF model directory (config.json + *.safetensors)")
    a.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    a.add_argument("--tp", type=int, default=1)
    a.add_argument("--pp", type=int, default=1)
    a.set_defaults(func=_hf_to_mcore)
    b = sub.add_parser("mcore-to-hf", help="mcore shards -> HF safetensors")
    b.add_argument("--mcore", required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--max-shard-gb", type=float, default=2.0, help="max size of one HF safetensors file")
    b.set_defaults(func=_mcore_to_hf)
    c = sub.add_parser("reshard", help="mcore TP=a/PP=b -> mcore TP=c/PP=d without going through HF")
    c.add_argument("--mcore", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--tp", type=int, default=1)
    c.add_argument("--pp", type=int, default=1)
    c.set_defaults(func=_reshard)
    return p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry: ``python -m mixed_r1.convert_cli hf-to-mcore ...``."""
    parser = argparse.ArgumentParser(prog="mixed-r1")
    register(parser.add_subparsers(dest="cmd", required=True))
    args = parser.parse_args(["convert", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

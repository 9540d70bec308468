"""``mixed-r1 plan``: validate a config for a world of N GPUs and print its memory budget
(:mod:`mixed_r1.plan`)."""
from __future__ import annotations

from typing import Any

from mixed_r1.plan import ATTENTION, IMPLEMENTATIONS


def _plan(args: Any) -> int:
    import sys

    from mixed_r1.config import ConfigError, load_config
    from mixed_r1.plan import _default_gpu_mem_gib, model_hf_config, plan_config

    try:
        cfg = load_config(args.config, args.overrides)
        hf = model_hf_config(cfg, args.model_config, planning=True)
        gib = args.gpu_mem_gib if args.gpu_mem_gib is not None else _default_gpu_mem_gib()
        plan = plan_config(cfg, gpus=args.gpus, gpu_mem_gib=gib, hf_config=hf, impl=args.impl,
                           attention=args.attention, origin=str(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(plan.format())
    failure = plan.failure()
    if failure:
        print(f"plan: {args.config}: {failure}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """``mixed-r1 plan``: validate a config for a world of N GPUs and print its memory budget."""
    p = subparsers.add_parser(
        "plan", help="validate a config without launching and print the per-GPU memory budget",
        description="Validate a training config against a world of N GPUs (every cross-field "
                    "rule, the model's TP/PP split) and print the per-GPU memory of the update "
                    "and the rollout phases from the model's real shapes, for the attention "
                    "implementation the install runs (--attention). Exit 1 (one line on stderr) "
                    "when a phase does not fit, 2 on a config error.")
    p.add_argument("--config", required=True, help="YAML training config")
    p.add_argument("--gpus", type=int, default=None,
                   help="world size (default: tensor_parallel*pipeline_parallel*data_parallel)")
    p.add_argument("--gpu-mem-gib", type=float, default=None,
                   help="memory per GPU (default: this machine's GPU, else 80 = H100 80GB)")
    p.add_argument("--model-config", default=None,
                   help="the model's config.json when model.path is not on this machine")
    p.add_argument("--attention", choices=("auto",) + ATTENTION, default="auto",
                   help="attention megatron-core runs (parallel.backend=mcore): te = Transformer "
                        "Engine (no s x s scores kept), local = "
                        "megatron's DotProductAttention (full [micro_batch*heads/TP, s, s] scores "
                        "per layer); auto (default) = what this install runs, so on a laptop "
                        "pass the cluster's (te when its install has Transformer Engine)")
    p.add_argument("--impl", choices=IMPLEMENTATIONS, default=None,
                   help="layer implementation to size activations for (default: from "
                        "--attention for parallel.backend=mcore: mcore-local for local, mcore-te "
                        "otherwise; hf for parallel.backend=hf)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.set_defaults(func=_plan)

"""SmolLM2-135M-Instruct, GRPO with Mixed-Reward on the offline text set, on the CPU, end to end:
the documented experiment of README ("Training") and docs/benchmarks.md.

    python tools/smollm2_grpo.py                       # the documented run (~9 min on 2 cores)
    python tools/smollm2_grpo.py steps=4 --heldout-per-task 8     # any config override, shortened

What it does: :mod:`mixed_r1.demo.text` (``mixed-r1 demo`` runs the same, shortened).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixed_r1.demo.text import DEFAULT_CONFIG, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/smollm2_grpo", help="experiment directory")
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--model-dir", default="runs/smollm2/hf",
                   help="the converted SmolLM2 HF directory (converted here when absent)")
    p.add_argument("--train-per-task", type=int, default=200)
    p.add_argument("--heldout-per-task", type=int, default=100)
    p.add_argument("--train-seed", type=int, default=1)
    p.add_argument("--heldout-seed", type=int, default=2)
    p.add_argument("--eval-max-new-tokens", type=int, default=32,
                   help="greedy eval budget (default: the example's rollout.max_new_tokens)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core; 1 when the "
                        "cores are shared with other jobs)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the start model only")
    p.add_argument("overrides", nargs="*", help="config key.sub=value overrides")
    a = p.parse_args(argv)
    run(a.out, config=a.config, model_dir=a.model_dir, train_per_task=a.train_per_task,
        heldout_per_task=a.heldout_per_task, train_seed=a.train_seed,
        heldout_seed=a.heldout_seed, eval_max_new_tokens=a.eval_max_new_tokens,
        overrides=a.overrides, eval_only=a.eval_only, threads=a.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

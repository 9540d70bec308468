"""Mixed-R1 on images on the CPU, end to end: SmolLM2-135M-Instruct assembled into a Qwen2.5-VL
policy, an SFT warm start, GRPO with Mixed-Reward, held-out image-task accuracy before and after
with paired standard errors, and the image-swap control (README "Images", docs/benchmarks.md).

    python tools/multimodal_grpo.py                         # the documented run
    python tools/multimodal_grpo.py --grpo steps=4          # GRPO config overrides
                                                            # (--captions: stage 1's, --sft: stage 2's)

What it does: :mod:`mixed_r1.demo.images`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixed_r1.demo.images import (CAPTION_CONFIG, GRPO_CONFIG, HELDOUT_SIZES,  # noqa: E402
                                   SFT_CONFIG, TRAIN_SIZES, run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/smollm2_vl", help="experiment directory")
    p.add_argument("--lm-dir", default="runs/smollm2/hf",
                   help="the SmolLM2 HF directory (converted from the GGUF here when absent)")
    p.add_argument("--caption-config", default=str(CAPTION_CONFIG),
                   help="stage 1 of the warm start: captions, the LM frozen (default: %(default)s)")
    p.add_argument("--no-captions", action="store_true",
                   help="skip stage 1: the task SFT starts from the assembled policy")
    p.add_argument("--sft-config", default=str(SFT_CONFIG),
                   help="stage 2 of the warm start: the task rows (default: %(default)s)")
    p.add_argument("--grpo-config", default=str(GRPO_CONFIG))
    p.add_argument("--train-sizes", type=json.loads, default=TRAIN_SIZES,
                   help=f"training items per task, JSON (default {json.dumps(TRAIN_SIZES)})")
    p.add_argument("--heldout-sizes", type=json.loads, default=HELDOUT_SIZES,
                   help=f"held-out image prompts per task, JSON (default "
                        f"{json.dumps(HELDOUT_SIZES)})")
    p.add_argument("--vision-steps", type=int, default=None, metavar="N",
                   help="stage 0's steps (the fresh vision tower as a colour + shape classifier "
                        "of the training images; 0 skips it; default 600)")
    p.add_argument("--yes-no", choices=("balanced", "easy_vqa"), default="balanced",
                   help="yes/no questions: written from each image's description, half yes "
                        "(default), or easy-vqa's own, whose wording carries the answer")
    p.add_argument("--eval-max-new-tokens", type=int, default=48,
                   help="greedy evaluation budget (default 48)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's, one per core)")
    p.add_argument("--captions", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the stage-1 (captions) config")
    p.add_argument("--sft", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the stage-2 (task SFT) config")
    p.add_argument("--grpo", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the GRPO config")
    a = p.parse_args(argv)
    run(a.out, lm_dir=a.lm_dir, caption_config=None if a.no_captions else a.caption_config,
        sft_config=a.sft_config, grpo_config=a.grpo_config, caption_overrides=a.captions,
        train_sizes=a.train_sizes, heldout_sizes=a.heldout_sizes, yes_no_questions=a.yes_no,
        vision_pretrain=None if a.vision_steps is None else {"steps": a.vision_steps},
        eval_max_new_tokens=a.eval_max_new_tokens, threads=a.threads,
        sft_overrides=a.sft, grpo_overrides=a.grpo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``mixed-r1 sft``: the supervised stage (:mod:`mixed_r1.sft`); ``register(subparsers)`` adds it
to the main CLI.

Same config file, overrides and run-directory rules as ``train`` (:func:`mixed_r1.sft.run_sft`): a
new run refuses a non-empty ``out_dir`` unless ``--overwrite``; ``--resume`` continues the run in
``out_dir`` exactly; SIGINT/SIGTERM finish the current step, write a checkpoint and exit 130/143;
the final model is exported to ``<out_dir>/model``, from which GRPO starts with
``model.kind=pretrained model.path=<out_dir>/model``.
"""
from __future__ import annotations

import argparse


def _sft(args: argparse.Namespace) -> int:
    from mixed_r1.config import load_config
    from mixed_r1.sft import run_sft

    cfg = load_config(args.config, args.overrides)
    rows = run_sft(cfg, resume=args.resume, overwrite=args.overwrite)
    last = rows[-1] if rows else {}
    nll = f"; last NLL {last['loss']:.4f}" if "loss" in last else ""
    print(f"sft: trained to step {cfg.steps}{nll}; model {cfg.out_dir}/model "
          f"(GRPO from it: model.kind=pretrained model.path={cfg.out_dir}/model)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from mixed_r1.config import SFTConfig

    d = SFTConfig()
    p = subparsers.add_parser(
        "sft", help="supervised warm start (cross-entropy on answers or captions)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=f"""Supervised training on the same engines (HF, or megatron-core under
torchrun), run directory rules, checkpoints, --resume, metrics and export as train:
the cross-entropy of each row's answer tokens (the prompt masked; prompts rendered as
the GRPO rollout renders them), then GRPO from OUT_DIR/model with
model.kind=pretrained model.path=OUT_DIR/model.

Keys (config section sft; defaults in brackets):
  sft.batch_size        rows per optimizer step [{d.batch_size}]
  sft.micro_batch_size  rows per micro-batch (exact accumulation) [{d.micro_batch_size}]
  sft.target            r1: <think>THINK</think><answer>SOLUTION</answer> | solution:
                        the solution text alone, e.g. captions [{d.target}]
  sft.think             the think text of target r1 [{d.think!r}]
  sft.max_answer_words  cut the solution to its first N words, 0 = whole [{d.max_answer_words}]
  sft.eval_every        held-out NLL on data.eval_file every N steps, 0 = never
                        [{d.eval_every}]
and train's: steps, optim.lr / warmup_steps / schedule / grad_clip, data.*, save_every,
keep_last, parallel.*. Freezing (train too; each [false]):
  model.freeze_vision_tower    patch embedding + vision blocks
  model.freeze_merger          the projector from the vision tower into the LM
  model.freeze_language_model  embeddings, decoder, norm, LM head
LLaVA stage 1: sft.target=solution on captions, model.freeze_language_model=true
(model.freeze_vision_tower=true too with a pretrained vision encoder); stage 2:
sft.target=r1 on task rows. Overrides (key.sub=value, before or after the flags; a
later one wins): mixed-r1 sft --config C out_dir=X --overwrite steps=100""")
    from mixed_r1.cli.train import add_run_args

    add_run_args(p, "YAML config (the same file as train; every key, its default and meaning: "
                    "mixed_r1/config.py's dataclasses)",
                 "steps=100 sft.target=solution model.freeze_language_model=true")
    p.set_defaults(func=_sft)

"""``mixed-r1 demo --multimodal``: the multimodal pipeline end to end on a CPU in about two minutes.

1. synthesize a small mixed set with real images (every task type) and hold some out;
2. build a small Qwen2.5-VL-architecture policy with the real Qwen2.5 tokenizer;
3. warm-start it briefly with supervised steps on ``<think>…</think><answer>solution</answer>``
   (cross-entropy, done as a GRPO update with advantage 1 and ratio ≡ 1, whose gradient is
   −∇ mean log p(target));
4. evaluate (greedy) → table; GRPO with Mixed-Reward; evaluate again → table;
5. write curves.png, a checkpoint and the exported model under ``out_dir``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from mixed_r1.demo.text import MIN_TREND_STEPS, format_reward_trend, reward_rise
from mixed_r1.tasks import TASK_TYPES

THINK = "Look at the image."
SFT_MAX_WORDS = 12  # long (open-ended) solutions are cut to their first words in the warm start


def sft_target(sample: Any) -> str:
    """The warm-start completion of ``sample``: its solution in the Mixed-R1 format, a long
    (caption) solution cut to its first :data:`SFT_MAX_WORDS` words, so that the warm start
    teaches the format at a fraction of the cost and completions fit ``max_new_tokens``."""
    words = sample.solution_text().split(" ")
    answer = " ".join(words[:SFT_MAX_WORDS])
    return f"<think>{THINK}</think><answer>{answer}</answer>"


def warm_start(trainer: Any, samples: Sequence[Any], steps: int, batch_size: int,
               lr: float, seed: int = 0) -> list[float]:
    """Supervised steps on :func:`sft_target`; returns the mean NLL per step."""
    import random

    import torch

    from mixed_r1.data.prompts import encode_rows, model_frame_sample, render_prompt
    from mixed_r1.engine import LossConfig, PolicyBatch, run_update

    tok, proc, policy = trainer.tokenizer, trainer.processor, trainer.policy
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    rng = random.Random(seed)
    losses = []
    cfg = LossConfig(loss_type="grpo")  # per-sequence mean: short answers weigh as much as captions
    for i in range(steps):
        step_lr = lr * (1.0 - 0.9 * i / max(1, steps - 1))  # linear decay to lr/10
        batch = [model_frame_sample(s, proc) for s in rng.sample(list(samples), batch_size)]
        ids = [tok(sft_target(s), add_special_tokens=False)["input_ids"] + [eos] for s in batch]
        inputs, targets, mask = encode_rows(proc, [render_prompt(s, proc) for s in batch],
                                            [s.images for s in batch], ids, trainer.pad_id,
                                            policy.device)
        mb = PolicyBatch(inputs=inputs, targets=targets, mask=mask,
                         advantages=torch.ones(len(batch), device=policy.device))
        out = run_update(policy, [mb], cfg, step_lr, grad_clip=trainer.cfg.optim.grad_clip)
        losses.append(-out["logprob_mean"])  # the token-mean NLL before this step
    return losses


def run_multimodal_demo(out_dir: str | Path = "runs/demo_multimodal", *, per_task: int = 32, eval_per_task: int = 6,
             sft_steps: int = 60, sft_lr: float = 1e-2, grpo_steps: int | None = None,
             quick: bool = False, overrides: Sequence[str] = ()) -> dict:
    """The whole demo (see the module docstring); returns before/after reports and timings.
    A pipeline check: the tiny policy learns the format, not the tasks (README)."""
    import json
    import shutil

    from mixed_r1.config import load_config
    from mixed_r1.data import load_samples, write_samples
    from mixed_r1.data.synth import SynthConfig, synthesize
    from mixed_r1.demo.text import ROOT, paired_change
    from mixed_r1.evaluate import evaluate_generator, format_table
    from mixed_r1.metrics import MetricsLogger, plot_run
    from mixed_r1.trainer import build_trainer

    if quick:
        per_task, eval_per_task, sft_steps, grpo_steps = 6, 2, 3, 3
    t_start = time.perf_counter()
    out = Path(out_dir)
    shutil.rmtree(out / "run", ignore_errors=True)  # a rerun starts fresh: metrics, plot, model
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    path = synthesize(out / "data", SynthConfig(seed=0, sizes={k: per_task + eval_per_task
                                                               for k in TASK_TYPES}),
                      overwrite=True)  # the demo's own set, rebuilt by a rerun
    samples, _ = load_samples(path)
    train, held = [], []
    for task in TASK_TYPES:
        rows = [s for s in samples if s.task_type == task]
        held += rows[:eval_per_task]
        train += rows[eval_per_task:]
    train_file = write_samples(train, out / "data" / "train.jsonl")
    eval_file = write_samples(held, out / "data" / "eval.jsonl")
    timings["data"] = time.perf_counter() - t
    print(f"[demo] {len(train)} train / {len(held)} eval samples in {out / 'data'}")

    cfg = load_config(ROOT / "examples" / "tiny_cpu.yaml",  # FileNotFoundError naming it
                      [f"data.train_file={train_file}", f"data.eval_file={eval_file}",
                       f"out_dir={out / 'run'}"]
                      + ([f"steps={grpo_steps}"] if grpo_steps is not None else [])
                      + list(overrides))
    t = time.perf_counter()
    trainer = build_trainer(cfg, out / "run")
    timings["build"] = time.perf_counter() - t

    t = time.perf_counter()
    nll = warm_start(trainer, train, sft_steps, batch_size=8, lr=sft_lr, seed=cfg.seed)
    trainer.generator.update_weights(trainer.policy.export_hf_weights())
    timings["warm_start"] = time.perf_counter() - t
    print(f"[demo] warm start: {sft_steps} supervised steps, NLL {nll[0]:.2f} -> {nll[-1]:.2f}")

    def evaluate(tag: str) -> dict:
        t0 = time.perf_counter()
        rep = evaluate_generator(trainer.generator, trainer.processor, held, trainer.reward,
                                 k=1, temperature=0.0, max_new_tokens=cfg.rollout.max_new_tokens)
        timings[f"eval_{tag}"] = time.perf_counter() - t0
        print(format_table(rep, f"[demo] {tag} GRPO (greedy, {len(held)} held-out prompts)"))
        for ex in rep["examples"][:3]:
            print(f"    {ex['id']}: {ex['text'][:120]!r}")
        return rep

    before = evaluate("before")
    t = time.perf_counter()
    logger = MetricsLogger(out / "run", total_steps=cfg.steps, tensorboard=cfg.tensorboard,
                           progress=cfg.progress)
    try:
        trainer.train(logger)
    finally:
        logger.close()
    timings["grpo"] = time.perf_counter() - t
    after = evaluate("after")
    trainer.export_model()
    plot = plot_run(out / "run")
    timings["total"] = time.perf_counter() - t_start
    hist = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    rise = {key: reward_rise([h.get(f"reward/{key}", 0.0) for h in hist])
            for key in ("total", "format", "accuracy")}
    first, last = rise["total"]["first"], rise["total"]["last"]
    line = "[demo] " + format_reward_trend(
        [h.get("reward/total", 0.0) for h in hist], label="GRPO training reward",
        prompts_per_step=cfg.rollout.prompts_per_step, group_size=cfg.rollout.group_size)
    if rise["total"]["n"] >= MIN_TREND_STEPS:  # the trend is shown: its components too
        line += (f"  [format {rise['format']['first']:.3f} -> {rise['format']['last']:.3f}, "
                 f"accuracy {rise['accuracy']['first']:.3f} -> {rise['accuracy']['last']:.3f}]")
    print(line)
    acc = paired_change(before["sample_accuracy"], after["sample_accuracy"])
    print(f"[demo] held-out accuracy: {acc['before']:.3f} -> {acc['after']:.3f} "
          f"(± {acc['se']:.3f})")
    print(f"[demo] held-out greedy total: {before['overall']['total']:.3f} -> "
          f"{after['overall']['total']:.3f}")
    print(f"[demo] plots: {plot}; checkpoint: {out / 'run' / 'checkpoints'}; "
          f"model: {out / 'run' / 'model'}")
    print("[demo] timings (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items()))
    report = {"before": before, "after": after, "timings": timings, "accuracy_change": acc,
              "train_reward_first": first, "train_reward_last": last, "reward_rise": rise,
              "train_rewards": [h["reward/total"] for h in hist], "sft_nll": nll}
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    return report

"""A full GRPO step, mixed-r1 vs TRL's ``GRPOTrainer``, on the same tiny model and data.

    python tools/bench_vs_trl.py [--steps 3] [--prompts 4] [--group 4] [--new 32]

Both trainers get: the same tiny random Qwen2.5-VL-architecture policy (same seed) with the
real Qwen2.5 tokenizer, the same text-only math prompts, ``prompts × group`` completions per
step sampled at temperature 1 with at most ``--new`` new tokens, the same reward (Mixed-Reward
accuracy + format), AdamW at the same learning rate, one on-policy update per step, β = 0,
the DAPO loss with ε = 0.2 / 0.28. Timed: whole steps after one warm-up step; samples/s =
completions per step / mean step time. TRL is a benchmark-only dependency
(``pip install 'mixed-r1[bench]'``).
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path


def make_samples(n: int, seed: int = 0):
    from mixed_r1.data import Sample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(2, 60), rng.randint(2, 60)
        out.append(Sample(id=f"m{i}", task_type="math", question=f"What is {a} + {b}?",
                          solution=str(a + b), source="bench"))
    return out


def our_rate(args, data_file: Path, run_dir: Path) -> float:
    from mixed_r1.config import config_from_dict
    from mixed_r1.trainer import build_trainer

    cfg = config_from_dict({
        "seed": 0, "steps": args.steps + 1, "out_dir": str(run_dir), "progress": False,
        "tensorboard": False,
        "model": {"kind": "tiny_qwen25vl", "hidden_size": args.hidden, "num_layers": 2},
        "data": {"train_file": str(data_file)},
        "rollout": {"backend": "hf", "prompts_per_step": args.prompts, "group_size": args.group,
                    "max_new_tokens": args.new, "temperature": 1.0,
                    "batch_size": args.prompts * args.group},
        "algo": {"loss_type": "dapo", "beta": 0.0, "eps_low": 0.2, "eps_high": 0.28,
                 "micro_batch_size": args.prompts * args.group},
        "optim": {"lr": args.lr, "grad_clip": 1.0},
    })
    trainer = build_trainer(cfg, run_dir)
    trainer.step()  # warm-up
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    return args.prompts * args.group * args.steps / (time.perf_counter() - start)


def trl_rate(args, samples, model_dir: Path, out_dir: Path) -> float:
    import datasets
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mixed_r1.data.prompts import build_messages
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor
    from mixed_r1.rewards import MixedReward
    from mixed_r1.trainer import build_model  # noqa: F401  (same builder, via the saved dir)

    reward = MixedReward()

    def mixed_reward(completions, solution, **kwargs):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return reward(texts, [{"task_type": "math", "solution": s} for s in solution]).total

    rows = [{"prompt": [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                         else " ".join(p.get("text", "") for p in m["content"])}
                        for m in build_messages(s)], "solution": s.solution} for s in samples]
    ds = datasets.Dataset.from_list(rows)
    processor = build_qwen25vl_processor()
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    n = args.prompts * args.group
    cfg = GRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=n,
                     num_generations=args.group, max_completion_length=args.new,
                     learning_rate=args.lr, max_grad_norm=1.0, beta=0.0, loss_type="dapo",
                     epsilon=0.2, epsilon_high=0.28, temperature=1.0, num_iterations=1,
                     max_steps=args.steps + 1, logging_steps=1, report_to=[], use_cpu=True,
                     bf16=False, save_strategy="no", seed=0, gradient_accumulation_steps=1,
                     lr_scheduler_type="constant", warmup_steps=0, shuffle_dataset=True)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    trainer = GRPOTrainer(model=model, reward_funcs=mixed_reward, args=cfg, train_dataset=ds,
                          processing_class=processor.tokenizer, callbacks=[StepTimer()])
    trainer.train()
    timed = times[1:]  # drop the warm-up step
    return n * len(timed) / sum(timed)


def main() -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--new", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-4)
    args = p.parse_args()

    from mixed_r1.data import write_samples
    from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

    work = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    samples = make_samples(64)
    data_file = write_samples(samples, work / "train.jsonl")
    build_tiny_qwen25vl(seed=0, hidden_size=args.hidden, num_layers=2).save_pretrained(work / "model")
    ours = our_rate(args, data_file, work / "ours")
    theirs = trl_rate(args, samples, work / "model", work / "trl")
    print(f"\nfull GRPO step, {args.prompts} prompts x {args.group} completions, "
          f"<= {args.new} new tokens, tiny Qwen2.5-VL (hidden {args.hidden}, 2 layers, vocab "
          f"151,665), CPU, torch threads {torch.get_num_threads()}\n")
    print("| trainer | samples/s | ratio |")
    print("|---|---:|---:|")
    print(f"| TRL GRPOTrainer | {theirs:.2f} | 1.00 |")
    print(f"| mixed-r1 | {ours:.2f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()

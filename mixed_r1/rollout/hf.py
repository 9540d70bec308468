"""``HFGenerator``: the rollout interface over transformers ``generate`` (CPU tests, small runs).

Multimodal through the processor (chat template + image processor). Vision special tokens
(``<|vision_start|>`` … ``<|video_pad|>``) are suppressed at every step, so a completion never
contains one. Log-probs are ``log_softmax(raw_logits / temperature)`` of the sampled tokens
(the raw logits of each step, before suppression and top-k/top-p), see ``rollout.base``; only
the sampled tokens' values are kept (one ``[rows, vocab]`` step at a time, never the logits of
every step).

Sampling is exact Gumbel-max: ``argmax(scores + g)`` with ``g`` i.i.d. standard Gumbel, where
``scores`` are the logits after suppression, temperature, top-k and top-p (transformers' own
warpers, in its order). That is the same distribution as transformers' ``softmax`` +
``torch.multinomial`` — but about twice as cheap over the 151,665-token vocabulary on a CPU,
where ``multinomial`` dominated generation. Seeds are per row, as vLLM seeds the ``n`` samples of
a request: row ``j`` of a prompt with seed ``s`` draws its noise from a ``torch.Generator`` seeded
``s + j`` (:func:`mixed_r1.rollout.base.prompt_seeds`), so a row's completion depends neither on
which other prompts share its batch nor on how the rows are chunked, and no global RNG moves.

Prompt prefill is shared within a group: the ``n`` rows of a prompt in one generation batch hold
the same prompt, so for a text LM every distinct prompt but its last token is run through the
model once, its KV cache copied to each of its rows (``DynamicCache.batch_select_indices``), and
``generate`` continues from that cache (transformers' "re-use a prompt cache" path: it feeds only
the uncached last prompt token). With 8 completions per prompt that is 1/8 of the prefill work;
the completions are those of the per-row prefill up to float rounding
(``tests/test_rollout_hf.py``; ``tools/bench_rollout.py --groups`` times both). Vision-language
models (image inputs, Qwen2.5-VL's 3-D rope state kept between forwards) prefill per row.

Text LMs with grouped-query attention decode with :mod:`mixed_r1.models.attention`'s
``sdpa_gqa`` (set for the call, restored after): the same SDPA without transformers' copy of every
key/value head at each step under the padding mask.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterable

from mixed_r1.rollout.base import Completion, Prompt, SamplingParams

DEFAULT_SUPPRESS = (151652, 151653, 151654, 151655, 151656)


def gumbel_noise(shape: tuple[int, ...], generator: Any, device: Any) -> Any:
    """Standard Gumbel noise ``-log(-log U)``, ``U ~ U[0, 1)`` drawn in float64 (53-bit
    resolution): the Gumbel tail is cut only beyond 36.7, where its mass is 1e-16 per token,
    whereas float32 uniforms would cut it at 16.6 (mass 6e-8 per token, about 1% of rows over a
    151,665-token vocabulary). ``U = 0`` gives ``-inf``: that token is not chosen (2^-53)."""
    import torch

    u = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    return u.log_().neg_().float().log_().neg_()  # Exp(1) resolved in float64, then -log


class RecordingSampler:
    """The logits processor that samples and records (the only one in the list; suppression is
    applied here, after recording, so the recorded log-probs are of the raw logits).

    Each call: (1) the token chosen at the previous step (``input_ids[:, -1]``) gets its log-prob
    from the previous step's ``log_softmax(raw / temperature)``; (2) this step's is computed and
    kept; (3) the scores are suppressed, warped (temperature, top-k, top-p) and, when sampling,
    perturbed with per-row Gumbel noise (``argmax(scores + g)`` is a sample of
    ``softmax(scores)``, the Gumbel-max trick); greedy decoding takes the argmax unperturbed.
    :meth:`finish` records the last chosen tokens.
    """

    def __init__(self, suppress: list[int], warpers: list, generators: list | None,
                 temperature: float) -> None:
        self.suppress, self.warpers, self.generators = suppress, warpers, generators
        self.temperature = temperature
        self.prev = None
        self.picked: list = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.prev is not None:
            self.picked.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        raw = scores.float()
        self.prev = torch.log_softmax(raw / self.temperature, dim=-1)
        out = raw.clone()
        if self.suppress:
            out[:, self.suppress] = float("-inf")
        for w in self.warpers:
            out = w(input_ids, out)
        if self.generators is not None:
            for r, g in enumerate(self.generators):
                out[r] += gumbel_noise(out.shape[1:], g, out.device)
        return out

    def finish(self, last_tokens: Any) -> Any:
        """``[rows, steps]`` log-probs of the generated tokens (``last_tokens``: the final ones)."""
        import torch

        self.picked.append(self.prev.gather(1, last_tokens[:, None]).squeeze(1))
        return torch.stack(self.picked, dim=1)


class HFGenerator:
    """Wrap a HF causal/vision-language model and its processor as a :class:`Generator`.

    ``share_prompt_prefill`` / ``grouped_kv_attention`` (default on) turn off the shared prompt
    prefill and the ``sdpa_gqa`` decode (module doc) to run transformers' own path, e.g. for
    an A/B (``tools/bench_rollout.py --groups``)."""

    def __init__(self, model: Any, processor: Any, *, batch_size: int = 16,
                 suppress_token_ids: Iterable[int] | None = None,
                 eos_token_ids: Iterable[int] | None = None,
                 share_prompt_prefill: bool = True, grouped_kv_attention: bool = True) -> None:
        self.model = model.eval()
        self.share_prompt_prefill = share_prompt_prefill
        self.grouped_kv_attention = grouped_kv_attention
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        vocab = model.get_output_embeddings().weight.shape[0] \
            if model.get_output_embeddings() is not None else None
        if suppress_token_ids is None:  # the model's own vision tokens (none for a text LM)
            from mixed_r1.models.qwen25vl.processor import vision_token_ids

            suppress_token_ids = vision_token_ids(model.config, self.tokenizer) or DEFAULT_SUPPRESS
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
    def _encode(self, prompts: list[Prompt]) -> dict:
        from mixed_r1.models.processor import encode_prompts

        enc = encode_prompts(self.processor, [p.render(self.processor) for p in prompts],
                             [im for p in prompts for im in p.images])
        device = self.device  # the processor encodes on the host; the model may live elsewhere
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in enc.items()
                if k != "mm_token_type_ids" or "mm_token_type_ids" in self._accepted()}

    @property
    def device(self) -> Any:
        """The device of the model's weights: every input, the Gumbel noise and its generators
        live there (a CUDA model never sees host tensors; logits never leave the device)."""
        dev = getattr(self.model, "device", None)
        return dev if dev is not None else next(self.model.parameters()).device

    def _accepted(self) -> set:
        import inspect

        return set(inspect.signature(self.model.forward).parameters)

    # ----------------------------------------------------------------- protocol
    def generate(self, prompts: list[Prompt], n: int, params: SamplingParams) -> list[Completion]:
        """``len(prompts) * n`` completions, prompt-major (see :mod:`mixed_r1.rollout.base`)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        from mixed_r1.rollout.base import prompt_seeds

        seeds = prompt_seeds(prompts, params)
        rows = [(i, p, seeds[i] + j) for i, p in enumerate(prompts) for j in range(n)]
        from mixed_r1.models.attention import grouped_kv_attention

        out: list[Completion] = []
        gqa = grouped_kv_attention(self.model) if self.grouped_kv_attention else nullcontext()
        with gqa:  # no per-step copy of the KV cache (GQA models)
            for start in range(0, len(rows), self.batch_size):
                out.extend(self._generate_rows(rows[start:start + self.batch_size], params))
        return out

    def _warpers(self, params: SamplingParams) -> list:
        """Temperature, top-k, top-p: transformers' warpers, in its order."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        procs: list[Any] = []
        if params.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            procs.append(TopKLogitsWarper(top_k=params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=params.top_p))
        return procs

    def _generate_rows(self, chunk: list[tuple[int, Prompt, int]], params: SamplingParams):
        import torch
        from transformers import LogitsProcessorList

        enc = self._encode([p for _, p, _ in chunk])
        device = enc["input_ids"].device  # the model's: noise and sampling stay on it
        greedy = params.temperature == 0
        gens = None if greedy else [torch.Generator(device=device).manual_seed(int(s) % 2**63)
                                    for _, _, s in chunk]
        sampler = RecordingSampler(self.suppress, [] if greedy else self._warpers(params), gens,
                                   1.0 if greedy else params.temperature)
        # always transformers' greedy search over our processed scores (see the module doc)
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=params.max_new_tokens, do_sample=False, return_dict_in_generate=True,
            eos_token_id=self.eos, pad_token_id=self.pad, suppress_tokens=None,
            temperature=None, top_p=None, top_k=None, repetition_penalty=None,
            logits_processor=LogitsProcessorList([sampler]))
        with torch.no_grad():
            cache = self._shared_prefill(enc, [pi for pi, _, _ in chunk])
            if cache is not None:
                gen_kwargs["past_key_values"] = cache
            res = self.model.generate(**enc, **gen_kwargs)
        prompt_len = enc["input_ids"].shape[1]
        new = res.sequences[:, prompt_len:]
        logp = sampler.finish(new[:, -1])
        completions = []
        eos = set(self.eos)
        for r, (pi, _, _) in enumerate(chunk):
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

    def _shared_prefill(self, enc: dict, owners: list[int]) -> Any:
        """The KV cache of every row's prompt but its last token, computed once per distinct prompt.

        ``enc``: the chunk's left-padded encoding (``input_ids``/``attention_mask`` ``[rows, L]``
        int64); ``owners[r]``: the prompt index of row ``r`` (rows of one prompt are identical).
        Returns a ``DynamicCache`` with batch ``rows`` and length ``L - 1``, or ``None`` where
        sharing does not apply (disabled, no repeated prompt, inputs other than token ids, a model
        that takes images). Positions are ``generate``'s own: ``cumsum(mask) - 1``, pads at 0.
        """
        import torch

        first: dict[int, int] = {}
        for r, o in enumerate(owners):
            first.setdefault(o, r)
        accepted = self._accepted()
        if (not self.share_prompt_prefill or len(first) == len(owners)
                or set(enc) != {"input_ids", "attention_mask"} or enc["input_ids"].shape[1] < 2
                or "pixel_values" in accepted or "past_key_values" not in accepted):
            return None
        from transformers import DynamicCache

        slot = {o: k for k, o in enumerate(first)}
        rows = torch.tensor(list(first.values()), device=enc["input_ids"].device)
        ids, mask = enc["input_ids"][rows, :-1], enc["attention_mask"][rows, :-1]
        pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        extra = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}
        self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                   use_cache=True, **extra)
        cache.batch_select_indices(torch.tensor([slot[o] for o in owners], device=rows.device))
        return cache

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]], *,
                       partial: bool = False) -> None:
        """Copy ``(name, tensor)`` pairs into the model in place.

        Every name and shape is checked first, and the update must cover every parameter of the
        model (a tied weight under either of its names), so a bad or partial update raises
        ``ValueError`` and changes nothing. ``partial``: the update may leave parameters out
        (frozen ones, :mod:`mixed_r1.models.freeze`, sent once and then kept); names and shapes
        are still checked. A weight stream (``specs()`` known up front, e.g. the
        megatron policy's :class:`~mixed_r1.rollout.weight_sync.MegatronWeightStream`) is checked
        from its specs and then copied tensor by tensor as it arrives, so no more than the stream's
        own bucket is alive at once; any other iterable is materialized (its tensors are the
        policy's own, not copies) and checked whole.
        """
        import torch

        params = dict(self.model.named_parameters(remove_duplicate=False))  # tied names too
        params.update(dict(self.model.named_buffers(remove_duplicate=False)))
        if hasattr(named_tensors, "retarget"):  # a weight stream: names in this model's spelling
            named_tensors.retarget(params.keys())
        if hasattr(named_tensors, "specs"):
            self._check_update({n: tuple(s) for n, s in named_tensors.specs().items()}, params,
                               partial)
            stream: Iterable[tuple[str, Any]] = named_tensors
        else:
            stream = list(named_tensors)
            self._check_update({n: tuple(t.shape) for n, t in stream}, params, partial)
        with torch.no_grad():
            for name, tensor in stream:
                target = params.get(name)
                if target is None or tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(f"weight stream sent {name!r} {tuple(tensor.shape)} against "
                                     "its own specs; update aborted mid-way")
                target.copy_(tensor)

    def _check_update(self, shapes: dict[str, tuple[int, ...]], params: dict[str, Any],
                      partial: bool = False) -> None:
        """Raise ``ValueError`` naming unknown names, wrong shapes and (unless ``partial``)
        parameters the update leaves out (``shapes``: name -> shape of what will arrive)."""
        problems = [f"unknown tensor {n!r}" if n not in params else
                    f"{n!r} has shape {s}, the model expects {tuple(params[n].shape)}"
                    for n, s in shapes.items()
                    if n not in params or tuple(params[n].shape) != tuple(s)]
        covered = {id(params[n]) for n in shapes if n in params}
        missing = [] if partial else [n for n, p in self.model.named_parameters()
                                      if id(p) not in covered]
        if missing:
            problems.append(f"{len(missing)} parameter(s) not in the update, e.g. "
                            + ", ".join(repr(n) for n in missing[:5]))
        if problems:
            raise ValueError("update_weights rejected, model unchanged: " + "; ".join(problems))

    def sleep(self) -> None:
        """No-op: the HF backend holds no cache between calls."""

    def wake_up(self, tags: Any = None) -> None:
        """No-op (see :meth:`sleep`)."""

    def close(self) -> None:
        """No-op: nothing outlives the model object."""

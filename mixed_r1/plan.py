"""Per-GPU memory budget of a training layout, from the real parameter shapes of a model's config.

Static memory of the update phase on one rank (TP rank, PP stage, DP rank), in bytes:

- **weights**: this rank's parameters in the compute dtype — its TP shard of the stage's
  language-model tensors (:func:`mixed_r1.models.mapping.shard_specs`, with megatron's vocab
  padding and, for a tied model with PP > 1, the last stage's copy of the embedding) plus, on
  the first stage, the whole (replicated) Qwen2.5-VL vision tower;
- **grads**: megatron-core DDP's contiguous gradient buffer, fp32 (``grad_reduce_in_fp32``),
  one element per parameter (not sharded, also with the distributed optimizer);
- **masters**: fp32 main parameters — only for bf16 weights (fp32 weights are their own
  masters); divided by DP with the distributed optimizer;
- **optimizer**: Adam's two fp32 moments, divided by DP with the distributed optimizer;
- **update snapshot**: the transient fp32 copy of this rank's masters that ``update/rel_change``
  takes during a step (:func:`mixed_r1.engine.run_update`).

Bytes per parameter therefore: bf16 = 2 + 4 + (4 + 8 + 4)/d, fp32 = 4 + 4 + (8 + 4)/d with
d = DP for the distributed optimizer, else 1 (megatron-core's accounting, e.g. its
``--use-distributed-optimizer`` documentation: 18 → 6 + 12/d bytes per parameter for bf16 with
fp32 grads and masters, plus our snapshot).

Attention is counted for the implementation megatron-core will run (:func:`resolve_attention`:
``auto`` asks :func:`mixed_r1.parallel.platform.current_platform`): Transformer Engine keeps no
``s × s`` term (megatron-core reaches flash-attn only through it), megatron-core's local ``DotProductAttention`` builds the full
``[micro_batch · heads/TP, s, s]`` scores in every layer (:func:`local_attention_memory`), and a
plan whose update phase does not fit because of them is refused naming the scores
(:meth:`Plan.failure`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

GIB = 1 << 30


@dataclass
class StaticMemory:
    """Static update-phase memory of one rank of one pipeline stage (bytes); see the module doc."""

    stage: int
    params: int  # elements held by this rank
    weights: int
    grads: int
    masters: int
    optimizer: int
    update_snapshot: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.masters + self.optimizer + self.update_snapshot


def read_model_config(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` (or a model directory holding one) as a dict."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no model config (config.json)")
    from mixed_r1.models.safetensors_io import read_json_file

    return read_json_file(p)


def vision_params(hf_config: dict[str, Any]) -> int:
    """Elements of the Qwen2.5-VL vision tower (0 for a text LM), counted from the real module
    built on the meta device (no memory)."""
    if hf_config.get("model_type") != "qwen2_5_vl":
        return 0
    import torch

    from mixed_r1.models.qwen25vl.model import build_vision_tower

    with torch.device("meta"):
        tower = build_vision_tower(hf_config, dtype=torch.float32, attn_implementation="sdpa",
                                   device="meta")
    return sum(p.numel() for p in tower.parameters())


def stage_params(hf_config: dict[str, Any], tp: int, pp: int,
                 pipeline_layers: Sequence[int] | None = None) -> list[int]:
    """Parameters held by one TP rank of each pipeline stage (the most loaded TP rank: they are
    equal up to replicated norms and biases)."""
    from mixed_r1.models.config import arch_from_hf_config
    from mixed_r1.models.mapping import shard_specs, tp_shard_shape

    arch = arch_from_hf_config(hf_config)
    arch.check_parallel(tp, pp, pipeline_layers)
    out = []
    for stage in range(pp):
        n = 0
        for _, spec, _ in shard_specs(arch, tp, pp, stage, pipeline_layers):
            k = 1
            for d in tp_shard_shape(spec, tp, arch):
                k *= int(d)
            n += k
        out.append(n)
    out[0] += vision_params(hf_config)
    return out


def static_memory(hf_config: dict[str, Any], *, tp: int, pp: int, dp: int, dtype: str = "bfloat16",
                  distributed_optimizer: bool = False,
                  pipeline_layers: Sequence[int] | None = None) -> list[StaticMemory]:
    """:class:`StaticMemory` of each pipeline stage's ranks (see the module docstring)."""
    wbytes = {"bfloat16": 2, "float32": 4}[dtype]
    shard = dp if distributed_optimizer else 1
    rows = []
    for stage, n in enumerate(stage_params(hf_config, tp, pp, pipeline_layers)):
        masters = n * 4 // shard if dtype == "bfloat16" else 0
        rows.append(StaticMemory(stage=stage, params=n, weights=n * wbytes, grads=n * 4,
                                 masters=masters, optimizer=2 * 4 * n // shard,
                                 update_snapshot=4 * n // shard))
    return rows


def format_static(rows: Sequence[StaticMemory]) -> str:
    """A table (GiB) of :func:`static_memory` rows."""
    cols = ("weights", "grads", "masters", "optimizer", "update_snapshot", "total")
    lines = [f"{'stage':<7}{'params':>14}" + "".join(f"{c:>17}" for c in cols)]
    for r in rows:
        lines.append(f"{r.stage:<7}{r.params:>14,}" + "".join(
            f"{getattr(r, c) / GIB:>17.2f}" for c in cols))
    return "\n".join(lines)





# ------------------------------------------------------------------------------- attention
#: what megatron-core's core attention can run (``mixed-r1 plan --attention``; ``auto`` = what
#: this install runs, :meth:`mixed_r1.parallel.platform.Platform.attention_implementation`).
#: There is no ``flash``: in megatron-core 0.16.1 training reaches flash-attn only through TE's
#: attention; without TE our layer spec (models/qwen2/model.py ``layer_spec``) is the local one,
#: whose scores ``local`` counts (flash-attn serves only the HF vision tower).
ATTENTION = ("te", "local")
ATTENTION_NAMES = {
    "te": "Transformer Engine fused attention (no s x s scores)",
    "local": "megatron-core local DotProductAttention (full [micro_batch*heads/TP, s, s] scores "
             "per layer)",
}


def resolve_attention(choice: str = "auto", platform: Any = None) -> tuple[str, str]:
    """``(implementation, why)``: ``choice`` itself, or for ``auto`` what ``platform`` (default:
    :func:`~mixed_r1.parallel.platform.current_platform`) says megatron-core will run here, with
    the reason (Transformer Engine installed, not installed, or no GPU)."""
    if choice != "auto":
        if choice not in ATTENTION:
            raise ValueError(f"attention must be auto or one of {ATTENTION}, got {choice!r}")
        return choice, f"--attention {choice}"
    if platform is None:
        from mixed_r1.parallel.platform import current_platform

        platform = current_platform()
    impl = platform.attention_implementation()
    if impl == "te":
        why = "auto: Transformer Engine is installed"
    elif platform.on_gpu:
        why = "auto: Transformer Engine is not installed (or its PyTorch part is missing)"
    else:
        why = ("auto: no GPU here, so Transformer Engine cannot run; plan for the cluster's "
               "install with --attention te|local")
    return impl, why


@dataclass(frozen=True)
class LocalAttentionMemory:
    """What megatron-core 0.16.1's local ``DotProductAttention``
    (megatron/core/transformer/dot_product_attention.py) holds beyond the layer formula, in bytes.

    ``copy``: one ``[micro_batch · heads/TP, s, s]`` tensor in the compute dtype
    (``micro_batch · heads/TP · s² · dtype_bytes``). The scores are the ``torch.baddbmm`` output
    written beside ``parallel_state.get_global_memory_buffer()``'s ``"mpu"`` tensor of the same
    shape and dtype (the baddbmm ``input``, ``beta=0``); ``FusedScaleMaskSoftmax`` masks them in
    place (``masked_fill_`` with a fresh ``[s, s]`` bool causal mask, which its backward keeps)
    and, with ``masked_softmax_fusion=False`` and ``bf16=False`` in our ``TransformerConfig``
    (models/config.py: ``input_in_float16`` is False, so no fp32 upcast), ``torch.softmax``
    returns the probabilities in the compute dtype; attention dropout is 0 (identity, no copy);
    ``torch.bmm(probs, v)`` keeps the probabilities for its backward. So:

    - ``buffer``: the global memory buffer, one ``copy``, allocated at the first forward and kept
      for the life of the process (also while vLLM generates);
    - saved per layer: the probabilities (one ``copy``) and the mask (``s²`` bytes) without
      recompute — already in :func:`layer_activation_bytes` (``mcore-local``, ``none``); under
      ``selective`` (megatron recomputes ``core_attn``) and ``full`` nothing;
    - ``transient``: the backward of one layer's core attention holds four ``copy`` at its
      peak: the probabilities, their gradient (bmm backward), the scores' gradient (softmax
      backward) and the full-size gradient buffer autograd's ``CopySlices`` makes because
      ``masked_fill_`` runs in place on a *view* of the baddbmm output (measured: the same ops
      in plain torch peak at 4.06 copies, 3.06 with the mask applied to the base; CPU,
      torch 2.13, the profiler's allocation timeline). Without recompute the probabilities are
      the saved ones and under ``full`` they are in the rebuilt layer
      (:func:`lm_activation_memory`'s recompute transient), so three more copies; under
      ``selective`` all four plus the recomputed ``s²`` mask.

    ``scores_total`` is every byte of the ``s × s`` tensors the update phase holds at its peak;
    ``in_layers`` is the part of it counted in the layer lines (the saved probabilities and masks
    of every stored layer without recompute; the rebuilt layer's under ``full``)."""

    micro_batch: int
    heads: int  # per TP rank
    seq: int
    dtype_bytes: int
    buffer: int
    transient: int
    in_layers: int = 0

    @property
    def copy(self) -> int:
        return self.micro_batch * self.heads * self.seq * self.seq * self.dtype_bytes

    @property
    def scores_total(self) -> int:
        return self.buffer + self.transient + self.in_layers

    def shape(self) -> str:
        return f"[{self.micro_batch}*{self.heads}, {self.seq}, {self.seq}]"


def local_attention_memory(*, heads: int, tp: int, seq: int, micro_batch: int,
                           dtype_bytes: int = 2, recompute: str = "none",
                           in_layers: int = 0) -> LocalAttentionMemory:
    """:class:`LocalAttentionMemory` of megatron's local attention for ``heads`` query heads over
    ``tp`` ranks, micro-batches of ``micro_batch`` rows of ``seq`` tokens; ``in_layers``: the
    ``s × s`` bytes the layer lines already hold (see the class)."""
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")
    copy = micro_batch * (heads // tp) * seq * seq * dtype_bytes
    transient = 4 * copy + seq * seq if recompute == "selective" else 3 * copy
    return LocalAttentionMemory(micro_batch, heads // tp, seq, dtype_bytes, buffer=copy,
                                transient=transient, in_layers=in_layers)


# ------------------------------------------------------------------------------- activations
#: where the layer's implementation comes from: megatron-core's local spec (pure-torch RMSNorm,
#: unfused core attention), megatron-core with Transformer Engine (fused norm, flash attention), or
#: the transformers modules (hand-written fp32 RMSNorm, SDPA attention)
IMPLEMENTATIONS = ("mcore-local", "mcore-te", "hf")


@dataclass(frozen=True)
class LayerDims:
    """The shapes that size a transformer layer's saved activations."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, arch: Any) -> "LayerDims":
        return cls(arch.hidden_size, arch.ffn_hidden_size, arch.num_heads, arch.num_kv_heads,
                   arch.head_dim)


def _norm_bytes(h: int, e: int, impl: str, device: str) -> int:
    """Per token: what an RMSNorm saves for its backward, plus its output (saved by the next
    linear). torch's composite ``rms_norm`` (CPU) keeps an fp32 copy of the input and of the
    normalized input; the fused CUDA kernel (torch >= 2.8, and TE) keeps the input and the fp32
    1/rms; transformers' ``Qwen2RMSNorm`` keeps the fp32 input, 1/rms and the down-cast product."""
    if impl == "hf":
        return 4 * h + 4 + e * h + e * h
    if impl == "mcore-local" and device == "cpu":
        return 8 * h + 4 + e * h
    return e * h + 4 + e * h


def layer_activation_bytes(d: LayerDims, *, seq: int, batch: int, tp: int = 1, dtype_bytes: int = 2,
                           recompute: str = "none", impl: str = "mcore-local",
                           device: str = "cuda") -> int:
    """Bytes one transformer layer keeps for its backward for one micro-batch of ``batch``
    sequences of ``seq`` tokens, tensor-parallel over ``tp`` ranks without sequence parallelism.

    The accounting of Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
    Transformer Models", §4: ``sbh(34 + 5as/h)`` for GPT's MLP and multi-head attention, the
    attention scores term dropped by selective recompute, only the layer input kept under full
    recompute), redone tensor by tensor for the SwiGLU MLP, grouped-query attention and RMSNorm
    of Qwen2/Llama, and checked against the tensors autograd saves (``tests/test_plan.py``):

    - two RMSNorms (:func:`_norm_bytes`), replicated over TP;
    - attention, per TP shard: megatron keeps the fused QKV output, the rotated q and k and the
      context; unfused core attention (local spec) also the expanded q/k/v, the softmax
      probabilities ``a·s²·b`` and the boolean mask ``s²``, which ``selective`` recompute drops and
      flash attention never stores (it keeps the fp32 log-sum-exp instead);
    - the SwiGLU MLP: megatron keeps the fused gate/up output (``2f``) and three ``f``-wide tensors,
      transformers keeps four ``f``-wide tensors (gate, up, activation, product);
    - ``full`` recompute keeps only the layer's input (the recomputed layer's activations exist
      transiently in the backward: :func:`lm_activation_memory` adds one layer's worth).
    """
    if recompute not in ("none", "selective", "full"):
        raise ValueError(f"recompute must be none, selective or full, got {recompute!r}")
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
    e, s, b, t = dtype_bytes, seq, batch, tp
    h, f, a = d.hidden, d.ffn, d.heads
    hq, kvd = d.heads * d.head_dim, d.kv_heads * d.head_dim
    tokens = s * b
    if recompute == "full":
        return tokens * e * h + (4 * s * d.head_dim if impl != "hf" else 0)
    norms = 2 * _norm_bytes(h, e, impl, device)
    if impl == "hf":  # separate q/k/v projections, SDPA (flash/efficient/CPU-flash) keeps lse
        attn = e * (2 * hq + 2 * kvd) + 4 * a
        mlp = 4 * f * e
        rope = 2 * s * d.head_dim * e
        return tokens * (norms + attn + mlp) + rope
    mlp = 5 * f * e // t
    rope = 4 * s * d.head_dim * e
    if impl == "mcore-local" and recompute == "none":
        attn = tokens * 4 * hq * e // t + a // t * s * s * b * e + s * s
    else:  # qkv output, rotated q and k, context (+ flash's fp32 lse)
        attn = tokens * (e * (3 * hq + 3 * kvd) // t + (4 * a // t if impl == "mcore-te" else 0))
    return tokens * (norms + mlp) + attn + rope


def vision_tokens(hf_config: dict[str, Any], max_pixels: int) -> int:
    """Patches the vision tower sees for one image of at most ``max_pixels`` (before the 2×2 merge)."""
    v = hf_config.get("vision_config") or {}
    patch = int(v.get("patch_size", 14))
    return max_pixels // (patch * patch)


def vision_activation_bytes(hf_config: dict[str, Any], *, images: int, max_pixels: int,
                            dtype_bytes: int = 2, recompute: str = "none") -> int:
    """Qwen2.5-VL vision tower activations for ``images`` images of ``max_pixels`` (transformers'
    blocks: :func:`layer_activation_bytes` with ``impl='hf'``, one sequence of patches per image;
    with ``recompute='full'`` the blocks are checkpointed, both backends, and one block's
    activations are rebuilt at a time)."""
    v = hf_config.get("vision_config")
    if hf_config.get("model_type") != "qwen2_5_vl" or not v or images <= 0:
        return 0
    heads = int(v.get("num_heads", 16))
    h = int(v.get("hidden_size", v.get("embed_dim", 1280)))
    d = LayerDims(h, int(v.get("intermediate_size", 4 * h)), heads, heads, h // heads)
    n = vision_tokens(hf_config, max_pixels)
    kw = dict(seq=n, batch=images, dtype_bytes=dtype_bytes, impl="hf")
    per = layer_activation_bytes(d, recompute=recompute, **kw)
    transient = layer_activation_bytes(d, recompute="none", **kw) - per
    return int(v.get("depth", 32)) * per + transient


def logits_bytes(vocab_shard: int, *, seq: int, batch: int, dtype_bytes: int = 2,
                 copies: int = 2) -> int:
    """The LM head's output ``[b, s, V/t]`` in the compute dtype, plus its gradient of the same
    size in the backward (``copies`` = 2: the vocab-parallel log-prob op keeps the logits and
    writes the gradient into a fresh buffer; 1: the HF engine's ``token_logprobs`` writes it into
    the logits buffer; ``tests/test_plan.py`` checks the peak)."""
    return copies * vocab_shard * seq * batch * dtype_bytes


@dataclass
class ActivationMemory:
    """Update-phase activation memory of one rank (bytes): the saved activations of this stage's
    layers for every micro-batch in flight, the one layer rebuilt during a ``full`` recompute
    backward, the logits (last stage) and the vision tower (first stage)."""

    layers: int
    recompute_transient: int
    logits: int
    vision: int
    in_flight: int
    #: megatron's local attention only (``impl='mcore-local'``), else None: its resident scores
    #: buffer (not in ``total``: it outlives the backward) and its backward transient (in ``total``)
    attention: LocalAttentionMemory | None = None

    @property
    def attention_buffer(self) -> int:
        return self.attention.buffer if self.attention else 0

    @property
    def attention_transient(self) -> int:
        return self.attention.transient if self.attention else 0

    @property
    def total(self) -> int:
        """Bytes that live only in the backward (the attention buffer is resident, not here)."""
        return (self.layers + self.recompute_transient + self.logits + self.vision
                + self.attention_transient)


def lm_activation_memory(hf_config: dict[str, Any], *, seq: int, micro_batch: int, tp: int = 1,
                         pp: int = 1, stage: int = 0, pipeline_layers: Sequence[int] | None = None,
                         micro_batches: int = 1, dtype: str = "bfloat16", recompute: str = "none",
                         impl: str = "mcore-local", device: str = "cuda",
                         images_per_row: int = 0, max_pixels: int = 0,
                         scored_tokens: int | None = None) -> ActivationMemory:
    """:class:`ActivationMemory` of pipeline stage ``stage`` for micro-batches of ``micro_batch``
    rows of ``seq`` tokens (``impl='mcore-local'``: with megatron's local attention buffer and
    backward transient, :func:`local_attention_memory`; packed rows are counted as padded ones,
    an upper bound). Under 1F1B the first stage holds ``min(pp - stage, micro_batches)``
    micro-batches' activations at once (megatron's warm-up depth), the last one.
    ``scored_tokens``: positions per row the LM head runs on (both engines send only the
    completion, ``rollout.max_new_tokens``); None: all ``seq``. ``impl='hf'``: one logits-sized
    buffer (the HF engine's plain-head path writes the gradient in place; a soft-capped head's
    materialized path needs two, not modelled)."""
    from mixed_r1.models.config import arch_from_hf_config, resolve_pipeline_layers

    arch = arch_from_hf_config(hf_config)
    layers = resolve_pipeline_layers(arch.num_layers, pp, pipeline_layers)[stage]
    e = {"bfloat16": 2, "float32": 4}[dtype]
    d = LayerDims.of(arch)
    kw = dict(seq=seq, batch=micro_batch, tp=tp, dtype_bytes=e, impl=impl, device=device)
    per = layer_activation_bytes(d, recompute=recompute, **kw)
    in_flight = max(1, min(pp - stage, micro_batches))
    stored = layers * per * in_flight
    tokens = seq * micro_batch
    stored += 8 * tokens * in_flight  # token ids / targets
    last = stage == pp - 1
    if last:  # the final norm and the LM head's input
        stored += tokens * _norm_bytes(d.hidden, e, impl, device) * in_flight
    transient = 0
    if recompute == "full":
        transient = layer_activation_bytes(d, recompute="none", **kw) - per
    logits = logits_bytes(arch.padded_vocab_size(tp) // tp, seq=scored_tokens or seq,
                          batch=micro_batch, dtype_bytes=e,
                          copies=1 if impl == "hf" else 2) if last else 0
    vision = 0
    if stage == 0 and images_per_row:
        vision = in_flight * vision_activation_bytes(
            hf_config, images=images_per_row * micro_batch, max_pixels=max_pixels, dtype_bytes=e,
            recompute="full" if recompute == "full" else "none")
    attention = None
    if impl == "mcore-local":
        per_layer = d.heads // tp * seq * seq * micro_batch * e + seq * seq  # probs + mask
        held = {"none": layers * in_flight * per_layer, "full": per_layer}.get(recompute, 0)
        attention = local_attention_memory(heads=d.heads, tp=tp, seq=seq, micro_batch=micro_batch,
                                           dtype_bytes=e, recompute=recompute, in_layers=held)
    return ActivationMemory(layers=stored, recompute_transient=transient, logits=logits,
                            vision=vision, in_flight=in_flight, attention=attention)


# ------------------------------------------------------------------------------- a whole config
#: CUDA context, NCCL buffers and allocator fragmentation per process: a budget line, not measured
#: here (PyTorch's CUDA context alone is ~0.5 GiB on H100; NCCL adds its channel buffers)
CONTEXT_BYTES = 2 * GIB
#: vLLM's own working set inside its ``gpu_memory_utilization`` share besides weights and KV
#: cache (profiling-run activations, sampler, CUDA graphs); vLLM measures it at start-up
VLLM_RUNTIME_BYTES = 2 * GIB


def update_peak_bytes(st: StaticMemory, act: ActivationMemory) -> int:
    """Peak update-phase bytes of one rank: the resident state (weights, gradients, masters, Adam)
    plus the larger of the backward's activations and the step's update-ratio snapshot — the
    snapshot is taken after the backward has freed the activations (:func:`mixed_r1.engine.
    run_update`), so the two are never held at once — plus megatron's local-attention buffer,
    resident from the first forward on. ``tools/check_plan.py`` checks it against measured
    peaks."""
    resident = st.weights + st.grads + st.masters + st.optimizer + act.attention_buffer
    return resident + max(act.total, st.update_snapshot)


@dataclass
class PlanLine:
    """One budget line. Lines of the same phase add up, except those with a ``window``: only the
    largest window's sum counts (activations live in the backward, the snapshot in the step)."""

    phase: str  # "update" | "rollout"
    name: str
    bytes: int
    note: str = ""
    window: str = ""


@dataclass
class Plan:
    """The per-GPU budget of one config on ``gpus`` devices of ``gpu_bytes`` each."""

    title: str
    gpu_bytes: int
    stage: int  # the pipeline stage whose ranks need the most memory
    lines: list[PlanLine]
    kv_tokens: int | None = None
    max_model_len: int = 0
    #: the attention implementation counted (``te`` | ``local``; ``sdpa`` for the HF
    #: backend), why it was assumed, and megatron's local-attention memory (None otherwise)
    attention: str = ""
    attention_why: str = ""
    local_attention: LocalAttentionMemory | None = None
    dtype: str = "bfloat16"
    recompute: str = "none"

    def total(self, phase: str) -> int:
        lines = [x for x in self.lines if x.phase == phase]
        windows: dict[str, int] = {}
        for x in lines:
            if x.window:
                windows[x.window] = windows.get(x.window, 0) + x.bytes
        return sum(x.bytes for x in lines if not x.window) + max(windows.values(), default=0)

    def failure(self) -> str | None:
        """The first budget line that does not fit, in one line; None when both phases fit."""
        for phase in ("update", "rollout"):
            tot = self.total(phase)
            if tot > self.gpu_bytes:
                head = (f"the {phase} phase needs {tot / GIB:.1f} GiB per GPU (pipeline stage "
                        f"{self.stage}) > {self.gpu_bytes / GIB:.1f} GiB")
                scores = self.scores_failure(tot, phase)
                if scores:
                    return f"{head}: {scores}"
                big = max((x for x in self.lines if x.phase == phase), key=lambda x: x.bytes)
                return f"{head}; largest line: {big.name} {big.bytes / GIB:.1f} GiB"
        if self.kv_tokens is not None and self.kv_tokens < self.max_model_len:
            return (f"the generator's KV cache holds {self.kv_tokens} tokens < max_model_len "
                    f"{self.max_model_len} (raise rollout.gpu_memory_utilization or "
                    "rollout.tensor_parallel)")
        return None

    def scores_failure(self, total: int, phase: str = "update") -> str | None:
        """The local-attention clause of :meth:`failure`: when megatron's local attention is
        counted and its ``s × s`` tensors are what does not fit (without them ``phase`` would
        fit: all of them in the update phase, the kept buffer in the rollout phase), name their
        shape, size and the fixes; else None."""
        la = self.local_attention
        if la is None:
            return None
        held = la.scores_total if phase == "update" else la.buffer
        if total - held > self.gpu_bytes:
            return None
        fixes = ["install Transformer Engine (see README: GPU install)",
                 "lower algo.micro_batch_size or rollout.max_prompt_length + "
                 "rollout.max_new_tokens", "raise parallel.tensor_parallel"]
        if self.recompute == "none":
            fixes.append("set model.recompute=selective (drops the per-layer copies)")
        return (f"megatron-core's local attention ({self.attention_why}) builds "
                f"{self.dtype} scores {la.shape()} = {la.copy / GIB:.2f} GiB per copy, "
                f"{held / GIB:.1f} GiB of s x s tensors in the {phase} phase "
                f"(recompute {self.recompute}); fix: " + ", or ".join(fixes))

    def format(self) -> str:
        out = [self.title]
        if self.attention:
            out.append(f"attention: {self.attention} — {ATTENTION_NAMES.get(self.attention, self.attention)}"
                       f" [{self.attention_why}]")
        for phase in ("update", "rollout"):
            out.append(f"{phase} phase (per GPU, pipeline stage {self.stage}){'GiB':>32}")
            for x in (x for x in self.lines if x.phase == phase):
                out.append(f"  {x.name:<56}{x.bytes / GIB:>9.2f}" + (f"   {x.note}" if x.note else ""))
            tot = self.total(phase)
            ok = "fits" if tot <= self.gpu_bytes else "DOES NOT FIT"
            out.append(f"  {'total':<56}{tot / GIB:>9.2f}   of {self.gpu_bytes / GIB:.1f} GiB: {ok}")
        return "\n".join(out)


def model_hf_config(cfg: Any, model_config: str | Path | None = None, *,
                    planning: bool = False) -> dict[str, Any]:
    """The policy's HF config as a dict: ``model_config`` if given, else ``model.path``'s
    config.json, else the tiny model's (``model.kind: tiny_qwen25vl``). A missing or unreadable
    file is a :class:`~mixed_r1.config.ConfigError` naming the key (``planning``: with the hint
    to pass ``--model-config``)."""
    from mixed_r1.config import ConfigError

    m = cfg.model
    if model_config is not None:
        try:
            return read_model_config(model_config)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--model-config {model_config}: {exc}") from None
    if m.kind == "pretrained":
        try:
            return read_model_config(m.path)
        except (OSError, ValueError) as exc:
            hint = (" (to plan without the model here, pass --model-config FILE, its "
                    "config.json)") if planning else ""
            raise ConfigError(f"config key 'model.path': {exc}{hint}") from None
    from mixed_r1.models.qwen25vl import tiny_qwen25vl_config

    return tiny_qwen25vl_config(
        hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, intermediate_size=m.intermediate_size,
        vision_hidden=m.vision_hidden, vision_depth=m.vision_depth).to_dict()


def default_max_pixels(hf_config: dict[str, Any], cfg: Any) -> int:
    if cfg.model.max_pixels:
        return int(cfg.model.max_pixels)
    return 12544 if cfg.model.kind == "tiny_qwen25vl" else 12845056  # Qwen2.5-VL's default


def update_micro_batches(cfg: Any) -> int:
    """Micro-batches one data-parallel rank runs per optimizer update (at most)."""
    a, p = cfg.algo, cfg.parallel
    dp = p.data_parallel if p.backend == "mcore" else 1
    rows = cfg.rollout.prompts_per_step * cfg.rollout.group_size
    per_update = -(-rows // a.mini_batches)
    return -(-(-(-per_update // a.micro_batch_size)) // dp)


def plan_config(cfg: Any, *, gpus: int | None = None, gpu_mem_gib: float = 80.0,
                hf_config: dict[str, Any] | None = None, impl: str | None = None,
                attention: str = "auto", platform: Any = None, origin: str = "config") -> Plan:
    """Validate ``cfg`` for a world of ``gpus`` devices and size both phases on each of them.

    Raises :class:`mixed_r1.config.ConfigError` (one line, naming the key) when a rule fails: the
    config's own validation, a world that does not match TP·PP·DP, a TP/PP split the model's
    shapes do not allow, a sequence longer than the model's positions. The memory budget itself is
    returned (see :meth:`Plan.failure`): per GPU, the update phase holds the policy's static
    memory (:func:`static_memory`), a reference copy when ``algo.beta > 0``, the activations
    (:func:`lm_activation_memory`) and :data:`CONTEXT_BYTES`; the rollout phase holds the policy's
    weights, gradients and optimizer state (nothing is offloaded) beside the generator: vLLM takes
    ``rollout.gpu_memory_utilization`` of the device, of which weights and
    :data:`VLLM_RUNTIME_BYTES` come first and the rest is KV cache; the HF generator of the mcore
    backend is a full bf16/fp32 copy of the model on each replica's first rank plus its KV cache.

    ``attention`` (mcore backend): ``auto`` (what ``platform``, default the current one, says this
    install runs) or ``te`` | ``local`` (:func:`resolve_attention`); ``local`` adds
    megatron's ``s × s`` tensors (:func:`local_attention_memory`): the resident scores buffer in
    both phases and the backward's transient copies. ``impl`` (``mcore-local`` | ``mcore-te``)
    still picks the layer formula directly; one that contradicts an explicit ``attention`` is a
    ConfigError.
    """
    from mixed_r1.config import ConfigError, validate, validate_model_layout
    from mixed_r1.models.config import arch_from_hf_config

    p, r = cfg.parallel, cfg.rollout
    mcore = p.backend == "mcore"
    tp, pp, dp = (p.tensor_parallel, p.pipeline_parallel, p.data_parallel) if mcore else (1, 1, 1)
    world = tp * pp * dp
    if gpus is not None and gpus != world:
        raise ConfigError(f"{origin}: parallel.tensor_parallel*pipeline_parallel*data_parallel = "
                          f"{tp}*{pp}*{dp} = {world} ranks, but the plan is for {gpus} GPUs"
                          if mcore else f"{origin}: parallel.backend=hf runs on one GPU, "
                          f"not {gpus}: use parallel.backend=mcore")
    validate(cfg)
    hf = hf_config if hf_config is not None else model_hf_config(cfg)
    validate_model_layout(cfg, hf, origin)
    arch = arch_from_hf_config(hf)
    seq = r.max_prompt_length + r.max_new_tokens
    dtype, e = cfg.model.dtype, {"bfloat16": 2, "float32": 4}[cfg.model.dtype]
    device = "cpu" if cfg.device == "cpu" else "cuda"
    if attention != "auto" and attention not in ATTENTION:
        raise ConfigError(f"--attention {attention!r}: expected auto, " + ", ".join(ATTENTION))
    if not mcore:
        att, why = "sdpa", "parallel.backend=hf: transformers' SDPA (no s x s scores kept)"
        impl = impl or "hf"
    elif impl in ("mcore-local", "mcore-te"):
        att = "local" if impl == "mcore-local" else "te"
        if attention not in ("auto", att):
            raise ConfigError(f"--impl {impl} counts {att} attention, not --attention {attention}")
        att, why = (attention, f"--attention {attention}") if attention != "auto" else \
            (att, f"--impl {impl}")
    else:
        att, why = resolve_attention(attention, platform)
        impl = impl or ("mcore-local" if att == "local" else "mcore-te")
    rec = cfg.model.recompute_mode
    mb = cfg.algo.micro_batch_size
    n_micro = update_micro_batches(cfg)
    images = 1 if arch.is_vl else 0
    max_pixels = default_max_pixels(hf, cfg)
    statics = static_memory(hf, tp=tp, pp=pp, dp=dp, dtype=dtype,
                            distributed_optimizer=mcore and p.distributed_optimizer,
                            pipeline_layers=p.pipeline_layers)
    total_params = sum(stage_params(hf, 1, 1))
    rtp = cfg.rollout.tensor_parallel or (tp if mcore else 1)
    gpu = int(gpu_mem_gib * GIB)
    best: Plan | None = None
    for st in statics:
        act = lm_activation_memory(hf, seq=seq, micro_batch=mb, tp=tp, pp=pp, stage=st.stage,
                                   pipeline_layers=p.pipeline_layers, micro_batches=n_micro,
                                   dtype=dtype, recompute=rec, impl=impl, device=device,
                                   images_per_row=images, max_pixels=max_pixels,
                                   scored_tokens=r.max_new_tokens)
        shard = f" (/{dp}: dist. optimizer)" if mcore and p.distributed_optimizer else ""
        L = [PlanLine("update", f"{dtype} weights", st.weights, f"{st.params:,} parameters"),
             PlanLine("update", "fp32 gradients", st.grads),
             PlanLine("update", "fp32 master weights" + shard, st.masters),
             PlanLine("update", "Adam moments (fp32 x2)" + shard, st.optimizer),
             PlanLine("update", "update-ratio snapshot (fp32)" + shard, st.update_snapshot,
                      "in the step, after the backward: the larger of the two windows counts",
                      window="step")]
        if cfg.algo.beta > 0:
            L.append(PlanLine("update", f"reference policy ({dtype} weights)", st.weights))
        L += [PlanLine("update", f"activations: {act.in_flight} x micro-batch {mb} x {seq} tokens",
                       act.layers, f"recompute {rec}, {impl}; in the backward", window="backward"),
              PlanLine("update", "recompute transient (one layer)", act.recompute_transient,
                       window="backward"),
              PlanLine("update", "logits + their gradient", act.logits, window="backward"),
              PlanLine("update", "vision tower activations", act.vision,
                       f"{images} image of {max_pixels} px per row" if images else "",
                       window="backward"),
              PlanLine("update", "CUDA context, NCCL, fragmentation", CONTEXT_BYTES)]
        if act.attention:
            L.insert(-4, PlanLine(
                "update", "local attention backward (one layer)", act.attention_transient,
                f"{act.attention_transient // act.attention.copy} x {act.attention.shape()} "
                f"{dtype}", window="backward"))
            buf = PlanLine("update", "local attention scores buffer (megatron, kept)",
                           act.attention_buffer, f"{act.attention.shape()} {dtype}: "
                           "get_global_memory_buffer(), from the first forward on")
            L.insert(-1, buf)
        resident = st.weights + st.grads + st.masters + st.optimizer
        L.append(PlanLine("rollout", "policy weights, gradients, masters, Adam (resident)",
                          resident))
        if act.attention:
            L.append(PlanLine("rollout", buf.name, buf.bytes, "still held while vLLM generates"))
        if cfg.algo.beta > 0:
            L.append(PlanLine("rollout", f"reference policy ({dtype} weights)", st.weights))
        kv_per_token = 2 * arch.num_layers * max(1, arch.num_kv_heads // rtp) * arch.head_dim * e
        kv_tokens = None
        if r.backend == "vllm":
            budget = int(r.gpu_memory_utilization * gpu)
            weights = total_params * e // rtp
            kv = budget - weights - VLLM_RUNTIME_BYTES
            kv_tokens = max(0, kv // kv_per_token)
            L.append(PlanLine("rollout", f"vLLM (gpu_memory_utilization {r.gpu_memory_utilization})",
                              budget, f"weights {weights / GIB:.1f} GiB (TP {rtp}), KV cache "
                              f"{max(kv, 0) / GIB:.1f} GiB = {kv_tokens:,} tokens "
                              f"({kv_tokens // seq} sequences of {seq})"))
            L.append(PlanLine("update", "vLLM asleep (level 2: weights and KV freed)", 0))
        else:
            rows = min(r.batch_size, r.prompts_per_step * r.group_size)
            kv = rows * seq * kv_per_token
            if mcore:  # a separate HF model on each replica's first rank
                L.append(PlanLine("rollout", f"HF generator weights ({dtype}, full model)",
                                  total_params * e))
                L.append(PlanLine("update", "HF generator weights (kept)", total_params * e))
            L.append(PlanLine("rollout", f"HF generate KV cache ({rows} rows x {seq} tokens)", kv))
        L.append(PlanLine("rollout", "CUDA context, NCCL, fragmentation", CONTEXT_BYTES))
        title = (f"plan: {origin} on {world} GPU{'s' if world > 1 else ''} of {gpu_mem_gib:g} GiB "
                 f"(backend {p.backend}: TP {tp} x PP {pp} x DP {dp}; rollout {r.backend}, "
                 f"{world // rtp} replica{'s' if world // rtp > 1 else ''} of TP {rtp})")
        plan = Plan(title, gpu, st.stage, L, kv_tokens, seq, attention=att, attention_why=why,
                    local_attention=act.attention, dtype=dtype, recompute=rec)
        if best is None or max(plan.total("update"), plan.total("rollout")) > \
                max(best.total("update"), best.total("rollout")):
            best = plan
    assert best is not None
    return best


# ------------------------------------------------------------------------------- the command
def _default_gpu_mem_gib(platform: Any = None) -> float:
    """This machine's GPU memory in GiB (asked of the platform), else 80 (H100 80GB, the card
    the example configs are written for)."""
    try:
        if platform is None:
            from mixed_r1.parallel.platform import current_platform

            platform = current_platform()
        total = platform.total_memory_bytes()
        if total:
            return total / GIB
    except Exception:  # noqa: BLE001 - a broken CUDA install: fall back to the target card
        pass
    return 80.0


__all__ = ["ATTENTION", "ActivationMemory", "CONTEXT_BYTES", "IMPLEMENTATIONS",
           "LocalAttentionMemory", "local_attention_memory", "resolve_attention", "LayerDims", "Plan", "PlanLine",
           "StaticMemory", "VLLM_RUNTIME_BYTES", "format_static", "model_hf_config", "plan_config",
           "layer_activation_bytes", "lm_activation_memory", "logits_bytes", "read_model_config",
           "stage_params", "static_memory", "vision_activation_bytes", "vision_params",
           "vision_tokens"]

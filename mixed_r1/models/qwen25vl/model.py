"""The Qwen2.5-VL policy on megatron-core: the HF vision tower (replicated, first pipeline stage only)
feeding image embeddings into the megatron ``GPTModel`` language model, with 3-D multimodal rope.

Forward rule (the same numbers as ``Qwen2_5_VLForConditionalGeneration``):

1. first stage: ``x = word_embeddings(input_ids)`` [b, s, h]; the vision tower turns ``pixel_values``
   (+ ``image_grid_thw``) into one row per merged patch, and those rows replace ``x`` at the
   ``image_token_id`` positions in row-major (b, s) order (HF's ``masked_scatter``); ``x`` goes to the
   decoder as ``decoder_input`` [s, b, h].
2. every stage: mrope position ids [3, b, s] (temporal, height, width) are computed by HF's own
   ``Qwen2_5_VLModel.get_rope_index`` when the batch has images, and are ``arange(s)`` on all three axes
   for text-only batches (what HF does when it is given no image grid); megatron's
   ``MultimodalRotaryEmbedding`` applies them with the config's ``mrope_section``.

Every pipeline stage needs the position ids: :meth:`Qwen25VLPolicy.prepare_microbatch` adds them to a
microbatch dict from ``input_ids`` (+ ``mm_token_type_ids``, ``image_grid_thw``, ``attention_mask``);
:func:`mixed_r1.parallel.schedule.pipeline_logprobs` calls it on every stage before the schedule runs and
hands ``pixel_values``/``image_grid_thw``/``mm_token_type_ids`` to the model on the first stage only.

Gradients: with TP the decoder input's gradient is identical on every TP rank (the first column-parallel
linear all-reduces its input gradient), so the replicated vision tower gets the full, identical gradient
on each TP rank; data-parallel replicas reduce it like any other replicated parameter.

Vision attention: flash-attn 2 when it is installed and CUDA is present, torch SDPA otherwise.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import torch

from mixed_r1.parallel import state
from mixed_r1.parallel.platform import current_platform

from .. import convert as C
from ..config import LMArch, arch_from_hf_config
from ..qwen2.model import build_gpt_model, load_mcore_shard

MM_KEYS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")
VISION_PREFIXES = ("model.visual.", "visual.")


def vision_attn_implementation() -> str:
    """``flash_attention_2`` where flash-attn is installed and CUDA is present, else ``sdpa``."""
    return current_platform().hf_vision_attention()


def hf_vl_config(hf_config: dict[str, Any] | Any):
    """A ``Qwen2_5_VLConfig`` from a config.json dict (or the config itself)."""
    from transformers import Qwen2_5_VLConfig

    if isinstance(hf_config, dict):
        return Qwen2_5_VLConfig.from_dict(hf_config)
    return hf_config


def build_vision_tower(hf_config, *, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None,
                       device: torch.device | str | None = None) -> torch.nn.Module:
    """An (uninitialised) HF ``Qwen2_5_VisionTransformerPretrainedModel`` for ``hf_config.vision_config``."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers
        from contextlib import nullcontext as no_init_weights

    vcfg = copy.deepcopy(hf_vl_config(hf_config).vision_config)
    if device is None:
        device = current_platform().device()
    with no_init_weights(), torch.device(device):
        visual = Qwen2_5_VisionTransformerPretrainedModel._from_config(
            vcfg, dtype=dtype, attn_implementation=attn_implementation or vision_attn_implementation())
    return visual


def load_vision_state(visual: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy HF vision tensors (``model.visual.*`` or legacy ``visual.*`` names) into ``visual``; raise on any
    missing, unexpected or mis-shaped tensor, naming it and ``source``."""
    params = visual.state_dict()
    seen = set()
    with torch.no_grad():
        for name, t in tensors.items():
            prefix = next((p for p in VISION_PREFIXES if name.startswith(p)), None)
            if prefix is None:
                raise C.CheckpointError(f"{source}: tensor {name} is not a vision tower tensor")
            local = name[len(prefix):]
            if local not in params:
                raise C.CheckpointError(f"{source}: tensor {name} has no parameter in the vision tower")
            if params[local].shape != t.shape:
                raise C.CheckpointError(f"{source}: tensor {name} is {list(t.shape)}, vision tower expects "
                                        f"{list(params[local].shape)}")
            params[local].copy_(t)
            seen.add(local)
    missing = sorted(set(params) - seen)
    if missing:
        raise C.CheckpointError(f"{source}: vision tensor {missing[0]} is missing ({len(missing)} missing)")


class _RopeIndex:
    """Just enough of ``Qwen2_5_VLModel`` to call HF's own ``get_rope_index`` without building the model."""

    def __init__(self, config) -> None:
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

        self.config = config
        self._get_rope_index = Qwen2_5_VLModel.get_rope_index
        self._get_vision_position_ids = Qwen2_5_VLModel.get_vision_position_ids

    def get_vision_position_ids(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._get_vision_position_ids(self, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any):
        return self._get_rope_index(self, *args, **kwargs)


def mrope_position_ids(hf_config, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor | None = None,
                       image_grid_thw: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       video_grid_thw: torch.Tensor | None = None,
                       second_per_grid_ts: torch.Tensor | None = None) -> torch.Tensor:
    """3-D rope position ids [3, b, s] exactly as ``Qwen2_5_VLModel`` computes them.

    With an image (or video) grid: HF's ``get_rope_index`` (``mm_token_type_ids`` defaults to 1 at
    ``image_token_id`` and 2 at ``video_token_id`` positions, 0 elsewhere — what the processor emits).
    Without one: ``arange(s)`` on all three axes (HF's text-only positions).
    """
    cfg = hf_vl_config(hf_config)
    b, s = input_ids.shape
    if image_grid_thw is None and video_grid_thw is None:
        return torch.arange(s, device=input_ids.device).view(1, 1, s).expand(3, b, s).contiguous()
    if mm_token_type_ids is None:
        mm_token_type_ids = ((input_ids == cfg.image_token_id).long()
                             + 2 * (input_ids == cfg.video_token_id).long())
    pos, _ = _RopeIndex(cfg)(input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw,
                             video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
                             attention_mask=attention_mask)
    return pos


class Qwen25VLPolicy(torch.nn.Module):
    """Qwen2.5-VL on megatron-core for this rank: ``visual`` (HF vision tower, first stage only, else None)
    + ``language_model`` (megatron ``GPTModel`` with ``position_embedding_type="mrope"``).

    ``forward(input_ids, position_ids, attention_mask, *, pixel_values, image_grid_thw, mm_token_type_ids)``
    has GPTModel's positional signature, so megatron's schedules drive it like a GPTModel; the last stage
    returns the vocab-parallel logits shard [b, s, V_pad/TP].
    """

    def __init__(self, language_model: torch.nn.Module, arch: LMArch, hf_config,
                 visual: torch.nn.Module | None) -> None:
        super().__init__()
        if arch.mrope_section is None:
            raise ValueError(f"{arch.model_type} has no mrope_section: not a Qwen2.5-VL language model")
        if language_model.pre_process and visual is None:
            raise ValueError("the first pipeline stage needs the vision tower")
        self.language_model = language_model
        self.visual = visual
        self.arch = arch
        self.hf_config = hf_vl_config(hf_config)
        self.config = language_model.config  # megatron's schedules read model.config
        if self.config.sequence_parallel:
            raise ValueError("sequence_parallel=True is not supported by the Qwen2.5-VL policy; set it to False")

    # ---- what megatron's schedules and finalize_model_grads look up on the model
    @property
    def model_type(self):
        return self.language_model.model_type

    @property
    def decoder(self):
        return self.language_model.decoder

    def set_is_first_microbatch(self) -> None:
        self.language_model.set_is_first_microbatch()

    @property
    def pre_process(self) -> bool:
        return self.language_model.pre_process

    @property
    def post_process(self) -> bool:
        return self.language_model.post_process

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.language_model.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.language_model.shared_embedding_or_output_weight()

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    # ---- multimodal inputs
    def position_ids(self, input_ids: torch.Tensor, mm_token_type_ids: torch.Tensor | None = None,
                     image_grid_thw: torch.Tensor | None = None,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """mrope position ids [3, b, s] (see :func:`mrope_position_ids`)."""
        return mrope_position_ids(self.hf_config, input_ids, mm_token_type_ids, image_grid_thw, attention_mask)

    def prepare_microbatch(self, mb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A copy of ``mb`` with ``position_ids`` [3, b, s] added (kept when already there)."""
        if mb.get("position_ids") is not None:
            return mb
        mask = mb.get("attention_mask")
        pos = self.position_ids(mb["input_ids"], mb.get("mm_token_type_ids"), mb.get("image_grid_thw"),
                                mask if mask is not None and not bool(mask.all()) else None)
        return {**mb, "position_ids": pos}

    def image_embeddings(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """One row per merged patch [n_image_tokens, hidden] for all images, in image order."""
        if self.visual is None:
            raise RuntimeError("the vision tower lives on the first pipeline stage only")
        out = self.visual(pixel_values.to(self.visual.dtype), grid_thw=image_grid_thw)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def _vision_zero(self, x: torch.Tensor) -> torch.Tensor:
        """A zero that depends on every trainable vision-tower parameter (one element of each,
        times 0), added to a text-only micro-batch's embeddings: the tower then gets a zero
        gradient instead of none, so megatron-core's DDP sees its buckets complete. Without it,
        ``overlap_grad_reduce`` never launches their reduction and asserts in
        ``finish_grad_sync``, and the replicas' gradient buffers would disagree on which
        buckets a step reduced."""
        ones = [p.reshape(-1)[:1] for p in self.visual.parameters() if p.requires_grad]
        if not ones:
            return x.new_zeros(())
        return (torch.cat(ones).sum() * 0.0).to(x.dtype)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_grid_thw: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder input [s, b, h]: word embeddings with image rows scattered in at the image-pad tokens."""
        emb_mod = self.language_model.embedding
        x = emb_mod.word_embeddings(input_ids)  # [b, s, h], reduced over TP
        image_mask = input_ids == self.hf_config.image_token_id
        n_tok = int(image_mask.sum())
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            img = self.image_embeddings(pixel_values, image_grid_thw).to(x.dtype)
            if img.shape[0] != n_tok:
                raise ValueError(f"image features and image tokens do not match: {n_tok} <|image_pad|> tokens, "
                                 f"{img.shape[0]} feature rows")
            x = x.masked_scatter(image_mask[..., None].expand_as(x), img)
        elif n_tok:
            raise ValueError(f"input_ids hold {n_tok} <|image_pad|> tokens but no pixel_values were given")
        elif self.visual is not None and self.training and torch.is_grad_enabled():
            x = x + self._vision_zero(x)
        x = x.transpose(0, 1).contiguous()
        if self.config.fp32_residual_connection:
            x = x.float()
        return emb_mod.embedding_dropout(x)

    def forward(self, input_ids: torch.Tensor | None, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, *, pixel_values: torch.Tensor | None = None,
                image_grid_thw: torch.Tensor | None = None, mm_token_type_ids: torch.Tensor | None = None,
                **kwargs: Any) -> torch.Tensor:
        if position_ids is None:
            if input_ids is None:
                raise ValueError("mrope position_ids [3, b, s] are needed on every pipeline stage: "
                                 "add them with Qwen25VLPolicy.prepare_microbatch")
            position_ids = self.position_ids(input_ids, mm_token_type_ids, image_grid_thw)
        elif position_ids.dim() == 2:
            position_ids = position_ids[None].expand(3, *position_ids.shape)
        decoder_input = None
        if self.pre_process:
            if input_ids is None:
                raise ValueError("the first pipeline stage needs input_ids")
            decoder_input = self.embed(input_ids, pixel_values, image_grid_thw)
        return self.language_model(input_ids, position_ids, attention_mask, decoder_input=decoder_input, **kwargs)


def load_vl_policy(mcore_dir: str | Path, *, params_dtype: torch.dtype = torch.float32,
                   attn_implementation: str | None = None,
                   pipeline_layers: Sequence[int] | None = None,
                   **kw: Any) -> tuple[Qwen25VLPolicy, LMArch]:
    """Build this rank's Qwen2.5-VL policy from an mcore checkpoint: the GPTModel shard, and on the first
    pipeline stage the vision tower from ``vision.safetensors`` (checksums verified).

    The language model gets the checkpoint's pipeline split (manifest ``pipeline_layers``, even for
    old manifests; see :func:`mixed_r1.models.config.resolve_pipeline_layers`) unless
    ``pipeline_layers`` asks for another, which then fails naming both splits."""
    mcore_dir = Path(mcore_dir)
    man = C.read_manifest(mcore_dir)
    arch = arch_from_hf_config(man["hf_config"])
    if not arch.is_vl:
        raise C.CheckpointError(f"{mcore_dir}: model_type={arch.model_type!r} is not a vision-language model")
    layers = C.manifest_pipeline_layers(man, arch) if pipeline_layers is None else pipeline_layers
    lm = build_gpt_model(arch, params_dtype=params_dtype, pipeline_layers=layers, **kw)
    load_mcore_shard(lm, mcore_dir)
    visual = None
    if state.is_first_stage():
        if C.VISION_FILE not in man["files"]:
            raise C.CheckpointError(f"{mcore_dir}: no {C.VISION_FILE} in the manifest")
        visual = build_vision_tower(man["hf_config"], dtype=params_dtype, attn_implementation=attn_implementation)
        tensors = {n: C.read_verified(mcore_dir, man, C.VISION_FILE, n) for n in man["files"][C.VISION_FILE]}
        load_vision_state(visual, tensors, str(mcore_dir / C.VISION_FILE))
    return Qwen25VLPolicy(lm, arch, man["hf_config"], visual), arch


def vision_from_hf_model(hf_model: torch.nn.Module, *, dtype: torch.dtype = torch.float32,
                         attn_implementation: str | None = None) -> torch.nn.Module:
    """A copy of an HF ``Qwen2_5_VLForConditionalGeneration``'s vision tower (for policies built in memory)."""
    src = hf_model.model.visual if hasattr(hf_model, "model") else hf_model.visual
    visual = build_vision_tower(hf_model.config, dtype=dtype, attn_implementation=attn_implementation,
                                device=next(src.parameters()).device)
    load_vision_state(visual, {"model.visual." + k: v.to(dtype) for k, v in src.state_dict().items()}, "hf model")
    return visual

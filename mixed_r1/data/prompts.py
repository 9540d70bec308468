"""Render samples into Qwen2.5-VL chat prompts and batch them with their pixel values.

Grounding boxes: a Qwen2.5-VL model reads and writes boxes in absolute pixels of the image
*after* the processor's resize (``smart_resize``: both sides multiples of
``patch_size * merge_size`` within ``[min_pixels, max_pixels]``). A box ``[x1, y1, x2, y2]`` in
the original ``W x H`` image becomes ``[x1 W'/W, y1 H'/H, x2 W'/W, y2 H'/H]`` in the resized
``W' x H'`` image; :func:`rescale_box` does that, :func:`resized_hw` computes ``(H', W')``
with the processor's own ``smart_resize`` and settings.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .schema import LETTERS, Sample, format_box

THINK_INSTRUCTION = ("Output the thinking process in <think> </think> and the final answer in "
                     "<answer> </answer> tags.")
TASK_HINTS = {
    "yes_no": "Answer with yes or no.",
    "multiple_choice": "Answer with the option's letter.",
    "chart": "Answer with a single number or word.",
    "math": "Give the final answer as a number or a LaTeX expression.",
    "grounding": ("Give the bounding box as [x1, y1, x2, y2] in absolute pixel coordinates of "
                  "the image."),
    "open_ended": "Answer in one or two sentences.",
}


def question_text(sample: Sample, instruction: str = THINK_INSTRUCTION) -> str:
    """The question, its options (``A. text`` lines), the task's answer-format hint and the
    ``instruction`` (default :data:`THINK_INSTRUCTION`; ``""``: none)."""
    parts = [sample.question.strip()]
    if sample.options:
        parts.append("Options:\n" + "\n".join(f"{LETTERS[i]}. {o}"
                                              for i, o in enumerate(sample.options)))
    if TASK_HINTS.get(sample.task_type):  # a user's task type has no built-in hint
        parts.append(TASK_HINTS[sample.task_type])
    if instruction:
        parts.append(instruction)
    return "\n".join(parts)


def build_messages(sample: Sample, system: str | None = None,
                   instruction: str = THINK_INSTRUCTION) -> list[dict]:
    """Chat messages for ``sample``: its own ``messages`` when given, else one user turn.

    The user turn holds one ``{"type": "image"}`` entry per image, then the text of
    :func:`question_text`; a sample without images gets that text as a plain string, which every
    chat template renders (a text-only LM's template, e.g. SmolLM2's, concatenates ``content``
    as a string; Qwen2.5-VL's renders a string and a one-text-part list alike). A sample's own
    messages get the instruction appended to the last user turn's text if it is not there yet.
    ``system``: a system turn first (unless the messages have one); ``instruction``: the text
    every question ends with (default :data:`THINK_INSTRUCTION`, ``""`` for none).
    """
    if sample.messages:
        msgs = copy.deepcopy(sample.messages)
        last = next((m for m in reversed(msgs) if m.get("role") == "user"), None)
        if instruction and last is not None and instruction not in str(last.get("content")):
            if isinstance(last["content"], str):
                last["content"] = last["content"].rstrip() + "\n" + instruction
            else:
                last["content"].append({"type": "text", "text": instruction})
    elif not sample.images:
        msgs = [{"role": "user", "content": question_text(sample, instruction)}]
    else:
        content: list[dict] = [{"type": "image"} for _ in sample.images]
        content.append({"type": "text", "text": question_text(sample, instruction)})
        msgs = [{"role": "user", "content": content}]
    if system is not None and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


PROMPT_TEMPLATE_FILE = "prompt_template.json"


@dataclass(frozen=True)
class PromptTemplate:
    """How a run turns a sample into chat messages: an optional ``system_prompt`` (a system turn
    before the user's) and the ``instruction`` every question ends with (default: Mixed-R1's
    :data:`THINK_INSTRUCTION`, whose ``<think>``/``<answer>`` tags the format reward checks;
    ``""``: none). Set in a config as ``data.system_prompt`` / ``data.instruction``; a run's
    export saves it (:data:`PROMPT_TEMPLATE_FILE`) and ``mixed-r1 eval`` reads it back, so an
    evaluation prompts as training did."""

    system_prompt: str | None = None
    instruction: str = THINK_INSTRUCTION

    @classmethod
    def from_config(cls, data_cfg: Any) -> PromptTemplate:
        """From a :class:`~mixed_r1.config.DataConfig` (``instruction: null`` = the default)."""
        instruction = getattr(data_cfg, "instruction", None)
        return cls(getattr(data_cfg, "system_prompt", None),
                   THINK_INSTRUCTION if instruction is None else instruction)

    def messages(self, sample: Sample) -> list[dict]:
        """:func:`build_messages` with this template."""
        return build_messages(sample, self.system_prompt, self.instruction)

    def save(self, model_dir: str | Path) -> Path:
        """Write ``model_dir/prompt_template.json``; returns its path."""
        import json

        from mixed_r1.atomic import write_text_atomic

        return write_text_atomic(Path(model_dir) / PROMPT_TEMPLATE_FILE, json.dumps(
            {"system_prompt": self.system_prompt, "instruction": self.instruction}, indent=2))

    @classmethod
    def load(cls, model_dir: str | Path) -> PromptTemplate:
        """The template saved in ``model_dir``, else the default one. A file that is not a JSON
        object of strings raises :class:`~mixed_r1.data.schema.DataError` naming it."""
        import json

        from .schema import DataError

        f = Path(model_dir) / PROMPT_TEMPLATE_FILE
        if not f.is_file():
            return cls()
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"not a readable JSON file: {exc}", file=str(f)) from None
        if (not isinstance(d, dict) or not isinstance(d.get("instruction", ""), str)
                or not isinstance(d.get("system_prompt"), (str, type(None)))):
            raise DataError("expected {\"system_prompt\": string or null, \"instruction\": "
                            "string}", file=str(f))
        return cls(d.get("system_prompt"), d.get("instruction", THINK_INSTRUCTION))


def render_prompt(sample: Sample, processor_or_tokenizer: Any, system: str | None = None,
                  instruction: str = THINK_INSTRUCTION) -> str:
    """The chat-template text (with the generation prompt) of ``sample``
    (:func:`mixed_r1.models.processor.chat_prompt` of :func:`build_messages`)."""
    from mixed_r1.models.processor import chat_prompt

    return chat_prompt(processor_or_tokenizer, build_messages(sample, system, instruction))


# ------------------------------------------------------------------------- boxes
def _image_processor(processor: Any) -> Any:
    return getattr(processor, "image_processor", processor)


def resized_hw(height: int, width: int, processor: Any) -> tuple[int, int]:
    """``(H', W')`` the processor resizes a ``height x width`` image to (its own smart_resize)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    from mixed_r1.models.processor import pixel_budget

    ip = _image_processor(processor)
    min_px, max_px = pixel_budget(ip)
    factor = ip.patch_size * ip.merge_size
    return smart_resize(height, width, factor=factor, min_pixels=min_px, max_pixels=max_px)


def rescale_box(box: Sequence[float], src_hw: tuple[int, int],
                dst_hw: tuple[int, int]) -> list[float]:
    """Scale ``[x1, y1, x2, y2]`` from a ``src`` (H, W) image to a ``dst`` (H, W) image."""
    (sh, sw), (dh, dw) = src_hw, dst_hw
    fx, fy = dw / sw, dh / sh
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * fx, y1 * fy, x2 * fx, y2 * fy]


def image_hw(path: str) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.height, im.width


def model_frame_sample(sample: Sample, processor: Any) -> Sample:
    """A copy of ``sample`` whose grounding box is in the processor's resized pixel frame.

    The box refers to the first image. Other task types are returned unchanged (same object).
    """
    if sample.task_type != "grounding" or not sample.images:
        return sample
    h, w = image_hw(sample.images[0])
    box = [round(v, 2) for v in rescale_box(sample.solution, (h, w), resized_hw(h, w, processor))]
    out = copy.copy(sample)
    out.solution = box
    out.meta = {**sample.meta, "original_box": list(sample.solution), "original_hw": [h, w]}
    return out


# ------------------------------------------------------------------------- collator
@dataclass
class Collator:
    """Batch samples into processor inputs for generation (left padding).

    Returns the tensors of :func:`mixed_r1.models.processor.encode_prompts` (``input_ids``,
    ``attention_mask``, ``pixel_values``, ``image_grid_thw`` when any image) plus ``prompts``
    (texts), ``samples`` (grounding boxes
    rescaled to the processor's frame, see :func:`model_frame_sample`) and ``solutions``.
    """

    processor: Any
    system: str | None = None
    max_prompt_length: int | None = None

    def __call__(self, samples: Sequence[Sample]) -> dict:
        from mixed_r1.models.processor import encode_prompts

        texts = [render_prompt(s, self.processor, self.system) for s in samples]
        batch = encode_prompts(self.processor, texts, [p for s in samples for p in s.images])
        if self.max_prompt_length is not None and batch["input_ids"].shape[1] > self.max_prompt_length:
            raise ValueError(f"prompt of {batch['input_ids'].shape[1]} tokens exceeds "
                             f"max_prompt_length={self.max_prompt_length}")
        framed = [model_frame_sample(s, self.processor) for s in samples]
        batch.update(prompts=texts, samples=framed, solutions=[s.solution for s in framed])
        return batch


# ------------------------------------------------------------------------- training rows
def completion_rows(completions: Sequence[Sequence[int]], pad_id: int) -> tuple[Any, Any]:
    """``targets`` [B, T] int64 (right-padded with ``pad_id``) and ``mask`` [B, T] float32 (1 on
    completion tokens) of ragged completions; ``T`` the longest (at least 1)."""
    import torch

    B = len(completions)
    T = max(1, max((len(c) for c in completions), default=0))
    targets = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.float32)
    for i, ids in enumerate(completions):
        targets[i, :len(ids)] = torch.tensor(list(ids), dtype=torch.long)
        mask[i, :len(ids)] = 1.0
    return targets, mask


def append_completions(enc: dict, completions: Sequence[Sequence[int]], pad_id: int
                       ) -> tuple[dict, Any, Any]:
    """Left-padded prompt tensors ``enc`` (``input_ids``, ``attention_mask`` [B, S], optionally
    ``mm_token_type_ids``) with each row's completion appended right-padded: the padded training
    layout. Returns (inputs [B, S + T], targets, mask) as :func:`completion_rows` gives them."""
    import torch

    targets, mask = completion_rows(completions, pad_id)
    enc = dict(enc)
    enc["input_ids"] = torch.cat([enc["input_ids"], targets], dim=1)
    enc["attention_mask"] = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    if "mm_token_type_ids" in enc:  # text tokens are type 0 (needed for 3-D rope positions)
        enc["mm_token_type_ids"] = torch.cat(
            [enc["mm_token_type_ids"], torch.zeros_like(targets, dtype=enc["mm_token_type_ids"].dtype)], 1)
    return enc, targets, mask


def encode_rows(processor: Any, prompt_texts: Sequence[str], images: Sequence[Sequence[Any]],
                completions: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu"
                ) -> tuple[dict, Any, Any]:
    """Processor inputs for ``prompt + completion`` rows, plus ``targets`` and ``mask`` [B, T].

    Prompts are rendered texts (the chat template with the generation prompt) and are encoded
    exactly as the generators encode them (:func:`mixed_r1.models.processor.encode_prompts`, left
    padding); ``images``: each row's images (paths or PIL images); completions are appended
    right-padded with ``pad_id`` (:func:`append_completions`). ``targets`` [B, T] int64, ``mask``
    [B, T] float32 (1 on completion tokens), ``T`` the longest completion; everything moved to
    ``device``.
    """
    import torch

    from mixed_r1.models.processor import encode_prompts

    enc = encode_prompts(processor, prompt_texts, [im for row in images for im in row])
    enc, targets, mask = append_completions(enc, completions, pad_id)
    enc = {k: v.to(device) if torch.is_tensor(v) else v for k, v in enc.items()}
    return enc, targets.to(device), mask.to(device)


def pack_rows(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
              pad_id: int) -> tuple[dict, Any, Any, Any]:
    """Token-id rows ``prompt + completion`` packed into one sequence without padding, in order.

    Returns ``inputs`` = ``{"input_ids": [1, N], "position_ids": [1, N]}`` int64 with positions
    restarting at 0 on every row and no attention mask (transformers then confines attention to
    each row: ``masking_utils.find_packed_sequence_indices``), ``targets`` and ``mask`` [B, T] as
    :func:`completion_rows` gives them, and ``logit_index`` [B, T] int64: the packed position whose
    logits score ``targets[b, t]`` (the token before it; 0 where ``mask`` is 0). Raises
    ValueError for an empty prompt (nothing to score the first token from)."""
    import torch

    targets, mask = completion_rows(completions, pad_id)
    index = torch.zeros_like(targets)
    ids: list[int] = []
    pos: list[int] = []
    for b, (prompt, comp) in enumerate(zip(prompts, completions)):
        if not prompt:
            raise ValueError(f"row {b}: empty prompt")
        first = len(ids) + len(prompt) - 1  # the prompt's last token scores the first target
        ids += [int(t) for t in prompt] + [int(t) for t in comp]
        pos += list(range(len(prompt) + len(comp)))
        index[b, :len(comp)] = torch.arange(first, first + len(comp))
    inputs = {"input_ids": torch.tensor([ids], dtype=torch.long),
              "position_ids": torch.tensor([pos], dtype=torch.long)}
    return inputs, targets, mask, index


def encode_packed_rows(processor: Any, prompt_texts: Sequence[str],
                       completions: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu"
                       ) -> tuple[dict, Any, Any, Any]:
    """``prompt + completion`` rows packed into one sequence without padding (verl's
    ``use_remove_padding``, TRL's padding-free batches), for text-only LMs: :func:`pack_rows` of
    each prompt's :func:`mixed_r1.models.processor.prompt_token_ids` (the ids the padded path and
    the generators use; each distinct prompt encoded once), moved to ``device``."""
    inputs, targets, mask, index = pack_rows(_prompt_ids(processor, prompt_texts), completions,
                                             pad_id)
    return _to(device, inputs, targets, mask, index)


def _prompt_ids(processor: Any, prompt_texts: Sequence[str]) -> list[list[int]]:
    """Each row's :func:`~mixed_r1.models.processor.prompt_token_ids`, each distinct prompt
    encoded once."""
    from mixed_r1.models.processor import prompt_token_ids

    encoded = {t: prompt_token_ids(processor, t) for t in dict.fromkeys(prompt_texts)}
    return [encoded[t] for t in prompt_texts]


def _to(device: Any, inputs: dict, *tensors: Any) -> tuple:
    """``inputs``' tensors and ``tensors`` moved to ``device``."""
    return ({k: v.to(device) for k, v in inputs.items()}, *(t.to(device) for t in tensors))


def pack_shared_prefix_rows(prompts: Sequence[Sequence[int]],
                            completions: Sequence[Sequence[int]], pad_id: int
                            ) -> tuple[dict, Any, Any, Any, int]:
    """Rows grouped by identical prompt, each group's prompt computed once (shared-prefix forward).

    GRPO samples a group of completions per prompt; the padded layout repeats the prompt in
    every row. Here each distinct prompt is one batch row ``[prompt, c_1, ..., c_k]`` (the
    completions of the rows with that prompt, in the given order), right-padded to the longest
    group: completion ``c_j`` sits at positions ``P .. P + len(c_j) - 1`` (as if it followed the
    prompt alone) and attends to the prompt and causally to itself, never to another completion;
    the prompt attends causally to itself. Every completion's log-probs and the loss's gradient
    are those of the padded layout (the prompt's hidden states are the same function of the
    weights in every row; their gradient is the sum over the group's completions) — the
    Shared-Prefix Forward of Prefix Grouper (Liu et al., 2025, arXiv:2506.05433; verl's
    ``use_prefix_grouper``), here as a block attention mask.

    Returns ``inputs`` = ``{"input_ids": [n, W], "position_ids": [n, W] int64, "attention_mask":
    [n, 1, W, W] bool}`` (True: query may attend key; a padding position attends only to itself
    and earlier padding, so no row of the softmax is empty) for ``n`` distinct prompts in order
    of first appearance; ``targets`` and ``mask`` [B, T] in the given row order as
    :func:`completion_rows` gives them; ``logit_index`` [B, T] int64, the position in the
    flattened ``[n · W]`` inputs whose logits score ``targets[b, t]`` (0 where ``mask`` is 0);
    and the number of real (non-padding) positions. Raises ValueError for an empty prompt."""
    import torch

    targets, mask = completion_rows(completions, pad_id)
    index = torch.zeros_like(targets)
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, prompt in enumerate(prompts):
        if not prompt:
            raise ValueError(f"row {b}: empty prompt")
        groups.setdefault(tuple(int(t) for t in prompt), []).append(b)
    width = max(len(p) + sum(len(completions[b]) for b in rows) for p, rows in groups.items())
    n = len(groups)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)  # -1 padding, 0 prompt, j > 0 completion j
    real = 0
    for g, (prompt, rows) in enumerate(groups.items()):
        P = len(prompt)
        ids[g, :P] = torch.tensor(prompt)
        pos[g, :P] = torch.arange(P)
        seg[g, :P] = 0
        at = P
        for j, b in enumerate(rows, start=1):
            comp = [int(t) for t in completions[b]]
            L = len(comp)
            if L:
                ids[g, at:at + L] = torch.tensor(comp)
                pos[g, at:at + L] = torch.arange(P, P + L)
                seg[g, at:at + L] = j
                # targets[b, 0] is scored by the prompt's last token, targets[b, t] by c_j[t-1]
                index[b, 0] = g * width + P - 1
                index[b, 1:L] = g * width + torch.arange(at, at + L - 1)
            at += L
        real += at
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & ((q == k) | ((k == 0) & (q > 0)))
    inputs = {"input_ids": ids, "position_ids": pos, "attention_mask": allowed[:, None]}
    return inputs, targets, mask, index, real


def encode_shared_prefix_rows(processor: Any, prompt_texts: Sequence[str],
                              completions: Sequence[Sequence[int]], pad_id: int,
                              device: Any = "cpu") -> tuple[dict, Any, Any, Any, int]:
    """:func:`pack_shared_prefix_rows` of each row's :func:`~mixed_r1.models.processor.prompt_token_ids`
    (text LMs; each distinct prompt encoded once), tensors moved to ``device``."""
    inputs, targets, mask, index, real = pack_shared_prefix_rows(
        _prompt_ids(processor, prompt_texts), completions, pad_id)
    return (*_to(device, inputs, targets, mask, index), real)


def rows_tensor(values: Sequence[Sequence[float]], T: int):
    """Ragged per-token floats → [B, T] float32 tensor (zero-padded, cut at ``T``)."""
    import torch

    out = torch.zeros(len(values), T, dtype=torch.float32)
    for i, v in enumerate(values):
        n = min(len(v), T)
        if n:
            out[i, :n] = torch.tensor(list(v)[:n], dtype=torch.float32)
    return out


__all__ = ["PROMPT_TEMPLATE_FILE", "THINK_INSTRUCTION", "Collator", "PromptTemplate", "append_completions", "build_messages", "completion_rows",
           "encode_packed_rows", "encode_rows", "format_box", "pack_rows",
           "question_text", "render_prompt", "rescale_box", "resized_hw", "model_frame_sample",
           "rows_tensor"]

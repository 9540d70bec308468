"""Cutting an update's rows into micro-batches by a token budget (dynamic batch size).

A padded micro-batch of ``n`` rows costs ``n · max(row lengths)`` positions in every layer; rows of
similar length wasted less. :func:`token_budget_micro_batches` sorts the rows by length (longest
first, ties in the given order) and closes a micro-batch when one more row would push its padded
size past ``max_tokens`` or its row count past ``max_rows`` — the greedy first-fit of verl's
``use_dynamic_bsz`` (``ppo_max_token_len_per_gpu``) and of megatron's token-budget batching,
here over padded rows. The gradient of an update does not depend on how its rows are grouped
(the loss is aggregated exactly across micro-batches), so only the cost changes.

Pure Python; no torch.
"""
from __future__ import annotations

from collections.abc import Sequence


Length = int | Sequence[int]


def _parts(length: Length) -> tuple[int, ...]:
    return (int(length),) if isinstance(length, int) else tuple(int(x) for x in length)


def _width(parts: Sequence[tuple[int, ...]]) -> int:
    """Padded length of rows laid out part by part (each part padded to its own maximum)."""
    return sum(max(col) for col in zip(*parts)) if parts else 0


def _cost(parts: Sequence[tuple[int, ...]], packed: bool) -> int:
    """Positions a micro-batch of these rows holds: rows × width, or Σ lengths when packed."""
    return sum(sum(p) for p in parts) if packed else len(parts) * _width(parts)


def token_budget_micro_batches(rows: Sequence[int], lengths: Sequence[Length], max_tokens: int,
                               max_rows: int | None = None, *, packed: bool = False
                               ) -> list[list[int]]:
    """Micro-batches (lists of row ids) of ``rows`` whose padded size ``len(mb) · width`` (with
    ``packed``: the packed length, ``Σ`` row lengths) is at most ``max_tokens``, longest rows first.

    ``lengths[i]``: the tokens of row ``rows[i]``, an int, or a tuple of parts padded separately
    (``(prompt, completion)``: prompts are left-padded to the longest prompt and completions
    right-padded to the longest completion, so a micro-batch's width is the sum of the parts'
    maxima, not the longest row). A row longer than the budget gets a micro-batch of its own
    (never dropped). Every row appears exactly once. Raises ValueError on a budget < 1,
    ``max_rows`` < 1 or mismatched lengths."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if len(rows) != len(lengths):
        raise ValueError(f"{len(rows)} rows but {len(lengths)} lengths")
    parts = [_parts(x) for x in lengths]
    order = sorted(range(len(rows)), key=lambda i: -sum(parts[i]))  # stable: ties keep order
    out: list[list[int]] = []
    cur: list[int] = []
    cur_parts: list[tuple[int, ...]] = []
    for i in order:
        full = max_rows is not None and len(cur) == max_rows
        if cur and (full or _cost(cur_parts + [parts[i]], packed) > max_tokens):
            out.append(cur)
            cur, cur_parts = [], []
        cur.append(rows[i])
        cur_parts.append(parts[i])
    if cur:
        out.append(cur)
    return out


def shared_prefix_positions(prompts: Sequence[object], lengths: Sequence[Length]) -> int:
    """Positions of one micro-batch in the shared-prefix layout
    (:func:`mixed_r1.data.prompts.pack_shared_prefix_rows`): one row per distinct prompt,
    ``prompt + Σ completions`` of its rows, padded to the longest such row. ``lengths[i]``:
    ``(prompt, completion)`` tokens of row ``i``, ``prompts[i]`` its prompt's key."""
    width: dict[object, int] = {}
    for key, length in zip(prompts, lengths):
        p, c = _parts(length)
        width[key] = width.get(key, p) + c
    return len(width) * max(width.values(), default=0)


def shared_prefix_micro_batches(rows: Sequence[int], prompts: Sequence[object],
                                lengths: Sequence[Length], max_tokens: int,
                                max_rows: int | None = None) -> list[list[int]]:
    """Micro-batches of ``rows``, cut in the given order (rows of one prompt kept together by the
    caller), each holding at most ``max_tokens`` positions in the shared-prefix layout
    (:func:`shared_prefix_positions`) and at most ``max_rows`` rows. A prompt's rows that do not
    fit continue in the next micro-batch (the prompt is then computed once more there); a row over
    the budget alone gets a micro-batch of its own. Every row appears exactly once, in order.
    Raises ValueError on a budget < 1, ``max_rows`` < 1 or mismatched lengths."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if not len(rows) == len(prompts) == len(lengths):
        raise ValueError(f"{len(rows)} rows but {len(prompts)} prompts and {len(lengths)} lengths")
    out: list[list[int]] = []
    cur: list[int] = []
    keys: list[object] = []
    lens: list[Length] = []
    for row, key, length in zip(rows, prompts, lengths):
        full = max_rows is not None and len(cur) == max_rows
        if cur and (full or shared_prefix_positions(keys + [key], lens + [length]) > max_tokens):
            out.append(cur)
            cur, keys, lens = [], [], []
        cur.append(row)
        keys.append(key)
        lens.append(length)
    if cur:
        out.append(cur)
    return out


def padded_positions(batches: Sequence[Sequence[int]], length_of: dict[int, Length], *,
                     packed: bool = False) -> int:
    """Positions the micro-batches hold: ``Σ len(mb) · width(mb)`` padded (see
    :func:`token_budget_micro_batches` for the width of rows with parts), ``Σ`` lengths packed."""
    return sum(_cost([_parts(length_of[r]) for r in mb], packed) for mb in batches if mb)


__all__ = ["padded_positions", "shared_prefix_micro_batches", "shared_prefix_positions",
           "token_budget_micro_batches"]

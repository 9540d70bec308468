"""Format reward: the completion is exactly ``<think>…</think><answer>…</answer>``."""
from __future__ import annotations

import re

from mixed_r1.rewards.parsing import as_text

_TAG_RE = re.compile(r"</?(?:think|answer)\s*>", re.IGNORECASE)
_EXPECTED = ("<think>", "</think>", "<answer>", "</answer>")


def format_reward(completion: str, *, require_answer: bool = False) -> float:
    """1.0 iff the completion is one ``<think>…</think>`` followed by one ``<answer>…</answer>``.

    Whitespace is allowed before, between and after the two blocks, nothing else; neither
    block may contain another think/answer tag (any case). Tags are matched exactly, in
    lower case, as the prompt writes them. One linear scan over the tags.
    ``require_answer``: an answer block holding only whitespace earns 0 (``<answer></answer>``
    would otherwise pay the format reward for committing to nothing).
    """
    text = as_text(completion)
    tags = list(_TAG_RE.finditer(text))
    if tuple(m.group(0) for m in tags) != _EXPECTED:
        return 0.0
    think_open, think_close, answer_open, answer_close = tags
    outside = (text[: think_open.start()], text[think_close.end(): answer_open.start()],
               text[answer_close.end():])
    if require_answer and not text[answer_open.end(): answer_close.start()].strip():
        return 0.0
    return 1.0 if all(not part.strip() for part in outside) else 0.0

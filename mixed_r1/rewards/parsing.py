"""Text parsing shared by the rewards: the answer span, numbers and boxes.

Everything here reads untrusted model output: it never evaluates text, never raises on it,
and bounds its work (regexes are linear; inputs are truncated to ``MAX_CHARS``).
"""
from __future__ import annotations

import math
import re
import unicodedata

MAX_CHARS = 100_000  # longer completions are scored on their first MAX_CHARS characters

_WS_RE = re.compile(r"\s+")


def as_text(value: object) -> str:
    """Model output as a bounded ``str`` (``None`` and non-strings become ``""``)."""
    if not isinstance(value, str):
        return ""
    return value[:MAX_CHARS]


def answer_span(completion: object) -> tuple[str, bool]:
    """``(text, tagged)``: the text inside the last ``<answer>…</answer>`` (stripped) and True, or
    the whole completion (stripped) and False when it has no closed answer tag.

    Which answer counts (the rule every reward follows): with a tag, the tag's content; without
    one, the answer the completion states *last* (the last yes/no word, the last sentence naming
    an option letter, the last number, the last box) — a model that reasons "yes? … no" has
    committed to "no". Each reward's docstring says what "last" means for it.
    """
    text = as_text(completion)
    lower = text.lower()  # same length as text for these ASCII tags' positions
    close = lower.rfind("</answer>")
    start = lower.rfind("<answer>", 0, close) if close >= 0 else -1
    if start < 0 or len(lower) != len(text):
        return _answer_by_regex(text)
    return text[start + len("<answer>"):close].strip(), True


def extract_answer(completion: object) -> str:
    """The text inside the last ``<answer>…</answer>``, else the whole completion; stripped."""
    return answer_span(completion)[0]


_ANSWER_RE = re.compile(r"<answer>((?:(?!<answer>).)*?)</answer>", re.DOTALL | re.IGNORECASE)
_TAG_RE = re.compile(r"</?(?:think|answer)\s*>", re.IGNORECASE)


def _answer_by_regex(text: str) -> tuple[str, bool]:
    """Fallback when lower() changes lengths (rare unicode) or no closed span exists."""
    spans = _ANSWER_RE.findall(text)
    return (spans[-1].strip(), True) if spans else (text.strip(), False)


def strip_tags(text: str) -> str:
    """``text`` with its think/answer tags replaced by line breaks (for untagged answers)."""
    return _TAG_RE.sub("\n", text)


def normalize_text(text: str) -> str:
    """NFKC, lower case, punctuation and surrounding whitespace dropped, inner runs collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return _WS_RE.sub(" ", text).strip()


# ---------------------------------------------------------------------------------- numbers
# A number as people and charts write it: sign, thousands separators, decimals, exponent.
_NUM = r"[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+"
NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUM})(?![\d])")
_CURRENCY = "$€£¥₹"
# the whole text is one number with an optional currency before and a percent/unit after
_WHOLE_NUMBER_RE = re.compile(
    rf"^\s*(?:approximately|about|around|~|≈)?\s*[{_CURRENCY}]?\s*(?P<num>{_NUM})\s*"
    rf"(?P<pct>%|percent\b)?\s*(?P<unit>[^\d\s][^\d]{{0,20}})?\s*$",
    re.IGNORECASE,
)


def to_float(token: str) -> float | None:
    """Parse one number token (``1,234.5``, ``−3``, ``1e3``); ``None`` if not a finite number."""
    token = token.replace(",", "").replace("−", "-")
    try:
        value = float(token)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def parse_whole_number(text: str) -> tuple[float, bool] | None:
    """``(value, has_percent)`` when the whole text is one finite number (currency, ``%`` or
    a short unit allowed around it), else ``None``."""
    match = _WHOLE_NUMBER_RE.match(as_text(text))
    if not match:
        return None
    value = to_float(match["num"])
    return None if value is None else (value, bool(match["pct"]))


def parse_number(text: str) -> tuple[float, bool] | None:
    """The number ``text`` states, and whether it carries a percent sign.

    The whole text when it is one number (see :func:`parse_whole_number`), else the last
    number in the text. ``None`` if it has no finite number.
    """
    text = as_text(text)
    if _WHOLE_NUMBER_RE.match(text):
        return parse_whole_number(text)
    last = None
    for last in NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    value = to_float(last.group(0))
    if value is None:
        return None
    tail = text[last.end():last.end() + 9].lstrip().lower()
    return value, tail.startswith("%") or tail.startswith("percent")


# ------------------------------------------------------------------------------------ boxes
# Numbers in boxes may be nan/inf: such a box is found (it is the first box) and then scores 0.
_BN = r"[-+]?(?:nan|inf(?:inity)?|\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
_LIST_BOX_RE = re.compile(rf"\[\s*({_BN})\s*,\s*({_BN})\s*,\s*({_BN})\s*,\s*({_BN})\s*\]", re.I)
_PAIR_BOX_RE = re.compile(
    rf"\(\s*({_BN})\s*,\s*({_BN})\s*\)\s*(?:,|to|and|-|–)?\s*\(\s*({_BN})\s*,\s*({_BN})\s*\)", re.I
)

Box = tuple[float, float, float, float]


def _as_floats(groups: tuple[str, ...]) -> tuple[float, ...] | None:
    try:
        return tuple(float(g) for g in groups)
    except (ValueError, OverflowError):
        return None


def find_first_box(text: str) -> tuple[float, ...] | None:
    """The first box written in ``text``: ``[x1, y1, x2, y2]`` (also inside a Qwen2.5-VL
    ``{"bbox_2d": [...]}``) or ``(x1, y1), (x2, y2)``. Returned as read, unvalidated."""
    text = as_text(text)
    found = [m for m in (_LIST_BOX_RE.search(text), _PAIR_BOX_RE.search(text)) if m]
    if not found:
        return None
    first = min(found, key=lambda m: m.start())
    return _as_floats(first.groups())


def find_last_box(text: str) -> tuple[float, ...] | None:
    """The last box written in ``text`` (the forms of :func:`find_first_box`), unvalidated."""
    text = as_text(text)
    last = None
    for regex in (_LIST_BOX_RE, _PAIR_BOX_RE):
        for m in regex.finditer(text):
            if last is None or m.start() > last.start():
                last = m
    return _as_floats(last.groups()) if last is not None else None


def valid_box(box: object) -> Box | None:
    """``box`` as four finite floats with x1 < x2 and y1 < y2, else ``None``."""
    try:
        x1, y1, x2, y2 = (float(v) for v in box)  # type: ignore[union-attr]
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x1 >= x2 or y1 >= y2:
        return None
    return x1, y1, x2, y2

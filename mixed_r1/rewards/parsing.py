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
# A number token is a maximal run of digits and separators that ends in a digit, so "3,5" is one
# token (never "3" then "5"); number_text decides how it reads, or that it reads as no number.
_SPACES = "\u00a0\u202f\u2009"  # no-break, narrow no-break and thin space: thousands only
_NUM = rf"[-+−]?\d(?:[\d,.{_SPACES}]*\d)?(?:[eE][-+]?\d+)?|[-+−]?\.\d+"
# plus plain-space thousands (``1 234``, ``1 234,5``): where the whole answer is the number
_WHOLE_NUM = rf"[-+−]?\d{{1,3}}(?: \d{{3}})++(?:[.,]\d+)?(?:[eE][-+]?\d+)?|{_NUM}"
NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUM})")
_DECIMAL_TOKEN_RE = re.compile(r"\d{3}[.,]\d+(?:[eE][-+]?\d+)?")
_CURRENCY = "$€£¥₹"
# the whole text is one number with an optional currency before and a percent/unit after
_WHOLE_NUMBER_RE = re.compile(
    rf"^\s*+(?:(?:approximately|about|around|~|≈)\s*+)?(?:[{_CURRENCY}]\s*+)?(?P<num>{_WHOLE_NUM})"
    rf"\s*(?P<pct>%|percent\b)?\s*(?P<unit>[^\d\s][^\d]{{0,20}})?\s*$",
    re.IGNORECASE,
)
_EXPONENT_RE = re.compile(r"[eE][-+]?\d+$")
# (pattern of the unsigned mantissa, its thousands separator, its decimal mark)
_NUMBER_FORMS = [
    (re.compile(r"\d+(?:\.\d+)?|\.\d+"), "", "."),                        # 1234.5, .5
    (re.compile(r"[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?"), ",", "."),           # 1,234 / 1,234.5
    (re.compile(r"[1-9]\d?(?:,\d{2})+,\d{3}(?:\.\d+)?"), ",", "."),         # 12,34,567 (lakh)
    (re.compile(r"\d+,\d+"), "", ","),                                     # 3,5 / 0,125
    (re.compile(r"[1-9]\d{0,2}(?:\.\d{3})+,\d+"), ".", ","),                # 1.234,5
    (re.compile(r"[1-9]\d{0,2}(?:\.\d{3}){2,}"), ".", ""),                   # 1.234.567
] + [
    (re.compile(rf"[1-9]\d{{0,2}}(?:{sp}\d{{3}})+(?:{dec}\d+)?"), sp, dec)     # 1 234,5 / 1 234.5
    for sp in (" ", *_SPACES) for dec in (",", ".")
]


def number_text(token: str) -> str | None:
    """A number token in plain form (``-1234.5``: no separators, ``.`` as the decimal mark), or
    ``None`` when it is not a number this rule reads unambiguously.

    The rule (for every reward that reads a number from a completion):

    * a point is a decimal point and commas group thousands in threes: ``1234.5``, ``1,234``,
      ``1,234.5``, ``12,345,678``, also Indian lakh grouping ``12,34,567``; ``1,234`` is 1234
      and ``1.234`` is 1.234 (the English reading of these two ambiguous forms);
    * a comma that cannot group thousands is a decimal comma: ``3,5`` is 3.5, ``0,125`` is
      0.125, ``1234,5`` is 1234.5; with points grouping thousands: ``1.234,5``, ``1.234.567``;
    * spaces group thousands: no-break, narrow no-break or thin space anywhere (``1 234,5``), a
      plain space with a decimal part (``1 234,5``, ``1 234.5``) or where the whole answer is the
      number (``1 234``), with either decimal mark;
    * anything else made of digits and separators (``1,234,5``, ``1.234.5``, ``1,23.4``,
      ``10,20,30``) is no number: an answer whose number it is states no number (scored 0), it is
      never read as some of its digits.
    """
    token = token.strip().replace("−", "-")
    sign = ""
    if token[:1] in "+-":
        sign, token = ("-" if token[0] == "-" else ""), token[1:]
    exp = _EXPONENT_RE.search(token)
    exponent = exp.group(0) if exp else ""
    mantissa = token[:exp.start()] if exp else token
    for pattern, thousands, decimal in _NUMBER_FORMS:
        if pattern.fullmatch(mantissa):
            if thousands:
                mantissa = mantissa.replace(thousands, "")
            if decimal == ",":
                mantissa = mantissa.replace(",", ".")
            return sign + mantissa + exponent
    return None


def to_float(token: str) -> float | None:
    """Parse one number token by :func:`number_text`'s rule (``1,234.5``, ``3,5``, ``−3``,
    ``1e3``); ``None`` if it is not a number by that rule or not finite."""
    text = number_text(token)
    if text is None:
        return None
    try:
        value = float(text)
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


def _space_groups_start(text: str, start: int) -> int | None:
    """Where the plain-space thousand groups right before ``text[start:]`` begin (``1 234 ``
    before ``567,5``; ``start`` itself when there are none), or ``None`` when the digits and
    spaces there are no clean grouping (``1234 567,5``, ``12 34 567,5``)."""
    i = start
    while i >= 2 and text[i - 1] == " " and text[i - 2].isdecimal():
        d = i - 1
        while d > 0 and text[d - 1].isdecimal() and i - 1 - d < 4:
            d -= 1
        digits = i - 1 - d
        if digits > 3:
            return None
        i = d
        if digits < 3:  # a leading group of one or two digits ends the grouping
            break
    if i == start:
        return start
    prev = text[i - 1] if i > 0 else ""
    if prev and (prev.isalnum() or prev in "_.," or (prev == " " and text[i - 2].isdecimal())):
        return None
    if prev and prev in "-+−" and not (i >= 2 and (text[i - 2].isalnum() or text[i - 2] == "_")):
        i -= 1
    return i


def last_number(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the last number token in ``text`` (:data:`NUMBER_RE`; a token with a
    decimal part takes the plain-space thousand groups right before it, ``1 234,5``), or
    ``None`` when there is none or the digits before it are no clean grouping. Read it with
    :func:`number_text`, which may still reject it."""
    last = None
    for last in NUMBER_RE.finditer(text):
        pass
    if last is None:
        return None
    start, end = last.span()
    if _DECIMAL_TOKEN_RE.fullmatch(text, start, end):
        begin = _space_groups_start(text, start)
        if begin is None:
            return None
        start = begin
    return start, end


def parse_number(text: str) -> tuple[float, bool] | None:
    """The number ``text`` states, and whether it carries a percent sign.

    The whole text when it is one number (see :func:`parse_whole_number`), else the last
    number in the text (:func:`last_number`). Numbers read by :func:`number_text`'s rule.
    ``None`` if it has no finite number, or the number it states is not one by that rule.
    """
    text = as_text(text)
    if _WHOLE_NUMBER_RE.match(text):
        return parse_whole_number(text)
    span = last_number(text)
    if span is None:
        return None
    value = to_float(text[span[0]:span[1]])
    if value is None:
        return None
    tail = text[span[1]:span[1] + 9].lstrip().lower()
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

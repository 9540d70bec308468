"""LaTeX answer handling shared by the math reward and the math converter (standard library only).

* :func:`last_boxed` — the content of the last box, after the MATH reference's
  ``last_boxed_only_string`` / ``remove_boxed`` conventions (Hendrycks et al. 2021): ``\\boxed{…}``
  with nested braces, ``\\boxed x`` (the text up to the next ``$``), ``\\fbox{…}``; the last box in
  the text wins, whichever command it uses (the reference looks for ``\\fbox`` only when there is
  no ``\\boxed`` at all).
* :func:`last_math_span` — the content of the last ``$…$``, ``$$…$$``, ``\\(…\\)`` or ``\\[…\\]``.
* :func:`normalize_math_answer` — the MATH reference's ``strip_string`` normalisation of a final
  answer (``\\dfrac``→``\\frac``, ``\\left``/``\\right``, degrees, ``\\$``, a trailing
  ``\\text{ unit}``, ``\\%``, ``.5``→``0.5``, a short ``x =`` prefix, ``\\sqrt3``, ``\\frac12``,
  spaces, ``0.5`` and ``a/b`` as fractions). Differences, so that the result stays something
  math-verify parses to the same value: ``\\\\`` is kept (collapsing it breaks matrix rows),
  the space after a command before a letter is kept (``\\le x`` must not become ``\\lex``), a
  bare ``%`` goes like ``\\%`` (it would start a LaTeX comment) and a thin-space thousands
  separator ``1\\,000`` becomes ``1000`` (math-verify reads it as a product, 0).
* :func:`is_bare_expression` — whether a line is an expression rather than prose.
* :func:`join_alternatives` — values joined by a logical or/and in any spelling (``\\lor``,
  ``\\vee``, ``∨``, ``\\land``, ``\\wedge``, ``∧``, ``or``/``and`` inside ``\\text{}``,
  ``\\mathrm{}``, ``\\textrm{}``, ``\\operatorname{}``…, a bare ``or``, with any spacing commands
  around: ``2 \\quad\\text{or}\\quad 3``, ``2 \\,\\text{or}\\, 3``) rewritten as the list ``2 , 3``.
  math-verify already reads ``2 \\text{ or } 3`` as the set {2, 3} (it rewrites ``and``/``or`` and
  ``\\text{ or }`` as commas) but reads ``2 \\lor 3`` as 3 and ``2 \\,\\text{or}\\, 3`` as neither;
  after this every spelling is the set, so offering several values scores 0 against one value
  and 1 against a gold that is that set (``2, 3``, ``x = 2 \\text{ or } x = 3``).

:func:`last_boxed`, :func:`last_math_span`, :func:`is_bare_expression` and
:func:`join_alternatives` read model output: they are linear in their input and never raise. The
normaliser is for golds (data) and never raises.
"""
from __future__ import annotations

import re

_BOX_COMMANDS = ("\\boxed", "\\fbox")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}``, ``\\boxed x`` or ``\\fbox{…}`` in ``text`` (stripped).

    ``None`` when there is no box or the last one is unclosed (MATH reference behaviour: the last
    box decides, an earlier one is not used instead).
    """
    idx, cmd = max((text.rfind(c), c) for c in _BOX_COMMANDS)
    if idx < 0:
        return None
    j = idx + len(cmd)
    n = len(text)
    k = j
    while k < n and text[k] in " \t":
        k += 1
    if k < n and text[k] == "{":
        depth = 0
        for end in range(k, n):
            ch = text[end]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    return text[k + 1:end].strip()
        return None
    if cmd == "\\boxed" and k > j:  # "\boxed 5$": the text up to the next "$" (or line end)
        rest = text[k:]
        cut = min((p for p in (rest.find("$"), rest.find("\n")) if p >= 0), default=len(rest))
        content = rest[:cut].strip()
        return content or None
    return None


def last_math_span(text: str) -> str | None:
    """Content of the last complete ``$…$``, ``$$…$$``, ``\\(…\\)`` or ``\\[…\\]`` (stripped), or
    ``None``. ``\\$`` is an escaped dollar, not a delimiter. One left-to-right scan."""
    last = None
    opened, start = None, 0
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n:
            nxt = text[i + 1]
            if opened is None and nxt in "([":
                opened, start = "\\" + nxt, i + 2
            elif (opened, nxt) in (("\\(", ")"), ("\\[", "]")):
                last, opened = text[start:i], None
            i += 2  # an escaped character (\$, \{, \\ …) is content
            continue
        if ch == "$" and opened in (None, "$", "$$"):
            tok = "$$" if text.startswith("$$", i) else "$"
            if opened is None:
                opened, start = tok, i + len(tok)
                i += len(tok)
            elif opened == "$":  # closes at its first "$" ("$a$$b$" is two spans)
                last, opened = text[start:i], None
                i += 1
            elif tok == "$$":
                last, opened = text[start:i], None
                i += 2
            else:  # a lone "$" inside display math is content
                i += 1
            continue
        i += 1
    return last.strip() if last is not None else None


# ------------------------------------------------------------------ MATH `strip_string` rules
def _remove_right_units(s: str) -> str:
    # "5\text{ cm}" -> "5": the reference drops everything from "\text{ " on
    return s.split("\\text{ ", 1)[0] if "\\text{ " in s else s


def _fix_sqrt(s: str) -> str:
    # "\sqrt3" -> "\sqrt{3}"
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if part and part[0] not in "{[":  # "\sqrt[3]{x}" is left alone
            part = "{" + part[0] + "}" + part[1:]
        out += "\\sqrt" + part
    return out


def _fix_fracs(s: str) -> str:
    # "\frac12" -> "\frac{1}{2}", "\frac1{2}" -> "\frac{1}{2}", "\frac{1}2" -> "\frac{1}{2}"
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            close = _matching_brace(part, 0)
            if close is not None and close + 1 < len(part) and part[close + 1] not in "{":
                part = part[:close + 1] + "{" + part[close + 1] + "}" + part[close + 2:]
            out += part
        elif len(part) >= 2:
            a, b, rest = part[0], part[1], part[2:]
            out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
        else:
            return s  # malformed: leave the whole string as it was (reference behaviour)
    return out


def _matching_brace(s: str, open_idx: int) -> int | None:
    depth = 0
    for i in range(open_idx, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def _fix_a_slash_b(s: str) -> str:
    # "3/4" -> "\frac{3}{4}" when both sides are plain integers
    a, sep, b = s.partition("/")
    if sep and "/" not in b and re.fullmatch(r"-?\d+", a) and re.fullmatch(r"\d+", b):
        return f"\\frac{{{a}}}{{{b}}}"
    return s


_CMD_SPACE_LETTER_RE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])")
_THIN_SPACE_THOUSANDS_RE = re.compile(r"(?<=\d)\\,(?=\d{3}(?!\d))")


def normalize_math_answer(answer: str) -> str:
    """A final answer normalised as the MATH reference's ``strip_string`` does (module doc)."""
    s = str(answer).strip()
    s = s.replace("\n", "").replace("\\!", "")
    s = s.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "").replace("%", "")
    s = _THIN_SPACE_THOUSANDS_RE.sub("", s)  # "1\,000" -> "1000" (math-verify reads 1*0)
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    left, eq, right = s.partition("=")
    if eq and "=" not in right and len(left) <= 2:  # "x = 5", "k=5" -> "5"
        s = right
    s = _fix_sqrt(s)
    s = _CMD_SPACE_LETTER_RE.sub(lambda m: m.group(1) + "\x00", s)
    s = re.sub(r"\s+", "", s).replace("\x00", " ")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


# ------------------------------------------------------------------ expressions vs prose
_TEXT_GROUP_RE = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}")
_WORD_RE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")


def is_bare_expression(text: str) -> bool:
    """True when ``text`` reads as one math expression: no run of three or more letters outside
    LaTeX command names and ``\\text{…}``-like groups (``x^2+2x+1``, ``\\frac{3}{4}``, ``3/4``), as
    opposed to prose (``we get 3 then 5``)."""
    t = _TEXT_GROUP_RE.sub("", text)
    return bool(t.strip()) and _WORD_RE.search(t) is None


# ------------------------------------------------------------------ alternatives: "2 \lor 3"
_TEXT_CMD = (r"\\(?:text(?:rm|normal|it|bf|sf|tt|up)?|math(?:rm|it|bf|sf|tt|normal)|[mh]box"
             r"|operatorname)")
_INNER_SPACE = r"(?:\s|\\[,;:! >]|\\q?quad(?![A-Za-z])|~)*"
_JOINER_RE = re.compile(
    r"\\(?:lor|vee|land|wedge)(?![A-Za-z])|[∨∧]"
    rf"|{_TEXT_CMD}\s*\{{{_INNER_SPACE}(?:or|and){_INNER_SPACE}\}}"
    r"|(?<![A-Za-z\\])or(?![A-Za-z])"
)
# spacing (and commas) around a joiner: whitespace, \, \; \: \! \  \quad \qquad ~ ,
_SPACING_TOKENS = ("\\qquad", "\\quad", "\\,", "\\;", "\\:", "\\!", "\\ ", "\\>", "~", ",")
_LEADING_SPACING_RE = re.compile(r"(?:\s|\\[,;:! >]|\\q?quad(?![A-Za-z])|~|,)*+")


def _strip_trailing_spacing(text: str) -> str:
    end = len(text)
    while end:
        token = next((t for t in _SPACING_TOKENS if text.endswith(t, 0, end)), None)
        if token:
            end -= len(token)
        elif text[end - 1].isspace():
            while end and text[end - 1].isspace():
                end -= 1
        else:
            break
    return text[:end]


def join_alternatives(text: str) -> str:
    """``text`` with every logical or/and joiner, and the spacing around it, replaced by `` , ``
    (module doc): ``x=2 \\lor x=3`` → ``x=2 , x=3``. Text without a joiner is returned as is."""
    parts = _JOINER_RE.split(text)
    if len(parts) == 1:
        return text
    out = [_strip_trailing_spacing(parts[0])]
    for part in parts[1:]:
        part = part[_LEADING_SPACING_RE.match(part).end():]
        out.append(_strip_trailing_spacing(part))
    return " , ".join(out)

"""Matching reward: yes/no and multiple-choice answers, 0 or 1.

Rules (each has tests):

* which text is read — with an ``<answer>`` tag, the tag's content; without one, the answer the
  completion states last (a model reasoning "is it yes? … the answer is no" committed to "no").
* yes/no — with a tag, the first standalone ``yes``/``no`` word of the answer; without a tag, the
  last one in the completion (case, punctuation and unicode width ignored); it equals the
  solution's.
* multiple choice — the option letter the answer commits to equals the solution's letter.
  Commitments, strongest first: the whole answer is a letter (``B``, ``(B)``, ``B.``, ``b)``);
  the answer starts with a letter and a delimiter (``B: cat``, ``B. cat``, ``(B) cat``); a
  phrase names it (``Option B``, ``The answer is B``, ``answer: (B)``); a parenthesised
  letter anywhere. Where the sample carries its options, an answer that is exactly one
  option's text counts as that option. Without any of these, a lone capital letter among the
  valid options counts (an article ``A`` before a lower-case word does not). An answer that
  commits to two different letters is a hedge and scores 0. Without an answer tag these rules
  apply to the last sentence (split at ``.``/``!``/``?`` + space and at line breaks, think tags
  removed) that commits to any letter.
* anything else — normalised exact match (lower case, punctuation and spacing ignored).
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence

from mixed_r1.rewards.parsing import answer_span, as_text, normalize_text, strip_tags

_YES_NO_RE = re.compile(r"(?<![A-Za-z0-9])(yes|no)(?![A-Za-z0-9])", re.IGNORECASE)
_WHOLE_LETTER_RE = re.compile(r"^\(?\s*([A-Za-z])\s*\)?\s*[.):：]?$")
_LEADING_LETTER_RE = re.compile(r"^(?:\(\s*([A-Za-z])\s*\)|([A-Z])\s*[.):：])\s*\S")
_PHRASE_RE = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)\s*(?i:is|would be|should be|=)?\s*[:：]?\s*"
    r"(?i:option\s*)?(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?![A-Za-z0-9]))"
)
_PAREN_LETTER_RE = re.compile(r"\(\s*([A-Z])\s*\)")
_LONE_CAPITAL_RE = re.compile(r"(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])(?:\s+([a-z]+))?")
_CONJUNCTIONS = frozenset({"or", "and", "nor", "vs", "versus"})

Options = Sequence[str] | Mapping[str, str] | None


def option_map(options: Options) -> dict[str, str]:
    """Options as ``{letter: text}``: a list is lettered A, B, C…; a mapping is upper-cased."""
    if not options:
        return {}
    if isinstance(options, Mapping):
        return {str(k).strip().strip("().").upper(): str(v) for k, v in options.items()}
    return {letter: str(text) for letter, text in zip(string.ascii_uppercase, options)}


def _first_groups(matches) -> set[str]:
    return {next(g for g in m.groups() if g).upper() for m in matches}


def choice_letters(answer: str, options: Options = None) -> set[str]:
    """The option letters ``answer`` commits to (empty: none; two or more: a hedge)."""
    text = answer.strip()
    if not text:
        return set()
    opts = option_map(options)
    if (m := _WHOLE_LETTER_RE.match(text)):
        return {m.group(1).upper()}
    strong = set()
    if (m := _LEADING_LETTER_RE.match(text)):
        strong |= _first_groups([m])
    strong |= _first_groups(_PHRASE_RE.finditer(text))
    strong |= _first_groups(_PAREN_LETTER_RE.finditer(text))
    if opts:
        norm = normalize_text(text)
        by_text = {k for k, v in opts.items() if normalize_text(v) == norm and norm}
        if len(by_text) == 1:
            strong |= by_text
    if strong:
        return strong
    valid = set(opts) if opts else set(string.ascii_uppercase[:10])
    lone = set()
    for m in _LONE_CAPITAL_RE.finditer(text):
        letter, next_word = m.group(1), m.group(2)
        article = letter in "AI" and next_word and next_word not in _CONJUNCTIONS
        if letter in valid and not article:  # "A cat", "I think" are words, "A or B" a hedge
            lone.add(letter)
    return lone


_SENTENCE_RE = re.compile(r"(?<=[.!?。！？])\s+|\n+")


def _yes_no(text: str, last: bool = False) -> str | None:
    """The first (or, with ``last``, the final) standalone yes/no word of ``text``."""
    m = None
    for m in _YES_NO_RE.finditer(unicodedata.normalize("NFKC", text)):
        if not last:
            break
    return m.group(1).lower() if m else None


def final_choice_letters(text: str, options: Options = None) -> set[str]:
    """Letters committed to by the last sentence of an untagged completion that names any."""
    for sentence in reversed(_SENTENCE_RE.split(strip_tags(text))):
        letters = choice_letters(sentence, options)
        if letters:
            return letters
    return set()


def solution_letter(solution: str, options: Options = None) -> str | None:
    """The letter a multiple-choice solution names (``B``, ``(B)``, ``B. cat`` or an option's text)."""
    letters = choice_letters(solution, options)
    if len(letters) == 1:
        return next(iter(letters))
    return None


def matching_reward(completion: str, solution: str, options: Options = None) -> float:
    """1.0 iff the answer matches the yes/no or multiple-choice solution (rules in the module doc)."""
    solution = str(solution).strip()
    answer, tagged = answer_span(completion)
    if not answer:
        return 0.0
    norm_solution = normalize_text(solution)
    if norm_solution in ("yes", "no"):
        return 1.0 if _yes_no(answer, last=not tagged) == norm_solution else 0.0
    letter = solution_letter(solution, options)
    if letter is not None:
        committed = (choice_letters(answer, options) if tagged
                     else final_choice_letters(answer, options))
        return 1.0 if committed == {letter} else 0.0
    return 1.0 if normalize_text(answer) == norm_solution and norm_solution else 0.0


def is_choice_solution(solution: object, options: Options = None) -> bool:
    """True when ``solution`` names an option letter (used by data validation)."""
    return solution_letter(as_text(str(solution)), options) is not None

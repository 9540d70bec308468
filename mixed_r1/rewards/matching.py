"""Matching reward: yes/no and multiple-choice answers, 0 or 1.

Rules (each has tests):

* which text is read — with an ``<answer>`` tag, the tag's content; without one, the answer the
  completion states last (a model reasoning "is it yes? … the answer is no" committed to "no").
* yes/no — with a tag, the first standalone ``yes``/``no`` word of the answer; without a tag, the
  last one in the completion (case, punctuation and unicode width ignored); it equals the
  solution's. When that word is one of ``yes`` and ``no`` offered together (``yes or no``,
  ``no/yes``, ``yes and/or no``, ``either yes or no``, ``yes or maybe no``; with ``and``, ``&`` or
  a comma only where the second word ends the answer or a clause: ``yes and no.``, ``yes, no``)
  the answer hedges and scores 0; ``Yes, no doubt`` and ``No, no.`` do not hedge.
* multiple choice — the option letter the answer commits to equals the solution's letter.
  Commitments, strongest first: the whole answer is a letter (``B``, ``(B)``, ``B.``, ``b)``);
  the answer starts with a letter and a delimiter (``B: cat``, ``B. cat``, ``(B) cat``); a
  phrase names it (``Option B``, ``The answer is B``, ``answer: (B)``); a parenthesised
  letter anywhere. Where the sample carries its options, an answer that is exactly one
  option's text counts as that option (even a text naming letters, ``Both A and B``). Without any of these, a lone capital letter among the
  valid options counts (an article ``A`` before a lower-case word does not). An answer that
  commits to two different letters is a hedge and scores 0, wherever the letters stand: a letter
  in a committing position (the answer's start, after a commitment phrase, in parentheses)
  commits to every letter listed with it — ``The answer is B or C``, ``Answer: B/C``, ``B, C``,
  ``B and C``, ``B & C``, ``either B or C``, ``B and/or C``, ``(B) or (C)``, ``B or maybe
  option C``. After a comma or ``and``, a letter that starts a clause of its own (followed by a
  verb: ``The answer is B, and C is a square``; ``I think``) is an explanation, not an
  alternative; a sentence break (``The answer is B. A is wrong``) ends the list. Without an
  answer tag these rules apply to the last sentence (split at ``.``/``!``/``?`` + space and at
  line breaks, think tags removed) that commits to any letter.
* anything else — normalised exact match (lower case, punctuation and spacing ignored).
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence

from mixed_r1.rewards.parsing import answer_span, as_text, normalize_text, strip_tags

_YES_NO_RE = re.compile(r"(?<![A-Za-z0-9])(yes|no)(?![A-Za-z0-9])", re.IGNORECASE)
_WHOLE_LETTER_RE = re.compile(r"^\(?\s*+([A-Za-z])\s*+\)?\s*+[.):：]?$")
_LEADING_LETTER_RE = re.compile(r"^(?:\(\s*([A-Za-z])\s*\)|([A-Z])\s*[.):：])\s*\S")
_PHRASE_RE = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)\s*+(?:(?i:is|would be|should be|=)\s*+)?(?:[:：]\s*+)?"
    r"(?:(?i:either|one of)\s++)?(?:(?i:option)\s*+)?"
    r"(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?![A-Za-z0-9]))"
)
# a letter at the very start of the answer ("B or C", "(B) / (C)")
_START_LETTER_RE = re.compile(r"\s*(?:\(\s*([A-Za-z])\s*\)|([A-Z])(?![A-Za-z0-9'’]))")
# one more letter listed after a committed one: separator, optional hedge word, the letter
_LIST_NEXT_RE = re.compile(
    r"\s*+\)?(?:\s*+\([^()]{0,60}\))?\s*+(?P<sep>,?\s*+(?i:and\s*/\s*or|or|and)\b|&|/|,)\s*+"
    r"(?:(?i:maybe|perhaps|possibly|probably|even|also)\s++)?"
    r"(?:(?i:option|choice)\s*+(?:\(\s*(?P<o1>[A-Za-z])\s*\)|(?P<o2>[A-Za-z])(?![A-Za-z0-9]))"
    r"|\(\s*(?P<p>[A-Za-z])\s*\)|(?P<b>[A-Z])(?![A-Za-z0-9'’]))"
)
_NEXT_WORD_RE = re.compile(r"\s+([A-Za-z'’]+)")
# after "," or "and", a letter followed by one of these starts a clause: "…B, and C is a square"
_CLAUSE_VERBS = frozenset({
    "is", "isn't", "was", "wasn't", "are", "aren't", "has", "hasn't", "have", "does", "doesn't",
    "did", "didn't", "can", "can't", "cannot", "could", "couldn't", "would", "wouldn't", "should",
    "shouldn't", "will", "won't", "must", "may", "might", "shows", "seems", "looks", "fails",
    "lacks", "describes", "refers", "means", "contains", "represents", "matches", "gives", "only",
})
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


def _listed_after(text: str, pos: int, valid: set[str]) -> tuple[set[str], int]:
    """The option letters listed right after a committed letter that ends at ``pos``
    (``… or C``, ``…, C and D``, ``… / (C)``): the alternatives offered with it; and where the
    list ends."""
    letters: set[str] = set()
    while (m := _LIST_NEXT_RE.match(text, pos)):
        letter = next(m[g] for g in ("o1", "o2", "p", "b") if m[g]).upper()
        word = _NEXT_WORD_RE.match(text, m.end())
        next_word = word.group(1).lower() if word else ""
        if m["b"] == "I" and next_word and word.group(1).islower():
            break  # "…, I think"
        sep = m["sep"].strip(" ,").lower()
        if sep in ("", "and") and next_word in _CLAUSE_VERBS:
            break  # "…, and C is a square": a clause about C, not an alternative
        if letter not in valid:
            break
        letters.add(letter)
        pos = m.end()
    return letters, pos


def _with_listed(matches, text: str, valid: set[str]) -> set[str]:
    """The letters of ``matches`` (their first non-empty group) and those listed after each."""
    letters: set[str] = set()
    listed_to = -1
    for m in matches:
        group = next(i for i, g in enumerate(m.groups(), 1) if g)
        letters.add(m.group(group).upper())
        if m.start() >= listed_to:  # a match inside an earlier list was listed with it
            listed, listed_to = _listed_after(text, m.end(), valid)
            letters |= listed
    return letters


def choice_letters(answer: str, options: Options = None) -> set[str]:
    """The option letters ``answer`` commits to (empty: none; two or more: a hedge)."""
    text = answer.strip()
    if not text:
        return set()
    opts = option_map(options)
    if (m := _WHOLE_LETTER_RE.match(text)):
        return {m.group(1).upper()}
    norm = normalize_text(text)
    by_text = {k for k, v in opts.items() if normalize_text(v) == norm and norm}
    if len(by_text) == 1:  # the answer is one option's text ("A and B" as an option too)
        return by_text
    valid = set(opts) if opts else set(string.ascii_uppercase[:10])
    strong = set()
    if (m := _LEADING_LETTER_RE.match(text)):
        strong |= _first_groups([m])
    if (m := _START_LETTER_RE.match(text)) and (listed := _listed_after(text, m.end(), valid)[0]):
        strong |= _first_groups([m]) | listed  # "B or C …", "(B) / (C) …"
    strong |= _with_listed(_PHRASE_RE.finditer(text), text, valid)
    strong |= _with_listed(_PAREN_LETTER_RE.finditer(text), text, valid)
    if strong:
        return strong
    lone = set()
    for m in _LONE_CAPITAL_RE.finditer(text):
        letter, next_word = m.group(1), m.group(2)
        article = letter in "AI" and next_word and next_word not in _CONJUNCTIONS
        if letter in valid and not article:  # "A cat", "I think" are words, "A or B" a hedge
            lone.add(letter)
    return lone


_SENTENCE_RE = re.compile(r"(?<=[.!?。！？])\s+|\n+")


# "yes" and "no" offered together: "or"-like joiners always; "and", "&" or a comma only where the
# second word ends the answer or a clause ("yes and no.", but not "yes, no doubt")
_OR_JOIN = r"\s*(?:,\s*)?(?:/|\b(?:and\s*/\s*or|or)\b(?:\s+(?:maybe|perhaps|possibly))?)\s*"
_AND_JOIN = r"\s*(?:,\s*(?:and\b|&)?|\band\b|&)\s*"
_YN_AFTER_RE = re.compile(
    rf"(?:{_OR_JOIN}(?P<or>yes|no)|{_AND_JOIN}(?P<and>yes|no)(?=\s*(?:$|[^\w\s])))"
    r"(?![A-Za-z0-9])", re.IGNORECASE)
_YN_BEFORE_RE = re.compile(
    rf"(?<![A-Za-z0-9])(?:(?P<or>yes|no){_OR_JOIN}|(?P<and>yes|no){_AND_JOIN})$", re.IGNORECASE)
_CLAUSE_END_RE = re.compile(r"\s*(?:$|[^\w\s])")


def _offered_with_other(text: str, m: re.Match) -> bool:
    """Whether the yes/no word ``m`` is offered together with the other one (module doc)."""
    word = m.group(1).lower()
    after = _YN_AFTER_RE.match(text, m.end())
    if after and (after["or"] or after["and"]).lower() != word:
        return True
    before = _YN_BEFORE_RE.search(text, max(0, m.start() - 40), m.start())
    if before is None:
        return False
    other = before["or"] or before["and"]
    if other.lower() == word:
        return False
    return bool(before["or"]) or bool(_CLAUSE_END_RE.match(text, m.end()))


def _yes_no(text: str, last: bool = False) -> str | None:
    """The first (or, with ``last``, the final) standalone yes/no word of ``text``; ``""`` when
    that word is offered together with the other one (``yes or no``: a hedge)."""
    text = unicodedata.normalize("NFKC", text)
    m = None
    for m in _YES_NO_RE.finditer(text):
        if not last:
            break
    if m is None:
        return None
    return "" if _offered_with_other(text, m) else m.group(1).lower()


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

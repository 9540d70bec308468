"""Child process that runs math-verify for :mod:`mixed_r1.rewards.math` (run as a script).

Protocol: one JSON object per line on stdin, ``{"gold": str, "answer": str}`` (is the answer
equivalent to the gold?) or ``{"parse": str}`` (does the text parse to an expression, not only to
math-verify's fallback string?); one line per request on stdout, ``{"ok": bool}``. Prints
``{"ready": true}`` once imports are done. It imports only math-verify, never the package, so it
starts quickly; the parent enforces the time limit by killing this process, so math-verify's
signal-based timeouts are disabled. The parent sends answers already wrapped in ``$…$``.
"""
import json
import logging
import sys


def _verify(gold: str, answer: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(gold, parsing_timeout=None)
    if not gold_parsed:
        return False
    pred = parse(answer, parsing_timeout=None)
    return bool(pred) and bool(verify(gold_parsed, pred, timeout_seconds=None))


def _parses(text: str) -> bool:
    from math_verify import parse

    return bool(parse(text, parsing_timeout=None, fallback_mode="no_fallback"))


def main() -> None:
    logging.disable(logging.WARNING)  # math-verify warns that we disabled its timeouts
    import math_verify  # noqa: F401  (import cost paid before "ready")

    out = sys.stdout
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if "parse" in req:
                ok = _parses(str(req["parse"]))
            else:
                ok = _verify(str(req["gold"]), str(req["answer"]))
        except Exception:  # a parser crash on model output scores 0
            ok = False
        out.write('{"ok": true}\n' if ok else '{"ok": false}\n')
        out.flush()


if __name__ == "__main__":
    main()

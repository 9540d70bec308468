"""`mixed-r1 demo --quick`, twice into the same directory: the second run starts a fresh
metrics.jsonl, plot and report (no rows of the first run mixed in), and the demo prints its
held-out accuracy line with numbers only in their places."""
from __future__ import annotations

import json
import re

import pytest


@pytest.mark.slow
def test_demo_rerun_starts_fresh(tmp_path, capsys):
    from mixed_r1.demo import run_demo

    out = tmp_path / "demo"
    first = run_demo(out, quick=True, overrides=["progress=false"])
    (out / "run" / "stale-marker").write_text("from the first run")
    capsys.readouterr()
    second = run_demo(out, quick=True, overrides=["progress=false"])
    printed = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # one run's steps, once
    assert not (out / "run" / "stale-marker").exists()
    assert (out / "run" / "curves.png").is_file() and (out / "run" / "model" / "config.json").is_file()
    assert len(second["train_rewards"]) == 3 == len(first["train_rewards"])
    line, = [x for x in printed.splitlines() if x.startswith("[demo] held-out accuracy:")]
    m = re.fullmatch(r"\[demo\] held-out accuracy: (\d\.\d{3}) -> (\d\.\d{3}) \(± (\d\.\d{3})\)",
                     line)
    assert m, line
    acc = second["accuracy_change"]
    assert (float(m[1]), float(m[2])) == (round(acc["before"], 3), round(acc["after"], 3))

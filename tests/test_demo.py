"""`mixed-r1 demo --multimodal --quick` into a directory an earlier demo wrote: the run starts a fresh
metrics.jsonl, plot and model (no rows of the earlier run mixed in), and the demo prints its
held-out accuracy line with numbers only in their places."""
from __future__ import annotations

import json
import re

import pytest


@pytest.mark.slow
def test_demo_rerun_starts_fresh(tmp_path, capsys):
    from mixed_r1.demo import run_multimodal_demo

    out = tmp_path / "demo"
    # what an earlier demo left behind: 30 rows of metrics, a plot, a stray file
    (out / "run").mkdir(parents=True)
    (out / "run" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "reward/total": 9.0}) + "\n" for i in range(1, 31)))
    (out / "run" / "curves.png").write_bytes(b"old plot")
    (out / "run" / "stale-marker").write_text("from the first run")
    second = run_multimodal_demo(out, quick=True, overrides=["progress=false"])
    printed = capsys.readouterr().out
    rows = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # this run's steps, once
    assert all(r["reward/total"] != 9.0 for r in rows)
    assert not (out / "run" / "stale-marker").exists()
    assert (out / "run" / "curves.png").read_bytes() != b"old plot"
    assert (out / "run" / "model" / "config.json").is_file()
    assert second["train_rewards"] == [r["reward/total"] for r in rows]
    # 3 GRPO steps: no first-vs-last "trend" of one step each, the held-out eval is the measure
    trend, = [x for x in printed.splitlines() if x.startswith("[demo] GRPO training reward")]
    assert trend.startswith("[demo] GRPO training reward: mean ") and "->" not in trend, trend
    assert "over 3 GRPO steps" in trend and "held-out accuracy is the measure" in trend, trend
    line, = [x for x in printed.splitlines() if x.startswith("[demo] held-out accuracy:")]
    m = re.fullmatch(r"\[demo\] held-out accuracy: (\d\.\d{3}) -> (\d\.\d{3}) \(± (\d\.\d{3})\)",
                     line)
    assert m, line
    acc = second["accuracy_change"]
    assert (float(m[1]), float(m[2])) == (round(acc["before"], 3), round(acc["after"], 3))

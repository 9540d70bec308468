"""`mixed-r1 plot RUN_DIR` (mixed_r1.metrics.plot_run / plot_figure): every panel has its own
descriptive title and labelled axes, the step axis has integer ticks only, and the total-reward
curve stays visible when it equals the accuracy curve (format reward 0, as in the text demo)."""
from __future__ import annotations

import json

import pytest

from mixed_r1.metrics import plot_figure, plot_run


def _rows(steps: int) -> list[dict]:
    rows = []
    for s in range(1, steps + 1):
        acc = 0.1 + 0.05 * (s % 3)
        rows.append({"step": s, "reward/total": acc, "reward/accuracy": acc, "reward/format": 0.0,
                     "reward/yes_no/accuracy": acc, "reward/math/accuracy": acc / 2,
                     "loss": 0.01 * s, "kl_mean": 0.001 * s, "entropy": 1.5, "clip_frac": 0.02,
                     "response/length_mean": 20.0 + s, "perf/tokens_per_s": 100.0,
                     "rollout/logprob_abs_diff": 0.01, "grad_norm": 0.3})
    return rows


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.axison]


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 60])
def test_panels_have_distinct_titles_labels_and_integer_step_ticks(steps):
    fig = plot_figure(_rows(steps))
    fig.canvas.draw()
    axes = _panels(fig)
    titles = [ax.get_title() for ax in axes]
    assert len(axes) == 11  # every logged group: total, components, per task, 8 diagnostics
    assert all(titles) and len(set(titles)) == len(titles), titles
    for ax in axes:
        assert ax.get_xlabel() == "GRPO step", ax.get_title()
        assert ax.get_ylabel(), f"{ax.get_title()!r} has no y-axis label"
        lo, hi = sorted(ax.get_xlim())
        ticks = [t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9]
        assert ticks, ax.get_title()
        assert all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
        labels = [lab.get_text().replace("\u2212", "-") for lab in ax.get_xticklabels()
                  if lo - 1e-9 <= lab.get_position()[0] <= hi + 1e-9]
        assert all(lab.lstrip("-").isdigit() for lab in labels if lab), labels


def test_total_reward_is_not_hidden_under_accuracy():
    fig = plot_figure(_rows(5))  # format 0: total == accuracy at every step
    lines = {ln.get_gid(): (ax, ln) for ax in fig.axes for ln in ax.get_lines()}
    (ax_t, total), (ax_a, acc) = lines["reward/total"], lines["reward/accuracy"]
    assert list(total.get_ydata()) == list(acc.get_ydata())
    separate = ax_t is not ax_a
    styled = (total.get_linestyle(), total.get_marker()) != (acc.get_linestyle(), acc.get_marker())
    assert separate or styled, "the total-reward line is drawn exactly over the accuracy line"
    # the components that share a panel differ in line style and marker (not colour alone)
    fmt = lines["reward/format"][1]
    assert lines["reward/format"][0] is ax_a
    assert acc.get_linestyle() != fmt.get_linestyle() and acc.get_marker() != fmt.get_marker()


def test_plot_run_writes_the_png(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(FileNotFoundError, match="no metrics"):
        plot_run(run)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(3)))
    path = plot_run(run)
    assert path == run / "curves.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    other = plot_run(run, tmp_path / "other.png")
    assert other == tmp_path / "other.png" and other.is_file()
    with pytest.raises(ValueError):
        plot_figure([])


def test_progress_is_one_plain_line_per_step_off_a_terminal(tmp_path, capsys, monkeypatch):
    """``progress: true`` into a log file (stderr not a terminal, as under pytest): one line per
    logged step on stdout and no tqdm bar (no carriage returns) anywhere; on a terminal the bar
    (issue 31, item 8: the SmolLM2 config trained minutes without a line)."""
    import sys

    from mixed_r1.metrics import MetricsLogger

    assert not sys.stderr.isatty()
    log = MetricsLogger(tmp_path / "a", total_steps=3, tensorboard=False, progress=True)
    for step in (1, 2):
        log.log(step, {"reward/total": 0.5 * step, "reward/accuracy": 0.25, "reward/format": 1.0,
                       "kl_mean": 0.00123, "response/length_mean": 40.25,
                       "perf/tokens_per_s": 410.4})
    log.close()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and "\r" not in out + err and err == ""
    assert lines[1].startswith("grpo step 2/3: reward 1.000 (accuracy 0.250, format 1.000) kl "
                               "0.0012 len 40.2 tokens ")
    assert lines[1].endswith(" s 410 tok/s")

    monkeypatch.setattr("mixed_r1.metrics._on_terminal", lambda: True)
    log = MetricsLogger(tmp_path / "b", total_steps=3, tensorboard=False, progress=True)
    log.log(1, {"reward/total": 0.5})
    log.close()
    out, err = capsys.readouterr()
    assert out == "" and "grpo" in err  # tqdm's bar

    log = MetricsLogger(tmp_path / "c", total_steps=3, tensorboard=False, progress=False)
    log.log(1, {"reward/total": 0.5})
    log.close()
    assert capsys.readouterr() == ("", "")

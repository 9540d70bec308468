"""Run logging: one JSON line per step (``metrics.jsonl``), TensorBoard scalars when the
``tensorboard`` package is importable, a tqdm progress bar, and :func:`plot_run` for PNG curves."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mixed_r1.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All rows of ``<run_dir>/metrics.jsonl`` (a truncated last line is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    rows = []
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Keep only rows with ``step <= last_step`` (a resumed run rewrites what came after)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return
    keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= last_step]
    write_text_atomic(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


class MetricsLogger:
    """``log(step, metrics)`` → JSONL line (+ TensorBoard, + progress bar postfix)."""

    def __init__(self, run_dir: str | Path, *, total_steps: int | None = None,
                 initial_step: int = 0, tensorboard: bool = True, progress: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard not installed: JSONL only
                self._tb = None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc="grpo",
                             dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()
                                if isinstance(v, (int, float, str, bool))}}
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.update(max(0, step - self._bar.n))
            self._bar.set_postfix(reward=f"{metrics.get('reward/total', float('nan')):.3f}",
                                  tok_s=f"{metrics.get('perf/tokens_per_s', 0.0):.0f}")

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text)

    def close(self) -> None:
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()


PLOT_KEYS = (
    ("reward/total", "reward/accuracy", "reward/format"),
    ("reward/yes_no/accuracy", "reward/multiple_choice/accuracy", "reward/chart/accuracy",
     "reward/math/accuracy", "reward/grounding/accuracy", "reward/open_ended/accuracy"),
    ("loss",), ("kl_mean",), ("entropy",), ("clip_frac",), ("response/length_mean",),
    ("perf/tokens_per_s",), ("rollout/logprob_abs_diff",), ("grad_norm",),
)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the training curves of ``run_dir`` to ``<run_dir>/curves.png`` (or ``out``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{Path(run_dir) / METRICS_FILE}: no metrics to plot")
    panels = [[k for k in keys if any(k in r for r in rows)] for keys in PLOT_KEYS]
    panels = [p for p in panels if p]
    cols = 3
    nrows = max(1, math.ceil(len(panels) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.2 * nrows), squeeze=False)
    for ax, keys in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None]
            if pts:
                ax.plot(*zip(*pts), label=k.split("/", 1)[-1] if len(keys) > 1 else None,
                        marker="." if len(pts) < 40 else None)
        ax.set_title(keys[0] if len(keys) == 1 else keys[0].split("/")[0])
        ax.set_xlabel("step")
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    path = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["METRICS_FILE", "MetricsLogger", "plot_run", "read_metrics", "truncate_metrics"]

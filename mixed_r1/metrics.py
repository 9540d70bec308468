"""Run logging: one JSON line per step (``metrics.jsonl``), TensorBoard scalars when the
``tensorboard`` package is importable, Weights & Biases when the config's ``logging.wandb`` asks
(:class:`WandbSink`; wandb is optional and imported only then), all fed the same row by
:meth:`MetricsLogger.log`, progress (``progress: true``: a tqdm bar when stderr is a terminal,
else one plain line per step on stdout, :func:`step_line`, so a log file gets no carriage-return
bars), and :func:`plot_run` for PNG curves (:func:`plot_figure` gives the
matplotlib figure)."""
from __future__ import annotations

import json
import math
import secrets
import string
import sys
import time
from pathlib import Path
from typing import Any

from mixed_r1.atomic import write_text_atomic

METRICS_FILE = "metrics.jsonl"
WANDB_ID_FILE = "wandb_run_id"  # the run's W&B id, so that --resume continues the same W&B run
WANDB_INSTALL = "pip install wandb"


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


def _on_terminal() -> bool:
    """Whether stderr (where a tqdm bar draws) is an interactive terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # closed or replaced stream
        return False


def step_line(step: int, total: int | None, metrics: dict[str, Any],
              seconds: float | None = None, stage: str = "grpo") -> str:
    """One plain progress line for a log file, e.g. ``grpo step 3/20: reward 0.412 (accuracy
    0.281, format 0.950) kl 0.0012 len 45.2 tokens 17.1 s 412 tok/s`` or, for ``stage="sft"``,
    ``sft step 3/20: nll 2.114 acc 0.532 eval nll 2.301 1.2 s 830 tok/s``; a value the step did
    not log is left out. ``seconds``: wall time since the previous line (else ``time/step``)."""
    def num(key: str, fmt: str) -> str | None:
        v = metrics.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    parts = [f"{stage} step {step}/{total}:" if total else f"{stage} step {step}:"]
    total_r, acc, fmt = (num(k, ".3f") for k in ("reward/total", "reward/accuracy",
                                                   "reward/format"))
    if total_r is not None:
        inner = ", ".join(x for x in (acc and f"accuracy {acc}", fmt and f"format {fmt}") if x)
        parts.append(f"reward {total_r}" + (f" ({inner})" if inner else ""))
    if stage == "sft":
        for key, label in (("loss", "nll"), ("token_acc", "acc"), ("eval/nll", "eval nll")):
            v = num(key, ".3f")
            if v is not None:
                parts.append(f"{label} {v}")
    for key, label, f in (("kl_mean", "kl", ".4f"), ("response/length_mean", "len", ".1f")):
        v = num(key, f)
        if v is not None:
            parts.append(f"{label} {v}" + (" tokens" if label == "len" else ""))
    sec = seconds if seconds is not None else metrics.get("time/step")
    if isinstance(sec, (int, float)):
        parts.append(f"{sec:.1f} s")
    tps = num("perf/tokens_per_s", ".0f")
    if tps is not None:
        parts.append(f"{tps} tok/s")
    return " ".join(parts)


def wandb_wanted(logging_cfg: Any) -> bool:
    """Whether a config's ``logging`` section asks for a W&B run (``wandb: true`` and a mode other
    than ``disabled``)."""
    return bool(logging_cfg is not None and logging_cfg.wandb
                and logging_cfg.wandb_mode != "disabled")


def import_wandb() -> Any:
    """The ``wandb`` module, imported now (never at package import); a missing package raises one
    :class:`~mixed_r1.config.ConfigError` line naming ``logging.wandb`` and the pip command."""
    from mixed_r1.config import ConfigError

    try:
        import wandb
    except ImportError:
        raise ConfigError("config key 'logging.wandb: true' needs the wandb package, which is not "
                          f"installed: {WANDB_INSTALL} (or set logging.wandb=false)") from None
    return wandb


def check_loggers(cfg: Any) -> None:
    """Fail before anything is built when the config asks for a logger that cannot run (a
    ``logging.wandb`` run without the wandb package): :func:`import_wandb`'s ConfigError."""
    if wandb_wanted(getattr(cfg, "logging", None)):
        import_wandb()


def wandb_run_id(run_dir: str | Path) -> str:
    """The W&B run id of ``run_dir``: read from ``<run_dir>/wandb_run_id``, or made (8 lowercase
    letters and digits, W&B's own form) and written there atomically on the first call, so a
    resumed run logs to the same W&B run."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    write_text_atomic(path, run_id + "\n")
    return run_id


class WandbSink:
    """One W&B run for the training run in ``run_dir``: ``wandb.init`` with the config's
    ``logging`` keys, the resolved training config as ``wandb.config``, the id of
    :func:`wandb_run_id` and ``resume="allow"`` (a resumed run continues the same W&B run);
    ``log(step, row)`` logs the row at W&B step = GRPO step; ``close(exit_code)`` finishes the run
    (non-zero: marked failed)."""

    def __init__(self, run_dir: str | Path, logging_cfg: Any, config: dict | None = None) -> None:
        wandb = import_wandb()
        run_dir = Path(run_dir)
        root = Path(logging_cfg.wandb_dir) if logging_cfg.wandb_dir else run_dir
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=logging_cfg.wandb_project, entity=logging_cfg.wandb_entity,
            name=logging_cfg.wandb_run_name or run_dir.resolve().name, id=wandb_run_id(run_dir),
            resume="allow", mode=logging_cfg.wandb_mode, dir=str(root), config=config or {},
            reinit="create_new")  # its own run even when the caller has one open

    def log(self, step: int, row: dict[str, Any]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step" and v is not None}, step=step)

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


class MetricsLogger:
    """``log(step, metrics)`` is the one place every step's metrics go: one row, fanned out to the
    sinks (the JSONL line, TensorBoard, W&B), then the progress bar postfix or line.

    ``wandb``: the config's ``logging`` section (:class:`~mixed_r1.config.LoggingConfig`); when it
    asks for W&B, a :class:`WandbSink` with ``config`` (the resolved training config) is opened.
    Create it on the main rank only (:func:`mixed_r1.trainer.run_training` does)."""

    def __init__(self, run_dir: str | Path, *, total_steps: int | None = None,
                 initial_step: int = 0, tensorboard: bool = True, progress: bool = True,
                 wandb: Any = None, config: dict | None = None, stage: str = "grpo") -> None:
        self.run_dir = Path(run_dir)
        self.stage = stage  # the progress bar's and lines' name: grpo | sft
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._wandb = WandbSink(self.run_dir, wandb, config) if wandb_wanted(wandb) else None
        self._fh = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard not installed: JSONL only
                self._tb = None
        self._bar = None
        self._lines = False
        self.total_steps = total_steps
        self._last = time.perf_counter()
        if progress and _on_terminal():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc=stage,
                             dynamic_ncols=True)
        elif progress:  # a log file or a pipe: one plain line per step, no carriage returns
            self._lines = True

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()
                                if isinstance(v, (int, float, str, bool))}}
        self._fh.write(json.dumps(row, sort_keys=True) + "\n")
        self._fh.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(step, row)
        if self._bar is not None:
            self._bar.update(max(0, step - self._bar.n))
            if self.stage == "sft":
                self._bar.set_postfix(nll=f"{metrics.get('loss', float('nan')):.3f}",
                                      acc=f"{metrics.get('token_acc', float('nan')):.3f}",
                                      tok_s=f"{metrics.get('perf/tokens_per_s', 0.0):.0f}")
            else:
                self._bar.set_postfix(reward=f"{metrics.get('reward/total', float('nan')):.3f}",
                                      tok_s=f"{metrics.get('perf/tokens_per_s', 0.0):.0f}")
        elif self._lines:
            now = time.perf_counter()
            print(step_line(step, self.total_steps, metrics, now - self._last, self.stage),
                  flush=True)
            self._last = now

    def write(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text)

    def close(self, exit_code: int = 0) -> None:
        """Close every sink; ``exit_code`` non-zero (training raised) marks the W&B run failed.
        Idempotent."""
        if self._fh.closed:
            return
        self._fh.close()
        if self._tb is not None:
            self._tb.close()
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.close(exit_code)


TASK_ACCURACY_KEYS = tuple(f"reward/{t}/accuracy" for t in (
    "yes_no", "multiple_choice", "chart", "math", "grounding", "open_ended"))
# (title, y-axis label, ((metric key, legend label), ...)); a panel is drawn when any key is logged
PLOT_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("Total reward (weighted accuracy + format)",
     "mean reward per completion", (("reward/total", "total"),)),
    ("Reward components: accuracy and format", "mean per completion (0–1)",
     (("reward/accuracy", "accuracy"), ("reward/format", "format"))),
    ("Training accuracy by task type", "mean accuracy per completion (0–1)",
     tuple((k, k.split("/")[1]) for k in TASK_ACCURACY_KEYS)),
    ("Held-out eval (greedy)", "mean per held-out prompt (0–1)",
     (("eval/accuracy", "accuracy"), ("eval/format", "format"))),
    ("Policy loss", "loss (unitless)", (("loss", "loss"),)),
    ("KL to the reference policy", "mean KL per token (nats)", (("kl_mean", "kl"),)),
    ("Policy entropy", "mean entropy per token (nats)", (("entropy", "entropy"),)),
    ("Clipped-ratio fraction", "fraction of tokens (0–1)", (("clip_frac", "clip_frac"),)),
    ("Response length", "mean tokens per completion", (("response/length_mean", "length"),)),
    ("Generation throughput", "generated tokens / s", (("perf/tokens_per_s", "tokens/s"),)),
    ("Sampler vs trainer log-prob gap", "mean |Δ log p| per token (nats)",
     (("rollout/logprob_abs_diff", "|Δ log p|"),)),
    ("Gradient norm (before clipping)", "global L2 norm", (("grad_norm", "grad_norm"),)),
)
# a supervised run's panels (mixed-r1 sft: rows with SFT_KEYS)
SFT_PLOT_PANELS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    ("Supervised NLL (answer tokens)", "mean NLL per answer token (nats)",
     (("loss", "train (before the step)"), ("eval/nll", "held-out"))),
    ("Token accuracy (argmax = target)", "fraction of answer tokens (0–1)",
     (("token_acc", "token_acc"),)),
    ("Gradient norm (before clipping)", "global L2 norm", (("grad_norm", "grad_norm"),)),
    ("Learning rate", "lr", (("lr", "lr"),)),
    ("Training throughput", "answer tokens / s", (("perf/tokens_per_s", "tokens/s"),)),
)
SFT_KEYS = ("token_acc",)
# one style per line of a panel: colour, line style and marker all differ, so lines that
# coincide (two tasks at the same accuracy, format at 0) stay visible; the total reward has a
# panel of its own (it equals the accuracy whenever the format reward is 0)
_STYLES = (("C0", "-", "o"), ("C1", "--", "s"), ("C2", ":", "^"), ("C3", "-.", "D"),
           ("C4", (0, (5, 1, 1, 1)), "v"), ("C5", (0, (1, 2)), "x"))


def plot_figure(rows: list[dict]) -> Any:
    """The training curves of ``rows`` (:func:`read_metrics`) as a matplotlib ``Figure``, not
    saved: one panel per :data:`PLOT_PANELS` entry with a logged key, 3 a row, each with its own
    title and y-axis label (units), x = GRPO step (integer ticks); a supervised run's rows (with
    :data:`SFT_KEYS`) get :data:`SFT_PLOT_PANELS` and x = SFT step. Each line's ``gid`` is its
    metric key. Raises ValueError when ``rows`` is empty."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not rows:
        raise ValueError("no metrics rows to plot")
    sft = any(r.get(k) is not None for r in rows for k in SFT_KEYS)
    panels = [(title, ylabel, [(k, lab) for k, lab in keys if any(r.get(k) is not None
                                                                 for r in rows)])
              for title, ylabel, keys in (SFT_PLOT_PANELS if sft else PLOT_PANELS)]
    panels = [p for p in panels if p[2]]
    cols = 3
    nrows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(5.5 * cols, 3.4 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, (title, ylabel, keys) in zip(axes.flat, panels):
        for (k, label), (color, ls, marker) in zip(keys, _STYLES):
            pts = sorted((r["step"], r[k]) for r in rows if r.get(k) is not None)
            n = len(pts)
            ax.plot(*zip(*pts), label=label, gid=k, color=color, linestyle=ls,
                    marker=marker if n < 40 else None, markersize=4, fillstyle="none",
                    linewidth=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("SFT step" if sft else "GRPO step")
        ax.set_ylabel(ylabel, fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        if len(keys) > 1:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the training curves of ``run_dir`` (:func:`plot_figure`) to ``<run_dir>/curves.png``
    (or ``out``); returns the PNG's path. Raises FileNotFoundError when there are no metrics."""
    rows = read_metrics(run_dir)
    if not rows:
        raise FileNotFoundError(f"{Path(run_dir) / METRICS_FILE}: no metrics to plot")
    path = Path(out) if out is not None else Path(run_dir) / "curves.png"
    plot_figure(rows).savefig(path, dpi=90)
    return path


__all__ = ["METRICS_FILE", "PLOT_PANELS", "SFT_KEYS", "SFT_PLOT_PANELS", "WANDB_ID_FILE",
           "MetricsLogger", "WandbSink", "check_loggers", "import_wandb", "plot_figure",
           "plot_run", "read_metrics", "step_line", "truncate_metrics", "wandb_run_id",
           "wandb_wanted"]

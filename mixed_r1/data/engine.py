"""The data engine: build a Mixed-45K-style mix from candidate pools.

1. **Dedup**: a candidate whose key ``(task type, normalised question, dHash of each image)``
   was seen earlier in the pool order is dropped (normalised: lower case, punctuation removed,
   whitespace collapsed; dHash: 64-bit difference hash of the 9x8 grey thumbnail, so
   re-encoded or lightly resized copies collide).
2. **Difficulty filter**: the policy samples ``k`` answers per prompt through a rollout
   :class:`~mixed_r1.rollout.base.Generator`; MixedReward scores them; an answer passes when
   its accuracy reward is ``>= pass_threshold``. ``pass_rate = passes / k``. A prompt is kept
   iff ``lo < pass_rate < hi`` (open band, the default ``(0, 1)`` drops all-solved and
   never-solved prompts) or ``lo <= pass_rate <= hi`` with ``closed_band``.
3. **Balance**: per task type keep at most ``targets[task]`` prompts, preferring pass rates
   nearest 0.5 (the most informative for GRPO), ties broken by a seeded hash of the id.

Resumable: the unique candidates are scored in fixed chunks of ``batch_size`` prompts, each
with its own seed ``mix_seed(seed, chunk)`` (the rollout's seed mixer); every finished chunk is
appended (flushed and fsynced) to ``state/scores.jsonl``. A restart skips finished chunks, so an interrupted run
ends with the same scores and the same selection as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import string
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mixed_r1.atomic import atomic_path

from .io import write_samples
from .schema import TASK_TYPES, Sample

STATE_VERSION = 1


@dataclass
class SelectConfig:
    """Data-engine settings (see the module docstring for the rules)."""

    k: int = 8
    pass_band: tuple[float, float] = (0.0, 1.0)
    closed_band: bool = False
    pass_threshold: float = 0.5
    targets: dict[str, int] | None = None  # None: keep every in-band prompt
    batch_size: int = 8
    seed: int = 0
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    dedup: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.pass_band
        if lo > hi:
            raise ValueError(f"pass_band lower bound {lo} exceeds upper bound {hi}")
        if self.k < 1 or self.batch_size < 1:
            raise ValueError("k and batch_size must be >= 1")
        for t in (self.targets or {}):
            if t not in TASK_TYPES:
                raise ValueError(f"targets: unknown task type {t!r}")

    def in_band(self, p: float) -> bool:
        lo, hi = self.pass_band
        return lo <= p <= hi if self.closed_band else lo < p < hi


# --------------------------------------------------------------------------- dedup
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_question(text: str) -> str:
    """Lower case, punctuation removed, whitespace collapsed."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def dhash(path: str, size: int = 8) -> str:
    """64-bit difference hash (hex) of an image: sign of horizontal gradients on a 9x8 grey."""
    from PIL import Image

    with Image.open(path) as im:
        g = im.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR)
    px = list(g.getdata())
    bits = 0
    for r in range(size):
        for c in range(size):
            bits = (bits << 1) | int(px[r * (size + 1) + c] > px[r * (size + 1) + c + 1])
    return f"{bits:016x}"


def dedup_key(sample: Sample) -> tuple:
    return (sample.task_type, normalize_question(sample.question),
            tuple(dhash(p) for p in sample.images))


def deduplicate(samples: Sequence[Sample]) -> tuple[list[Sample], list[tuple[Sample, str]]]:
    """Keep the first sample of every dedup key; returns (kept, [(dropped, id of kept)])."""
    seen: dict[tuple, str] = {}
    kept, dropped = [], []
    for s in samples:
        key = dedup_key(s)
        if key in seen:
            dropped.append((s, seen[key]))
        else:
            seen[key] = s.id
            kept.append(s)
    return kept, dropped


# --------------------------------------------------------------------------- state
class ScoreState:
    """Append-only record of scored chunks (``state/scores.jsonl``) plus a fingerprint."""

    def __init__(self, out_dir: Path, fingerprint: dict) -> None:
        self.dir = out_dir / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "scores.jsonl"
        fp_path = self.dir / "fingerprint.json"
        if fp_path.exists():
            old = json.loads(fp_path.read_text())
            if old != fingerprint:
                diff = sorted(k for k in set(old) | set(fingerprint)
                              if old.get(k) != fingerprint.get(k))
                raise ValueError(f"{fp_path}: the saved selection state was made with different "
                                 f"inputs or settings ({', '.join(diff)}); use a new --out or "
                                 "delete the state directory")
        else:
            with atomic_path(fp_path) as tmp:
                tmp.write_text(json.dumps(fingerprint, sort_keys=True))
        self.scores: dict[str, dict] = {}
        self.done_chunks: set[int] = set()
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        good = 0
        with open(self.path, "rb") as fh:
            data = fh.read()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a torn last line from a crash
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            good += len(line)
            if rec.get("type") == "chunk_done":
                self.done_chunks.add(int(rec["chunk"]))
            else:
                self.scores[rec["id"]] = rec
        if good != len(data):  # drop the torn tail so appends stay well-formed
            with open(self.path, "r+b") as fh:
                fh.truncate(good)

    def append_chunk(self, chunk: int, records: list[dict]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
            fh.write(json.dumps({"type": "chunk_done", "chunk": chunk}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in records:
            self.scores[rec["id"]] = rec
        self.done_chunks.add(chunk)


# --------------------------------------------------------------------------- selection
@dataclass
class SelectResult:
    selected: list[Sample]
    report: dict
    out_dir: Path
    complete: bool = True
    pass_rates: dict[str, float] = field(default_factory=dict)


def _rank_key(seed: int, sid: str, p: float) -> tuple:
    h = hashlib.sha1(f"{seed}:{sid}".encode()).hexdigest()
    return (abs(p - 0.5), h)


def score_chunk(samples: Sequence[Sample], generator: Any, processor: Any, reward: Any,
                cfg: SelectConfig, chunk: int, template: Any = None) -> list[dict]:
    """Sample ``k`` answers per prompt and score them; one record per sample. ``template``: the
    :class:`~mixed_r1.data.prompts.PromptTemplate` (default: Mixed-R1's)."""
    from mixed_r1.rollout.base import Prompt, SamplingParams, mix_seed

    from .prompts import PromptTemplate, model_frame_sample

    template = template or PromptTemplate()
    framed = [model_frame_sample(s, processor) for s in samples]
    prompts = [Prompt(messages=template.messages(s), images=list(s.images), id=s.id)
               for s in framed]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=mix_seed(cfg.seed, chunk))
    comps = generator.generate(prompts, cfg.k, params)
    if len(comps) != len(prompts) * cfg.k:
        raise RuntimeError(f"generator returned {len(comps)} completions for "
                           f"{len(prompts)} prompts x k={cfg.k}")
    order = sorted(range(len(comps)), key=lambda j: (comps[j].prompt_index, j))
    texts = [comps[j].text for j in order]
    scored = reward(texts, [framed[comps[j].prompt_index] for j in order])
    records = []
    for i, s in enumerate(samples):
        acc = [float(a) for a in scored.accuracy[i * cfg.k:(i + 1) * cfg.k]]
        n_pass = sum(a >= cfg.pass_threshold for a in acc)
        records.append({"id": s.id, "chunk": chunk, "task_type": s.task_type,
                        "source": s.source, "k": cfg.k, "n_pass": n_pass,
                        "pass_rate": n_pass / cfg.k, "accuracy": acc})
    return records


def select(candidates: Sequence[Sample], generator: Any, processor: Any, out_dir: str | Path,
           config: SelectConfig | None = None, reward: Any = None,
           max_chunks: int | None = None, progress: Callable[[str], None] | None = None,
           load_report: dict | None = None, template: Any = None) -> SelectResult:
    """Run dedup → difficulty filter → balance; writes under ``out_dir``.

    Outputs: ``selected.jsonl`` (each sample's ``meta.pass_rate`` set), ``report.json``,
    ``pass_rates.png``, ``state/``. ``max_chunks`` stops after that many newly scored
    chunks (a controlled interruption); the result then has ``complete=False``.
    ``load_report`` (rows read/skipped while loading the pools) is copied into the report.
    ``template``: how prompts are written (:class:`~mixed_r1.data.prompts.PromptTemplate`; the
    policy's own when it was trained with one).
    """
    cfg = config or SelectConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = [s.id for s in candidates]
    dup_ids = [i for i, c in Counter(ids).items() if c > 1]
    if dup_ids:
        raise ValueError(f"candidate ids must be unique; repeated: {dup_ids[:5]}")
    unique, dropped = deduplicate(candidates) if cfg.dedup else (list(candidates), [])
    fp = {"version": STATE_VERSION, "ids": hashlib.sha1("\n".join(s.id for s in unique)
                                                        .encode()).hexdigest(),
          "k": cfg.k, "seed": cfg.seed, "batch_size": cfg.batch_size,
          "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
          "top_p": cfg.top_p, "pass_threshold": cfg.pass_threshold}
    state = ScoreState(out, fp)
    if reward is None:
        from mixed_r1.rewards import MixedReward

        reward = MixedReward()
    n_chunks = (len(unique) + cfg.batch_size - 1) // cfg.batch_size
    new = 0
    for c in range(n_chunks):
        if c in state.done_chunks:
            continue
        if max_chunks is not None and new >= max_chunks:
            return SelectResult([], {}, out, complete=False)
        chunk = unique[c * cfg.batch_size:(c + 1) * cfg.batch_size]
        state.append_chunk(c, score_chunk(chunk, generator, processor, reward, cfg, c, template))
        new += 1
        if progress:
            progress(f"scored chunk {c + 1}/{n_chunks}")
    pass_rates = {s.id: state.scores[s.id]["pass_rate"] for s in unique}
    return _finish(candidates, unique, dropped, pass_rates, cfg, out, load_report)


def _finish(candidates, unique, dropped, pass_rates, cfg: SelectConfig, out: Path,
            load_report: dict | None = None) -> SelectResult:
    in_band = [s for s in unique if cfg.in_band(pass_rates[s.id])]
    by_task: dict[str, list[Sample]] = defaultdict(list)
    for s in in_band:
        by_task[s.task_type].append(s)
    selected: list[Sample] = []
    over: list[Sample] = []
    for task in TASK_TYPES:
        pool = sorted(by_task.get(task, []), key=lambda s: _rank_key(cfg.seed, s.id,
                                                                      pass_rates[s.id]))
        cap = len(pool) if cfg.targets is None else cfg.targets.get(task, 0)
        selected.extend(pool[:cap])
        over.extend(pool[cap:])
    final = []
    for s in selected:
        s2 = Sample(**{**s.to_dict(), "meta": {**s.meta, "pass_rate": pass_rates[s.id]}})
        final.append(s2)
    write_samples(final, out / "selected.jsonl")

    lo, hi = cfg.pass_band
    below = {s.id for s in unique if not cfg.in_band(pass_rates[s.id]) and pass_rates[s.id] <= lo}
    stage_sets = {
        "candidates": candidates, "duplicates": [d for d, _ in dropped], "scored": unique,
        "below_band": [s for s in unique if s.id in below],
        "above_band": [s for s in unique if not cfg.in_band(pass_rates[s.id]) and s.id not in below],
        "in_band": in_band, "over_target": over, "selected": selected,
    }
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for stage, items in stage_sets.items():
        table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for s in items:
            table[s.source or "?"][s.task_type] += 1
        counts[stage] = {src: dict(t) for src, t in sorted(table.items())}
    totals = {stage: len(items) for stage, items in stage_sets.items()}
    shortfall = {t: n - sum(s.task_type == t for s in selected)
                 for t, n in (cfg.targets or {}).items()
                 if n > sum(s.task_type == t for s in selected)}
    hist = Counter(round(p, 6) for p in pass_rates.values())
    report = {"config": {**asdict(cfg), "pass_band": list(cfg.pass_band)},
              "totals": totals, "counts": counts, "shortfall": shortfall,
              "pass_rate_histogram": {str(k): v for k, v in sorted(hist.items())},
              "selected_per_task": {t: sum(s.task_type == t for s in selected)
                                    for t in TASK_TYPES},
              "duplicates": [{"id": d.id, "duplicate_of": keep} for d, keep in dropped],
              "load": load_report or {}}
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True))
    _histogram_png(list(pass_rates.values()), cfg, out / "pass_rates.png")
    return SelectResult(final, report, out, True, pass_rates)


def _histogram_png(rates: list[float], cfg: SelectConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    edges = [(i - 0.5) / cfg.k for i in range(cfg.k + 2)]
    ax.hist(rates, bins=edges, color="#4C72B0", edgecolor="white")
    for b in cfg.pass_band:
        ax.axvline(b, color="#C44E52", linestyle="--")
    ax.set_xlabel("pass rate")
    ax.set_ylabel("prompts")
    ax.set_title(f"pass rates (k={cfg.k})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)

"""The data engine: build a Mixed-45K-style mix from candidate pools.

1. **Dedup**: two candidates are *near duplicates* when they have the same task type, the same
   normalised question (lower case, punctuation removed, whitespace collapsed), the same number
   of images, and every image is the same to a colour-aware comparison: each image is reduced to
   a 16x16 Lanczos thumbnail in CIELAB and two images match when no thumbnail cell differs by
   more than ``MAX_DELTA_E`` = 16 (CIE76 ΔE; see :func:`color_thumbnail`). This is the downscale
   step of Krawetz's average/difference hashes kept in colour instead of reduced to grey
   gradient bits, so re-encoded or lightly resized copies match while a shape recoloured red ->
   blue does not (text-only samples: the same question is the same prompt). Near duplicates are
   *duplicates* only when their answers agree (:func:`answers_agree`): yes/no, chart and
   open-ended answers compare as normalised text or as equal numbers; multiple choice compares
   the chosen option's text (not its letter); math compares the gold with spaces and ``$``
   removed, or as equal numbers (``0.5`` = ``1/2``); grounding boxes agree when, rescaled to the
   first image's pixels, every coordinate is within :func:`~mixed_r1.data.schema.box_tolerance`
   (``max(2 px, 1 %)`` of the side). Of each set of duplicates the first in pool order is kept.
   Near duplicates whose answers disagree are *label conflicts* (the same question on the same
   image with two golds, at least one of them wrong), except for open-ended samples, where
   different reference answers (COCO's five captions of one image) are distinct samples.
   ``conflicts="drop"`` (the default) keeps none of a conflicting group, so the mix trains on
   clean labels; ``conflicts="keep"`` keeps the first sample of each answer. Either way every
   conflict is listed in ``report.json`` (``label_conflicts``) and announced through
   ``progress``.
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
from .schema import BOX_TOLERANCE_PX, LETTERS, TASK_TYPES, Sample, box_tolerance

CONFLICT_POLICIES = ("drop", "keep")
STATE_VERSION = 2  # 2: colour-aware, answer-aware dedup with label conflicts


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
    conflicts: str = "drop"  # label conflicts: "drop" (keep none) or "keep" (one per answer)

    def __post_init__(self) -> None:
        if self.conflicts not in CONFLICT_POLICIES:
            raise ValueError(f"conflicts must be one of {CONFLICT_POLICIES}, "
                             f"got {self.conflicts!r}")
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
    """64-bit difference hash (hex) of an image: sign of horizontal gradients on a 9x8 grey
    (Krawetz, "Kind of Like That", 2013). The engine's dedup key before STATE_VERSION 2; it
    is blind to colour, so kept only for comparison (``tools/dedup_check.py``)."""
    from PIL import Image

    with Image.open(path) as im:
        g = im.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR)
    px = list(g.getdata())
    bits = 0
    for r in range(size):
        for c in range(size):
            bits = (bits << 1) | int(px[r * (size + 1) + c] > px[r * (size + 1) + c + 1])
    return f"{bits:016x}"


THUMB_SIZE = 16
"""Side of the colour thumbnail the dedup compares (:func:`color_thumbnail`)."""
MAX_DELTA_E = 16.0
"""Two images match when no thumbnail cell differs by more than this CIE76 ΔE (a difference
plainly visible side by side; about 2.3 is just noticeable). Chosen on easy-vqa's 64x64 images
(``tools/dedup_check.py``), a hard case where a cell is only 4x4 pixels: resizing moves a cell
by < 4 and JPEG re-encoding at quality 95 by < 16 (at quality 85-90 about 99 % of copies still
match, at 75 about 96 %), while the closest two of 1,000 distinct images (a grey circle and a
grey square in one place) differ by 18. It errs towards keeping a heavily re-compressed copy
rather than merging distinct images or inventing label conflicts."""

_D65 = (0.95047, 1.0, 1.08883)
_SRGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375),
                (0.2126729, 0.7151522, 0.0721750),
                (0.0193339, 0.1191920, 0.9503041))


def _srgb_to_lab(rgb):
    """CIELAB (D65) of 8-bit sRGB values, an ``(..., 3)`` array (IEC 61966-2-1 and CIE 15)."""
    import numpy as np

    c = np.asarray(rgb, dtype=np.float64) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = c @ np.asarray(_SRGB_TO_XYZ).T / np.asarray(_D65)
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], axis=-1)


def color_thumbnail(path: str, size: int = THUMB_SIZE):
    """``(thumbnail, (W, H))``: the image as a ``size x size`` Lanczos thumbnail in CIELAB, a
    ``(size * size, 3)`` float array, and its pixel size. Transparency is composited on white."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        wh = im.size
        im.draft("RGB", (size * 8, size * 8))  # JPEG: decode at a reduced scale (fast, >= 8x)
        if "A" in im.getbands() or "transparency" in im.info:
            rgba = im.convert("RGBA")
            im2 = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)),
                                        rgba).convert("RGB")
        else:
            im2 = im.convert("RGB")
        th = im2.resize((size, size), Image.Resampling.LANCZOS)
    return _srgb_to_lab(np.asarray(th, dtype=np.float64).reshape(-1, 3)), wh


def _number(text: str):
    from fractions import Fraction

    try:
        return Fraction(text.strip())
    except (ValueError, ZeroDivisionError):
        return None


def answer_key(sample: Sample) -> Any:
    """The answer the dedup compares (see :func:`answers_agree`)."""
    sol = sample.solution
    if sample.task_type == "grounding":
        return tuple(float(v) for v in sol)
    if sample.task_type == "multiple_choice" and sample.options:
        s = str(sol).strip().upper()
        if len(s) == 1 and s in LETTERS[:len(sample.options)]:
            sol = sample.options[LETTERS.index(s)]  # the chosen option's text
    text = str(sol)
    if sample.task_type == "math":
        text = text.replace("$", "").replace(" ", "")
    num = _number(text)
    if num is not None:
        return ("number", num)
    return ("text", text if sample.task_type == "math" else normalize_question(text))


def answers_agree(a: Sample, b: Sample, size_a: tuple[int, int] | None = None,
                  size_b: tuple[int, int] | None = None) -> bool:
    """Whether two samples of one task type have the same answer: grounding boxes within
    :func:`~mixed_r1.data.schema.box_tolerance` per coordinate after rescaling ``b``'s box from
    its first image's ``size_b`` to ``a``'s ``size_a``; every other task by :func:`answer_key`."""
    ka, kb = answer_key(a), answer_key(b)
    if a.task_type != "grounding":
        return ka == kb
    wa, ha = size_a or (0, 0)
    sx = wa / size_b[0] if size_a and size_b else 1.0
    sy = ha / size_b[1] if size_a and size_b else 1.0
    tx = box_tolerance(wa) if size_a else BOX_TOLERANCE_PX
    ty = box_tolerance(ha) if size_a else BOX_TOLERANCE_PX
    x1, y1, x2, y2 = kb
    return all(abs(u - v) <= t for u, v, t in
               zip(ka, (x1 * sx, y1 * sy, x2 * sx, y2 * sy), (tx, ty, tx, ty)))


@dataclass
class LabelConflict:
    """Near duplicates (same task, question and images) whose answers disagree: ``ids`` holds
    the first sample of each answer (pool order), ``answers`` their answers, ``members`` every
    sample of the group (their same-answer duplicates included)."""

    ids: list[str]
    answers: list[str]
    members: list[str]

    def to_dict(self) -> dict:
        return {"ids": self.ids, "answers": self.answers, "members": self.members}


@dataclass
class DedupResult:
    """``kept`` (pool order); ``duplicates``: ``(dropped, id of the kept sample with the same
    answer)``; ``conflicts``: every label conflict; ``conflict_dropped``: the samples dropped
    because of one (``conflicts="drop"``; none with ``"keep"``)."""

    kept: list[Sample]
    duplicates: list[tuple[Sample, str]]
    conflicts: list[LabelConflict]
    conflict_dropped: list[Sample]


class _Group:
    """Near duplicates: the anchor's images, then one representative per distinct answer."""

    def __init__(self, sample: Sample, size) -> None:
        self.reps: list[tuple[Sample, Any]] = [(sample, size)]
        self.members: list[Sample] = [sample]


class _Bucket:
    """The groups of one (task, question, number of images), with their first samples'
    thumbnails and mean colours in growing arrays."""

    def __init__(self) -> None:
        self.groups: list[_Group] = []
        self.cells = None  # (capacity, images, cells, 3)
        self.means = None  # (capacity, images, 3)

    def find(self, cells) -> _Group | None:
        """The first group whose first sample's images all match ``cells`` (None: text only,
        where the question is the whole prompt, so the first group)."""
        import numpy as np

        n = len(self.groups)
        if not n or cells is None:
            return self.groups[0] if n else None
        # mean colours first: |difference of means| <= the largest cell difference, so a group
        # whose mean colour is further than MAX_DELTA_E away cannot match
        lim = MAX_DELTA_E ** 2  # squared distances throughout
        dm = ((self.means[:n] - cells.mean(axis=1)) ** 2).sum(-1).max(-1)
        near = np.nonzero(dm <= lim)[0]
        for lo in range(0, len(near), 256):  # in pool order; stop at the first match
            idx = near[lo:lo + 256]
            de = ((self.cells[idx] - cells) ** 2).sum(-1).max(axis=(1, 2))
            hit = np.nonzero(de <= lim)[0]
            if len(hit):
                return self.groups[int(idx[hit[0]])]
        return None

    def add(self, group: _Group, cells) -> None:
        import numpy as np

        n = len(self.groups)
        self.groups.append(group)
        if cells is None:
            return
        if self.cells is None or n == len(self.cells):
            cap = max(8, 2 * n)
            grown = np.empty((cap, *cells.shape))
            means = np.empty((cap, cells.shape[0], 3))
            if n:
                grown[:n], means[:n] = self.cells[:n], self.means[:n]
            self.cells, self.means = grown, means
        self.cells[n] = cells
        self.means[n] = cells.mean(axis=1)


def _answer_text(s: Sample) -> str:
    if s.task_type == "grounding":
        return s.solution_text()
    if s.task_type == "multiple_choice" and s.options:
        k = answer_key(s)
        return f"{s.solution} ({k[1]})"
    return str(s.solution)


def deduplicate(samples: Sequence[Sample], conflicts: str = "drop") -> DedupResult:
    """Apply the module docstring's dedup rule in pool order (deterministic): a sample joins the
    first earlier group whose first sample it near-duplicates, then the first of that group's
    answers it agrees with (a duplicate, dropped) or adds a new answer (a label conflict)."""
    import numpy as np

    if conflicts not in CONFLICT_POLICIES:
        raise ValueError(f"conflicts must be one of {CONFLICT_POLICIES}, got {conflicts!r}")
    if len({s.id for s in samples}) != len(samples):
        raise ValueError("deduplicate: sample ids must be unique")
    thumbs: dict[str, tuple] = {}

    def thumb(path: str):
        if path not in thumbs:
            thumbs[path] = color_thumbnail(path)
        return thumbs[path]

    buckets: dict[tuple, _Bucket] = {}  # per (task, normalised question, number of images)
    groups: list[_Group] = []
    kept_ids: set[str] = set()
    duplicates: list[tuple[Sample, str]] = []
    for s in samples:
        fp = [thumb(p) for p in s.images]
        size = fp[0][1] if fp else None
        bucket = buckets.setdefault(
            (s.task_type, normalize_question(s.question), len(s.images)), _Bucket())
        cells = np.stack([t for t, _ in fp]) if fp else None  # (images, cells, 3)
        group = bucket.find(cells)
        if group is None:
            group = _Group(s, size)
            bucket.add(group, cells)
            groups.append(group)
            kept_ids.add(s.id)
            continue
        group.members.append(s)
        rep = next((r for r, rsize in group.reps if answers_agree(r, s, rsize, size)), None)
        if rep is not None:
            duplicates.append((s, rep.id))
        else:
            group.reps.append((s, size))
            kept_ids.add(s.id)
    found, dropped_ids = [], set()
    for g in groups:
        if len(g.reps) > 1 and g.reps[0][0].task_type != "open_ended":
            found.append(LabelConflict([r.id for r, _ in g.reps],
                                       [_answer_text(r) for r, _ in g.reps],
                                       [m.id for m in g.members]))
            if conflicts == "drop":
                dropped_ids.update(r.id for r, _ in g.reps)
    kept = [s for s in samples if s.id in kept_ids and s.id not in dropped_ids]
    conflict_dropped = [s for s in samples if s.id in dropped_ids]
    return DedupResult(kept, duplicates, found, conflict_dropped)


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
                if old.get("version") != fingerprint.get("version"):
                    raise ValueError(f"{fp_path}: the saved selection state is version "
                                     f"{old.get('version')}, this engine writes version "
                                     f"{fingerprint.get('version')} (its dedup rule changed); "
                                     "use a new --out or delete the state directory")
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
    dd = (deduplicate(candidates, cfg.conflicts) if cfg.dedup
          else DedupResult(list(candidates), [], [], []))
    unique = dd.kept
    if progress and cfg.dedup:
        progress(_dedup_message(dd, cfg.conflicts))
    fp = {"version": STATE_VERSION, "ids": hashlib.sha1("\n".join(s.id for s in unique)
                                                        .encode()).hexdigest(),
          "dedup": cfg.dedup, "conflicts": cfg.conflicts,
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
    return _finish(candidates, dd, pass_rates, cfg, out, load_report)


def _dedup_message(dd: DedupResult, policy: str) -> str:
    msg = f"dedup: {len(dd.duplicates)} duplicates dropped"
    if not dd.conflicts:
        return msg + ", no label conflicts"
    n = sum(len(c.ids) for c in dd.conflicts)
    act = (f"dropped all {len(dd.conflict_dropped)}" if policy == "drop"
           else "kept one per answer")
    eg = "; ".join(" vs ".join(f"{i} ({a})" for i, a in zip(c.ids, c.answers))
                   for c in dd.conflicts[:3])
    return (f"{msg}; {len(dd.conflicts)} label conflicts (same question and image, different "
            f"answers) over {n} samples, {act}, listed in report.json: {eg}")


def _finish(candidates, dd: DedupResult, pass_rates, cfg: SelectConfig, out: Path,
            load_report: dict | None = None) -> SelectResult:
    unique, dropped = dd.kept, dd.duplicates
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
        "candidates": candidates, "duplicates": [d for d, _ in dropped],
        "label_conflicts": dd.conflict_dropped, "scored": unique,
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
              "label_conflicts": {
                  "policy": cfg.conflicts, "groups": len(dd.conflicts),
                  "samples": sum(len(c.members) for c in dd.conflicts),
                  "dropped": len(dd.conflict_dropped),
                  "conflicts": [c.to_dict() for c in dd.conflicts]},
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

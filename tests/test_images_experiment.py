"""tools/multimodal_grpo.py's pipeline (mixed_r1.demo.images): held-out/training disjointness by
pixels, the image-swap control's permutation, the caption rows, and the whole run (assemble,
caption SFT with the LM frozen, task SFT, GRPO, evaluations, swap control, report) on a small Llama in SmolLM2's vocabulary (SmolLM2 itself is the documented
run's: minutes, not seconds)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from mixed_r1.data.schema import Sample


def _pixels(path: str) -> str:
    return hashlib.sha256(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()


def test_swapped_images_is_a_within_task_derangement(tmp_path):
    from mixed_r1.demo.images import swapped_images

    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(p)
        paths.append(str(p))
    held = [Sample(id=f"y{i}", task_type="yes_no", question="q", solution="yes",
                   images=[paths[i]]) for i in range(4)]
    held += [Sample(id=f"c{i}", task_type="chart", question="q", solution="1",
                    images=[paths[4 + i]]) for i in range(2)]
    held += [Sample(id="g", task_type="grounding", question="q", solution=[0, 0, 1, 1],
                    images=[paths[6]])]
    for seed in range(5):
        out = swapped_images(held, seed=seed)
        assert [s.images for s in held] == [[p] for p in paths]  # the originals untouched
        for task, idx in (("yes_no", range(4)), ("chart", range(4, 6))):
            got = [out[i].images[0] for i in idx]
            assert sorted(got) == sorted(paths[i] for i in idx)  # each image used once
            assert all(out[i].images[0] != held[i].images[0] for i in idx)
            assert all(out[i].task_type == task for i in idx)
        assert out[6].images == held[6].images  # a task of one keeps its image


@pytest.mark.slow
def test_the_experiment_end_to_end_on_a_small_lm(tmp_path, capsys):
    from _trainer_util import tiny_text_lm_dir
    from mixed_r1.data import load_samples
    from mixed_r1.demo.images import run
    from mixed_r1.demo.text import paired_change

    lm = tiny_text_lm_dir(tmp_path / "lm")
    out = tmp_path / "exp"
    rep = run(out, lm_dir=lm,
              train_sizes={"yes_no": 6, "multiple_choice": 6, "chart": 2, "grounding": 2,
                           "open_ended": 2, "math": 2},
              heldout_sizes={"yes_no": 3, "multiple_choice": 3, "chart": 2, "grounding": 2},
              caption_overrides=["steps=2", "sft.batch_size=4", "sft.micro_batch_size=4",
                                 "rollout.max_prompt_length=256"],
              sft_overrides=["steps=2", "sft.batch_size=4", "sft.micro_batch_size=4",
                             "rollout.max_prompt_length=256"],  # the small LM: 512 positions
              grpo_overrides=["steps=2", "rollout.prompts_per_step=2", "rollout.group_size=2",
                              "rollout.max_new_tokens=8", "algo.dynamic_sampling=false",
                              "rollout.max_prompt_length=256"],
              eval_max_new_tokens=8, vision={"vision_hidden": 32, "vision_depth": 1,
                                             "vision_heads": 2},
              vision_pretrain={"steps": 3, "batch_size": 4})
    printed = capsys.readouterr().out
    train, _ = load_samples(out / "data" / "train.jsonl")
    held, _ = load_samples(out / "data" / "heldout.jsonl")
    assert len(held) == 10 and {s.task_type for s in held} == {"yes_no", "multiple_choice",
                                                               "chart", "grounding"}
    # no held-out image in the training set, by pixels (independent of the module's digest)
    assert not {_pixels(p) for s in train for p in s.images} & \
        {_pixels(p) for s in held for p in s.images}
    assert all("test" in s.source for s in held if s.task_type in ("yes_no", "multiple_choice"))
    # captions of the training set's easy-vqa images only, each image once
    caps, _ = load_samples(out / "data" / "captions.jsonl")
    evqa = {p for s in train if s.task_type in ("yes_no", "multiple_choice") for p in s.images}
    assert caps and {p for s in caps for p in s.images} <= evqa
    assert len({s.images[0] for s in caps}) == len(caps)
    assert all(s.solution.startswith("a ") and len(s.solution.split()) == 3 for s in caps)
    # both warm-start stages and GRPO ran their steps, each from the one before's export; the
    # caption stage left the language model as it was
    for stage in ("captions", "sft"):
        rows = (out / stage / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(r)["step"] for r in rows] == [1, 2], stage
    assert rep["sft_config"]["model"]["path"] == str(out / "captions" / "model")
    assert rep["config"]["model"]["path"] == str(out / "sft" / "model")
    from safetensors.torch import load_file
    import torch

    assembled = load_file(str(out / "policy" / "model.safetensors"))
    start = load_file(str(out / "vision" / "model.safetensors"))
    stage1 = load_file(str(out / "captions" / "model" / "model.safetensors"))
    vision = ("visual.", "model.visual.")  # the tower and merger, as the checkpoint names them
    lm_names = [k for k in start if not k.startswith(vision)]
    assert set(start) == set(assembled) and lm_names
    # stage 0 trained the tower and merger (from the assembled policy), not the language model
    assert all(torch.equal(assembled[k], start[k]) for k in lm_names)
    assert any(not torch.equal(assembled[k], start[k]) for k in start if k.startswith(vision))
    assert rep["vision_pretrain"]["steps"] == 3 and rep["vision_pretrain"]["images"] > 0
    assert rep["caption_config"]["model"]["path"] == str(out / "vision")
    # the caption stage left the language model as it was
    assert all(torch.equal(start[k].to(stage1[k].dtype), stage1[k]) for k in lm_names)
    assert any(not torch.equal(start[k], stage1[k]) for k in start if k.startswith(vision))
    assert len(rep["train_rewards"]) == 2 and (out / "run" / "model" / "config.json").is_file()
    assert json.loads((out / "policy" / "mixed_r1_assembly.json").read_text())[
        "vision_hidden"] == 32
    # the table's numbers are the paired change of the two evaluations; the swap control's too
    for task in ("yes_no", "overall"):
        idx = [i for i, s in enumerate(held) if task == "overall" or s.task_type == task]
        want = paired_change([rep["before"]["sample_accuracy"][i] for i in idx],
                             [rep["after"]["sample_accuracy"][i] for i in idx])
        assert rep["changes"][task]["diff"] == pytest.approx(want["diff"])
    swap = paired_change(rep["swapped"]["sample_accuracy"], rep["after"]["sample_accuracy"])
    assert rep["swap_control"]["diff"] == pytest.approx(swap["diff"])
    assert "image-swap control" in printed and "held-out image-task accuracy" in printed
    assert (out / "report.json").is_file()

"""Prompt builder, collator and grounding-box rescaling against the processor's resize."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mixed_r1.data import Sample
from mixed_r1.data.prompts import (THINK_INSTRUCTION, Collator, build_messages, question_text,
                                   rescale_box, resized_hw)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor

    return build_qwen25vl_processor(min_pixels=56 * 56, max_pixels=128 * 28 * 28,
                                    cache_dir=tmp_path_factory.mktemp("tok") / "qwen")


def _scene(tmp: Path, w: int, h: int, box: tuple[int, int, int, int]) -> str:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    img.paste((255, 0, 0), box)  # pixels box[0]..box[2]-1 x box[1]..box[3]-1
    p = tmp / f"s{w}x{h}.png"
    img.save(p)
    return str(p)


def test_messages_and_template(processor, tmp_path: Path) -> None:
    img = _scene(tmp_path, 60, 40, (5, 5, 20, 20))
    s = Sample(id="m", task_type="multiple_choice", question="Which colour?",
               solution="A", options=["red", "blue"], images=[img, img])
    msgs = build_messages(s)
    assert [c["type"] for c in msgs[0]["content"]] == ["image", "image", "text"]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    assert "A. red\nB. blue" in text and THINK_INSTRUCTION in text
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    own = Sample(id="o", task_type="open_ended", question="q", solution="a",
                 messages=[{"role": "user", "content": "Say hi."}])
    assert build_messages(own)[0]["content"] == "Say hi.\n" + THINK_INSTRUCTION


def test_text_only_sample_is_one_string_turn_rendered_like_the_list_form(processor) -> None:
    s = Sample(id="t", task_type="math", question="What is 2 + 3?", solution="5")
    msgs = build_messages(s)
    assert msgs == [{"role": "user", "content": question_text(s)}]  # text-only templates need str
    as_list = [{"role": "user", "content": [{"type": "text", "text": question_text(s)}]}]
    for render in (processor.apply_chat_template, processor.tokenizer.apply_chat_template):
        assert (render(msgs, tokenize=False, add_generation_prompt=True)
                == render(as_list, tokenize=False, add_generation_prompt=True))


def test_collator_batches_pixels_and_placeholders(processor, tmp_path: Path) -> None:
    a = _scene(tmp_path, 90, 70, (10, 10, 40, 40))
    b = _scene(tmp_path, 300, 200, (100, 50, 200, 150))
    samples = [Sample(id="1", task_type="yes_no", question="Red?", solution="yes", images=[a]),
               Sample(id="2", task_type="grounding", question="Find red.",
                      solution=[100.0, 50.0, 200.0, 150.0], images=[b]),
               Sample(id="3", task_type="math", question="1+1?", solution="2")]
    batch = Collator(processor)(samples)
    grid = batch["image_grid_thw"]
    assert grid.shape == (2, 3)
    assert batch["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    n_pad = int((batch["input_ids"] == 151655).sum())
    assert n_pad == int(grid.prod(-1).sum()) // 4
    am = batch["attention_mask"]
    assert am[:, -1].all() and not am[2, 0]  # left padding; the text-only prompt is shortest
    # grounding solution moved to the resized frame, others untouched
    h2, w2 = int(grid[1, 1]) * 14, int(grid[1, 2]) * 14
    assert batch["solutions"][1] == pytest.approx([100 * w2 / 300, 50 * h2 / 200,
                                                   200 * w2 / 300, 150 * h2 / 200], abs=0.01)
    assert batch["solutions"][0] == "yes" and samples[1].solution == [100.0, 50.0, 200.0, 150.0]


@pytest.mark.parametrize("w,h,box", [(333, 250, (40, 30, 200, 170)),   # mild resize
                                     (900, 700, (100, 300, 700, 650)),  # above max_pixels
                                     (50, 41, (5, 6, 30, 33)),           # below min_pixels
                                     (640, 120, (600, 10, 640, 110))])   # wide, box at edge
def test_box_rescale_matches_processor_resize(processor, tmp_path: Path, w, h, box) -> None:
    path = _scene(tmp_path, w, h, box)
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"],
                    images=[Image.open(path).convert("RGB")], return_tensors="pt")
    _, gh, gw = (int(v) for v in out["image_grid_thw"][0])
    assert resized_hw(h, w, processor) == (gh * 14, gw * 14)
    rh, rw = gh * 14, gw * 14
    scaled = rescale_box(box, (h, w), (rh, rw))
    # independent check: the red region of the image resized to the processor's size
    resized = np.asarray(Image.open(path).convert("RGB").resize((rw, rh), Image.Resampling.BICUBIC))
    red = (resized[..., 0] > 200) & (resized[..., 1] < 80) & (resized[..., 2] < 80)
    ys, xs = np.nonzero(red)
    found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert scaled == pytest.approx(found, abs=1.6)
    assert rescale_box(scaled, (rh, rw), (h, w)) == pytest.approx(list(box))


def test_prompt_template_reaches_rollouts_export_and_eval(tmp_path: Path) -> None:
    """``data.system_prompt`` / ``data.instruction`` (issue 31, item 10: the ``<think>``
    instruction was fixed in code): every rollout prompt carries the system turn and the new
    instruction instead of Mixed-R1's; the export saves the template and eval's prompts (built by
    ``generate_eval`` from the loaded template) are the ones training used."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _trainer_util import make_data, tiny_overrides

    from mixed_r1.config import load_config
    from mixed_r1.data.prompts import PROMPT_TEMPLATE_FILE, PromptTemplate
    from mixed_r1.evaluate import generate_eval
    from mixed_r1.models.processor import chat_prompt
    from mixed_r1.rollout import Completion
    from mixed_r1.trainer import build_trainer

    data = make_data(tmp_path / "data")
    cfg = load_config(None, tiny_overrides(data, tmp_path / "run", steps=1) + [
        "data.system_prompt=You are a careful grader.",
        "data.instruction=Reply with <answer>X</answer> only."])
    trainer = build_trainer(cfg, tmp_path / "run")
    ro = trainer.rollout(1)
    assert ro.prompt_texts and all(
        "You are a careful grader." in t and "Reply with <answer>X</answer> only." in t
        and THINK_INSTRUCTION not in t for t in ro.prompt_texts)
    model_dir = trainer.export_model()
    assert PromptTemplate.load(model_dir) == PromptTemplate(
        "You are a careful grader.", "Reply with <answer>X</answer> only.")

    class RecordingGenerator:  # a stand-in generator: records the prompts eval would send
        prompts: list = []

        def generate(self, prompts, n, params):
            self.prompts.extend(prompts)
            return [Completion(prompt_index=i, text="", token_ids=[], logprobs=[]) for i in
                    range(len(prompts))]

    gen = RecordingGenerator()
    samples = ro.samples
    generate_eval(gen, samples, template=PromptTemplate.load(model_dir))
    assert [chat_prompt(trainer.processor, p.messages) for p in gen.prompts] == ro.prompt_texts
    (model_dir / PROMPT_TEMPLATE_FILE).write_text('{"instruction": 3}')
    with pytest.raises(ValueError, match="prompt_template.json: expected"):
        PromptTemplate.load(model_dir)


def test_an_empty_instruction_leaves_the_question_alone(processor) -> None:
    s = Sample(id="m", task_type="math", question="What is 2 + 2?", solution="4")
    assert question_text(s, "") == "What is 2 + 2?\nGive the final answer as a number or a " \
                                   "LaTeX expression."
    msgs = build_messages(s, system="S", instruction="")
    assert msgs == [{"role": "system", "content": "S"},
                    {"role": "user", "content": question_text(s, "")}]

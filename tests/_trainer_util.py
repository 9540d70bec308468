"""Shared tiny setup for the trainer tests (a 2-per-task synthetic set, a tiny policy)."""
from __future__ import annotations

import socket
from pathlib import Path

TASKS = ("yes_no", "multiple_choice", "chart", "math", "grounding", "open_ended")


def make_data(root: Path, per_task: int = 2) -> Path:
    from mixed_r1.data.synth import SynthConfig, synthesize

    return synthesize(root, SynthConfig(seed=0, sizes={t: per_task for t in TASKS}))


def tiny_overrides(data_file: Path, out_dir: Path, steps: int = 3) -> list[str]:
    return [f"data.train_file={data_file}", f"out_dir={out_dir}", f"steps={steps}",
            "model.hidden_size=32", "model.intermediate_size=64", "model.num_heads=2",
            "model.num_kv_heads=1", "model.vision_hidden=16", "model.vision_depth=1",
            "model.max_pixels=12544", "rollout.prompts_per_step=2", "rollout.group_size=4",
            "rollout.max_new_tokens=6", "algo.micro_batch_size=4", "optim.lr=3e-3",
            "progress=false", "tensorboard=false", "reward.math_timeout_s=2"]


VOLATILE = ("time/", "perf/")  # wall-clock numbers differ between runs


def stable_metrics(rows: list[dict]) -> list[dict]:
    """Metrics rows without their wall-clock keys: equal between runs that compute the same."""
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in rows]


def write_config(path: Path, overrides: list[str]) -> Path:
    """``key.sub=value`` overrides as a nested YAML config file (``mixed-r1 train --config``)."""
    import yaml

    nested: dict = {}
    for item in overrides:
        key, val = item.split("=", 1)
        node = nested
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(val)
    path.write_text(yaml.safe_dump(nested))
    return path


def exported_weights(run_dir: Path) -> dict:
    """The tensors of a run's final export, ``<run>/model/model.safetensors``."""
    from safetensors.torch import load_file

    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def differing_tensors(a: dict, b: dict) -> list[str]:
    """Names whose tensors are not bit-identical in ``a`` and ``b`` (or are in only one)."""
    return sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b))
                                      if a[k].dtype != b[k].dtype or not a[k].equal(b[k])]


def spread_rewards(trainer) -> None:
    """Score ``trainer``'s rollouts with its real reward, the total replaced by a deterministic
    hash of the completion text spread over [0, 1], so groups are never tied and advantages are
    non-zero (a random tiny policy never earns a real reward). Sets ``trainer.reward``."""
    real = trainer.reward

    def spread(texts, samples):
        scored = real(texts, samples)
        scored.total = [(sum(map(ord, t)) % 5) / 4 for t in texts]
        return scored

    trainer.reward = spread


def free_port() -> int:
    """A free local TCP port (for MASTER_PORT / torchrun's --master_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smollm2_tiny_llama(hidden: int, kv_heads: int, max_positions: int, heads: int = 2):
    """(a seeded random float32 Llama with ``hidden`` width, 2 layers and ``heads`` heads over
    ``kv_heads`` key/value heads, SmolLM2's real tokenizer): a text LM in SmolLM2's vocabulary."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from _cache import smollm2_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())  # the GGUF's, saved once
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).float(), tok


def tiny_text_lm_dir(root: Path, hidden: int = 64, kv_heads: int = 1, heads: int = 2) -> Path:
    """An HF directory of :func:`smollm2_tiny_llama` (SmolLM2's tokenizer and chat template, its
    eos in generation_config.json): a Llama checkpoint as a user has one, in seconds."""
    from transformers import GenerationConfig

    d = Path(root)
    model, tok = smollm2_tiny_llama(hidden=hidden, kv_heads=kv_heads, max_positions=512,
                                    heads=heads)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id],
                     pad_token_id=tok.pad_token_id).save_pretrained(d)
    return d


def assembled_vl_dir(root: Path) -> tuple[Path, Path]:
    """(the Llama directory, the Qwen2.5-VL directory ``mixed-r1 convert lm-to-qwen25vl`` assembles
    from it): :func:`tiny_text_lm_dir` with 4 heads over 2 key/value groups (so TP=2 splits them
    and each rank holds a grouped-query pair), SmolLM2's vocabulary plus the 5 vision tokens
    (49,157: odd, padded for TP), tied embeddings; a 2-block vision tower of width 32."""
    from mixed_r1.models.qwen25vl.assemble import assemble_qwen25vl

    root = Path(root)
    lm = tiny_text_lm_dir(root / "llama", hidden=64, kv_heads=2, heads=4)
    return lm, assemble_qwen25vl(lm, root / "llama_vl", vision_hidden=32, vision_depth=2,
                                 vision_heads=2, seed=0)

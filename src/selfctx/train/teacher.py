"""The distillation teacher: the frozen base model reading a training sample raw, with full attention.

Its next-token distributions are kept as top-k log-probabilities per position (`TeacherTargets`), computed
once per sample and optionally cached on disk: one safetensors file per (model, tokenizer, k, sample ids),
written atomically, so the teacher pass is paid once across epochs and experts and a kill loses nothing
already written.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from selfctx.compress.train_loss import TeacherTargets
from selfctx.fsutil import atomic_open

log = logging.getLogger(__name__)
_CHUNK = 1024  # positions per lm_head call


@torch.no_grad()
def teacher_topk(model: Any, input_ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's top-k next tokens and log-probabilities at every position of (B, N) ids -> (B, N, k) each.

    Full attention over the whole input through the model's own forward (its attention implementation)."""
    hidden = model.model(input_ids=input_ids).last_hidden_state  # (B, N, D), normed
    head = model.lm_head
    ids, logprobs = [], []
    for first in range(0, hidden.shape[1], _CHUNK):
        logp = torch.log_softmax(head(hidden[:, first : first + _CHUNK]).float(), dim=-1)  # (B, T, V)
        top = logp.topk(top_k, dim=-1)
        ids.append(top.indices)
        logprobs.append(top.values)
    return torch.cat(ids, dim=1), torch.cat(logprobs, dim=1)


class Teacher:
    """Top-k teacher outputs for training samples, from `cache_dir` when already computed there.

    `identity` names the model and tokenizer (it is part of every cache key, so two models never share an
    entry); samples longer than the model's positions have no teacher (None), and the caller falls back."""

    def __init__(self, model: Any, identity: str, top_k: int, cache_dir: str | Path | None = None) -> None:
        self.model = model
        self.top_k = int(top_k)
        self.identity = identity
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._warned = False

    def _key(self, ids: torch.Tensor) -> str:
        digest = hashlib.sha256(f"{self.identity}|k={self.top_k}|".encode())
        digest.update(ids.detach().cpu().to(torch.int64).numpy().tobytes())
        return digest.hexdigest()

    def _path(self, key: str) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / key[:2] / f"{key}.safetensors"

    def reads(self, n_tokens: int) -> bool:
        """Whether the teacher can read a sample of `n_tokens` tokens (its model's positions)."""
        return not self.max_positions or n_tokens <= self.max_positions

    def topk(self, row: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(N, k) ids and log-probabilities for one sample's ids (N,), or None past the model's positions."""
        if not self.reads(row.numel()):
            if not self._warned:
                log.warning(
                    "a %d-token sample is longer than the teacher's %d positions: it trains without "
                    "distillation (next-token loss only)",
                    row.numel(),
                    self.max_positions,
                )
                self._warned = True
            return None
        key = self._key(row) if self.cache_dir else ""
        if self.cache_dir and self._path(key).is_file():
            saved = load_file(str(self._path(key)), device=str(row.device))
            return saved["ids"].long(), saved["logprobs"].float()
        ids, logprobs = teacher_topk(self.model, row[None], self.top_k)
        ids, logprobs = ids[0], logprobs[0]
        if self.cache_dir:
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tensors = {"ids": ids.to(torch.int32).cpu(), "logprobs": logprobs.cpu().contiguous()}
            with atomic_open(path, "wb") as handle:
                handle.write(save(tensors))
        return ids, logprobs

    def targets(
        self, input_ids: torch.Tensor, mask: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> TeacherTargets | None:
        """Teacher targets for a right-padded batch (B, N) at `mask` (B, N); None when any row has no teacher.

        Each row is read (and cached) at its own length (`lengths`, default N), so its padding never enters
        the teacher or the cache key; padded positions get filler outputs that `mask` must exclude."""
        batch, width = input_ids.shape
        ids = torch.zeros(batch, width, self.top_k, dtype=torch.long, device=input_ids.device)
        logprobs = torch.full((batch, width, self.top_k), -30.0, device=input_ids.device)
        for b in range(batch):
            n = int(lengths[b]) if lengths is not None else width
            row = self.topk(input_ids[b, :n])
            if row is None:
                return None
            ids[b, :n], logprobs[b, :n] = row[0].to(ids.device), row[1].to(logprobs.device)
        return TeacherTargets(ids=ids, logprobs=logprobs, mask=mask)

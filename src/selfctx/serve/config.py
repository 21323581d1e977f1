"""Server limits and knobs (one frozen dataclass, filled from CLI options)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfctx.errors import SelfctxError

MODEL_ALIAS = "selfctx"  # accepted as `model` by every server, whatever it serves


@dataclass(frozen=True)
class ServeConfig:
    """Limits are per request unless said otherwise.

    answer_budget: tokens reserved for question + answer when routing a context to an expert. It is fixed per
    server (not per request) so the same document always gets the same expert and thus the same memory key;
    a request whose question + max_tokens exceed it is refused with 400 (after the last user message was cut
    down to fit it, see `selfctx.serve.context`).

    model_name: the model /v1/models lists; requests naming another model than it (or than the generic alias
    "selfctx") are refused with 404 model_not_found; requests naming none are served.
    """

    model_name: str = "selfctx"
    max_input_tokens: int = 131_072  # context + question tokens
    max_body_bytes: int = 8 * 2**20
    max_inflight: int = 256  # accepted requests not yet answered (queued or decoding); more -> 429
    max_batch: int = 64  # requests sharing one memory decoded together
    answer_budget: int = 512
    default_max_tokens: int = 128
    memory_budget_mb: float = 1024.0  # in-RAM LRU of compressed memories
    memory_dir: Path | None = None  # persist memories here so another process reuses them
    reuse: bool = True  # False: every request compresses its own context (the benchmark's baseline)

    def __post_init__(self) -> None:
        positive = {
            "max_input_tokens": self.max_input_tokens,
            "max_body_bytes": self.max_body_bytes,
            "max_inflight": self.max_inflight,
            "max_batch": self.max_batch,
            "answer_budget": self.answer_budget,
            "default_max_tokens": self.default_max_tokens,
        }
        for name, value in positive.items():
            if value < 1:
                raise SelfctxError(f"{name} must be at least 1 (got {value}): pass a positive number")
        if self.memory_budget_mb < 0:
            raise SelfctxError("memory budget must be >= 0 MB (0 keeps nothing in RAM)")

    def serves(self, model: str | None) -> bool:
        return model is None or model in (self.model_name, MODEL_ALIAS)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * 2**20)

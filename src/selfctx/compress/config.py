"""What a battery of memory experts is and the window mechanism it reads through, in one typed record.

Training builds a battery from it, battery.json saves it (key "compressor"), and
`CompressedLM.from_pretrained` reads it back: a setting left unset at inference is the trained one.

    config = CompressorConfig(ratios=(4, 8), window=64, native_context=1024, sink=1, memory_input="span_last")
    config.override(window=None, sink=0)   # the unset (None) values keep the trained ones

The defaults are those of an untrained battery (window 1024, no sink, one shared memory embedding); the
training recipes set their own (`selfctx.train.experts.ExpertSettings`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from selfctx.checks import MemoryInput
from selfctx.errors import SelfctxError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_RATIOS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DEFAULT_WINDOW = 1024
GROUP_TOKENS = 8192
Kind = Literal["lora", "mha_clone"]
LoraOn = Literal["memory", "all"]
AttentionPattern = Literal["full-coverage", "segmentation", "step-expansion"]
# the window mechanism as battery.json wrote it before "compressor" existed (still written, for older readers)
MECHANISM_KEYS = ("window", "native_context", "pattern", "sink")


@dataclass(frozen=True)
class CompressorConfig:
    """The experts (kind, ratios, LoRA shape, memory-token input) and the mechanism they read through
    (window, native context, attention pattern, batching, raw sink tokens)."""

    kind: Kind = "lora"
    ratios: tuple[int, ...] = DEFAULT_RATIOS
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = PROJECTIONS
    lora_on: LoraOn = "memory"  # the LoRA delta on memory-token rows only, or on every row (ablation)
    memory_input: MemoryInput = "shared"
    window: int = DEFAULT_WINDOW
    native_context: int | None = None  # the window treated as native (None: the model's own)
    pattern: AttentionPattern = "full-coverage"
    group_tokens: int = GROUP_TOKENS  # raw + memory tokens per batched forward (several windows per forward)
    sink: int = 0  # the input's first tokens kept raw at position 0 (never compressed)

    def __post_init__(self) -> None:
        if self.kind not in ("lora", "mha_clone"):
            raise SelfctxError(f"unknown expert kind {self.kind!r}: use lora or mha_clone")
        if not self.ratios or min(self.ratios) < 2:
            raise SelfctxError(f"ratios must be integers >= 2, got {list(self.ratios)}")
        bad_targets = [t for t in self.targets if t not in PROJECTIONS]
        if bad_targets:
            raise SelfctxError(
                f"unknown LoRA target {bad_targets[0]!r}: choose from {', '.join(PROJECTIONS)}"
            )
        if self.window < 1 or self.group_tokens < 1:
            raise SelfctxError(
                f"window and group_tokens must be >= 1, got {self.window}, {self.group_tokens}"
            )
        bad = [r for r in self.ratios if self.window % r]
        if bad:
            raise SelfctxError(
                f"window {self.window} is not divisible by ratio {bad[0]}: pick a window that is"
            )
        if self.sink < 0:
            raise SelfctxError(f"sink must be >= 0 raw tokens, got {self.sink}")
        if self.native_context is not None and self.window >= self.native_context:
            raise SelfctxError(
                f"window {self.window} must be smaller than the native context (native_context) "
                f"{self.native_context}: lower the window or raise the native context"
            )

    def override(self, **given: Any) -> CompressorConfig:
        """This config with every given value that is not None (an unset option keeps what was trained)."""
        return dataclasses.replace(self, **{k: v for k, v in given.items() if v is not None})

    def compressor_only(self) -> CompressorConfig:
        """This config as a plain CompressorConfig (a recipe's subclass adds training-only settings)."""
        return CompressorConfig(
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(CompressorConfig)}
        )

    def mechanism(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in MECHANISM_KEYS}

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(CompressorConfig)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @staticmethod
    def from_battery_json(meta: dict[str, Any], adapter: dict[str, Any] | None = None) -> CompressorConfig:
        """The config a battery.json records. Batteries saved before "compressor" existed: their "mechanism"
        and the first expert's expert_config.json (`adapter`); what neither says is what those versions
        used (no sink, a shared memory embedding, 8192 tokens a group)."""
        if isinstance(meta.get("compressor"), dict):
            data = dict(meta["compressor"])
        else:
            adapter = adapter or {}
            data = {key: adapter[key] for key in ("rank", "alpha", "targets", "lora_on") if key in adapter}
            data["memory_input"] = adapter.get("memory_input", "shared")
            data.update({k: v for k, v in (meta.get("mechanism") or {}).items() if v is not None})
            data.update(kind=meta.get("kind", "lora"), ratios=meta["ratios"])
        for key in ("ratios", "targets"):
            if key in data:
                data[key] = tuple(data[key])
        known = {f.name for f in dataclasses.fields(CompressorConfig)}
        return CompressorConfig(**{k: v for k, v in data.items() if k in known})

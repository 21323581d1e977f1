"""Training configuration: one frozen dataclass per concern, filled by `selfctx.config.load_config`.

    cfg = load_config(FinetuneConfig, "configs/train-7b-yarn.yaml", ["optim.lr=1e-4"])

`LoopConfig` is everything the generic loop needs (optimizer, schedule, precision, checkpoints, logging);
`DataConfig` describes the data mix; `FinetuneConfig` adds the model, RoPE scaling and LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0  # 0 turns clipping off
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")


@dataclass(frozen=True)
class LoopConfig:
    """The generic loop: steps, batch geometry, precision, checkpoints and logs."""

    output_dir: str = "runs/train"
    max_steps: int = 100
    micro_batch_size: int = 1  # sequences per forward pass on one process
    grad_accum_steps: int = 1  # micro-batches per optimizer step on one process
    seed: int = 0
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    device: str | None = None  # None: cuda if available (cuda:<local rank> under torchrun), else cpu
    gradient_checkpointing: bool = False
    save_every: int = 50  # optimizer steps between checkpoints (the last step is always saved)
    # stop at the first step past this many seconds of one sitting, checkpointed (the same command resumes)
    time_limit_s: float | None = None
    # stop, checkpointed, at this step while the lr schedule still runs to max_steps: the first N steps of a
    # longer run (a comparison matched to another run's step-N snapshot); raise it and rerun to go on
    stop_at_step: int | None = None
    keep_checkpoints: int = 2
    log_every: int = 1
    tensorboard: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "micro_batch_size",
            "grad_accum_steps",
            "save_every",
            "keep_checkpoints",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.time_limit_s is not None and self.time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0 seconds, got {self.time_limit_s}")
        if self.stop_at_step is not None and not 1 <= self.stop_at_step <= self.max_steps:
            raise ValueError(f"stop_at_step must be 1..{self.max_steps} (max_steps), got {self.stop_at_step}")


@dataclass(frozen=True)
class DataSource:
    """One ingredient of the mix.

    kind: `synth` = a `selfctx synth` output folder (DIR/data/*.jsonl, chat `messages`, answer-only loss);
    `chat` = a .jsonl file (or folder of them) of `messages` (answer-only loss); `text` = .txt files or .jsonl
    with a `text` field (a `selfctx synth` pool folder works: the model's own passages), concatenated and cut
    into sequences of `data.max_tokens` (language modelling); `recall` = a built-in key -> value recall task
    generated in code (`max_samples_per_source` samples, default 64): without a path records only (smoke runs
    and tests), with a text path facts hidden among those passages (see `selfctx.train.recall`); `repeat` =
    a built-in reconstruction task on a text path: a stretch of a passage, then "repeat it word for word" and
    the same stretch as the answer, so every token of the compressed text is a target (ICAE's autoencoding).
    `facts_per_1k` (recall with a path only): dense recall, that many facts per 1,000 tokens of the sample (at
    least one), every one asked in a turn of its own, instead of 1-3 facts with one asked. `fact_values`
    (recall with a path only): what a fact holds, `numbers` (4-7 digits), `phrases` (a few words of a pool
    passage, to be written back word for word) or `mixed` (each fact one or the other). `length_unit`
    (recall): what the lengths drawn from min_tokens..max_tokens count: `tokens` (each sample is made that
    long), or `chars` (drawn in characters, the sample kept once its token count falls within the range:
    what every recall source got before 2026-12-01, about a quarter of the length in tokens with SmolLM2's
    tokenizer; the smollm2-cpu preset keeps it so its runs stay what they were).
    """

    kind: Literal["synth", "chat", "text", "recall", "repeat"]
    path: str = ""
    weight: float = 1.0
    facts_per_1k: float | None = None
    fact_values: Literal["numbers", "phrases", "mixed"] = "numbers"
    length_unit: Literal["tokens", "chars"] = "tokens"

    def __post_init__(self) -> None:
        if self.weight <= 0:
            raise ValueError(f"data source {self.path}: weight must be > 0, got {self.weight}")
        if self.kind == "repeat" and not self.path:
            raise ValueError("a repeat data source needs a path: the passages it repeats (a synth pool)")
        dense = self.facts_per_1k
        if dense is not None and (self.kind != "recall" or not self.path or dense <= 0):
            raise ValueError(
                f"facts_per_1k={dense}: only a recall source with a path takes it, and it must be > 0"
            )
        if self.length_unit not in ("tokens", "chars") or (
            self.length_unit != "tokens" and self.kind != "recall"
        ):
            raise ValueError(
                f"length_unit={self.length_unit}: tokens, or chars for a recall source (its legacy lengths)"
            )
        if self.fact_values != "numbers" and (self.kind != "recall" or not self.path):
            raise ValueError(
                f"fact_values={self.fact_values}: only a recall source with a path (passages) takes it"
            )


@dataclass(frozen=True)
class DataConfig:
    sources: list[DataSource] = field(default_factory=list)
    max_tokens: int = 2048  # longer chat samples are dropped; text is packed into sequences this long
    min_tokens: int = 8  # shorter samples are dropped
    max_samples_per_source: int | None = None  # read at most this many rows per source (quick runs)
    # curriculum: over the first ramp_samples samples the longest allowed sample grows linearly from
    # ramp_start_tokens (0: min_tokens) to max_tokens — short samples (many cheap steps) before long ones
    ramp_samples: int = 0
    ramp_start_tokens: int = 0

    def __post_init__(self) -> None:
        if self.max_tokens < 2 or self.min_tokens < 1 or self.min_tokens > self.max_tokens:
            raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")


@dataclass(frozen=True)
class RopeConfig:
    """Extend the window with a RoPE scaling transformers implements (`config.rope_parameters`).

    factor: scale factor; if None it is target_length / original_max_position_embeddings.
    original_max_position_embeddings: the window treated as native (None: the model's own); capping it below
    the real one lets a small model rehearse the recipe (e.g. 2K native x4 = 8K).
    """

    type: Literal["none", "linear", "dynamic", "yarn", "llama3"] = "none"
    factor: float | None = None
    target_length: int | None = None
    original_max_position_embeddings: int | None = None
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass(frozen=True)
class ModelSettings:
    """name: `smollm2-135m` (embedded), a .gguf file, an HF folder / hub id, or `tiny` (random, tests)."""

    name: str = "smollm2-135m"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"


@dataclass(frozen=True)
class FinetuneConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    method: Literal["lora", "full"] = "lora"
    rope: RopeConfig = field(default_factory=RopeConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    save_merged: bool = False  # also write a merged full model (config + safetensors) beside the adapter

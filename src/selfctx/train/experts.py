"""`selfctx train --method experts` (issue #4): train the compression experts on the data mix.

Each LoRA expert trains at its own fixed ratio, one after the other (or one per rank with
`parallel: expert_per_rank` under torchrun), with the shared loop: OUTPUT/r<ratio>/ holds that expert's
checkpoints and log, so a killed run resumes inside the expert it was training and skips finished ones. The
single-compressor baseline (`experts.kind: mha_clone`) trains once, over a seeded mix of the ratios, in
OUTPUT/clone/. The finished battery is written to OUTPUT/experts/ (what `CompressedLM.from_pretrained(base,
experts=...)`, `selfctx generate/eval/serve --experts` load).

Loss: next-token cross-entropy on labelled ordinary tokens (answers for chat/synth samples, every token for
plain text) given the memory of the earlier windows and the raw current window; gradients flow through the
memory across windows into the expert only; the base model stays frozen.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from selfctx.config import to_dict
from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic
from selfctx.train import checkpoint as ckpt
from selfctx.train.config import DataConfig, LoopConfig, ModelSettings
from selfctx.train.data import IGNORE_INDEX, MixBatches, build_mix
from selfctx.train.distributed import DistInfo, barrier, cleanup, init_distributed, resolve_device
from selfctx.train.loop import Trainer, TrainResult

TINY = "tiny"
TINY_INIT = 0.2
EXPERTS_DIR = "experts"


@dataclass(frozen=True)
class ExpertSettings:
    """The battery to train and the window mechanism it is trained under (kept at inference)."""

    kind: Literal["lora", "mha_clone"] = "lora"
    ratios: list[int] = field(default_factory=lambda: [4, 8])
    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    lora_on: Literal["memory", "all"] = "memory"
    window: int = 256
    native_context: int | None = None  # the window treated as native (None: the model's own)
    pattern: Literal["full-coverage", "segmentation", "step-expansion"] = "full-coverage"
    group_tokens: int = 8192  # raw + memory tokens per batched forward (several windows per forward)

    def __post_init__(self) -> None:
        if not self.ratios or min(self.ratios) < 2:
            raise ValueError(f"experts.ratios must be integers >= 2, got {self.ratios}")
        bad = [r for r in self.ratios if self.window % r]
        if bad:
            raise ValueError(f"experts.window {self.window} is not divisible by ratio {bad[0]}")


@dataclass(frozen=True)
class ExpertsConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    experts: ExpertSettings = field(default_factory=ExpertSettings)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # data: every rank trains each expert on its share of the global batch; expert_per_rank: under torchrun,
    # rank k trains ratios k, k+world, ... on the whole batch (no gradient exchange).
    parallel: Literal["data", "expert_per_rank"] = "data"


class CompressionObjective:
    """Summed next-token loss of `CompressedLM.forward_train` at the batch's ratio (the loop normalises)."""

    def __init__(self, ratio: int | None, checkpointing: bool) -> None:
        self.ratio = ratio
        self.checkpointing = checkpointing

    def targets(self, batch: dict[str, Any]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        ratio = int(batch.get("ratio", self.ratio or 0))
        out = model.compressed.forward_train(
            batch["input_ids"], batch["labels"], ratio, checkpointing=self.checkpointing
        )
        return out.loss_sum


class ExpertModule(nn.Module):
    """What the loop trains: the CompressedLM with exactly one adapter's parameters trainable."""

    def __init__(self, compressed: Any) -> None:  # a CompressedLM
        super().__init__()
        self.compressed = compressed

    def select(self, ratio: int) -> None:
        battery: Any = self.compressed.battery
        battery.requires_grad_(False)
        battery.adapter_for(ratio).requires_grad_(True)


class RatioMixBatches:
    """Wraps a batch source so each micro-batch carries a seeded draw from `ratios` (the MHA clone's mix)."""

    def __init__(self, inner: MixBatches, ratios: Sequence[int], seed: int) -> None:
        self.inner = inner
        self.ratios = list(ratios)
        self.seed = seed

    def samples_per_step(self, world: int) -> int:
        return self.inner.samples_per_step(world)

    def micro_batches(self, step: int, rank: int, world: int, device: Any) -> list[dict[str, Any]]:
        batches = self.inner.micro_batches(step, rank, world, device)
        rng = np.random.default_rng([self.seed, 2, step, rank])
        for batch in batches:
            batch["ratio"] = int(rng.choice(self.ratios))
        return batches


@dataclass
class ExpertsResult:
    runs: dict[str, TrainResult]  # by run folder name (r4, r8, ... or clone)
    compressed: nn.Module  # the CompressedLM as trained in this process
    experts_dir: Path | None  # None when the run stopped early


def load_base(
    settings: ModelSettings, seed: int, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """The frozen base model and its tokenizer (`tiny`: a random tiny Llama with a byte tokenizer)."""
    if settings.name == TINY:
        from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

        # A wider init than transformers' 0.02: with tied 0.02-scale embeddings a random tiny model's logits
        # are nearly flat whatever its hidden states, which would leave the experts nothing to learn.
        model = tiny_llama(
            seed=seed, dtype=dtype, vocab_size=TINY_TOKENIZER_VOCAB, initializer_range=TINY_INIT
        )
        return model.to(device), tiny_tokenizer()  # type: ignore[arg-type]
    from selfctx.models import load_causal_lm

    return load_causal_lm(
        settings.name, dtype=dtype, device=str(device), attn_implementation=settings.attn_implementation
    )


def build_compressed(cfg: ExpertsConfig, model: Any, tokenizer: Any) -> Any:
    """A CompressedLM with an untrained battery.

    Seeded, so every rank and every resume builds the same one.
    """
    from selfctx.compress.battery import ExpertBattery
    from selfctx.compress.model import CompressedLM

    e = cfg.experts
    torch.manual_seed(cfg.loop.seed)
    battery = ExpertBattery.create(
        model,
        tuple(e.ratios),
        kind=e.kind,
        rank=e.rank,
        alpha=e.alpha,
        targets=tuple(e.targets),
        lora_on=e.lora_on,
        base_model=cfg.model.name,
    )
    battery.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)
    battery.mechanism = {"window": e.window, "native_context": e.native_context, "pattern": e.pattern}
    return CompressedLM(
        model,
        tokenizer,
        battery,
        window=e.window,
        native_context=e.native_context,
        pattern=e.pattern,
        group_tokens=e.group_tokens,
        name=cfg.model.name,
    )


def run_plan(cfg: ExpertsConfig, info: DistInfo) -> list[tuple[str, list[int]]]:
    """(run folder name, ratios it trains) for this process."""
    if cfg.experts.kind == "mha_clone":
        return [("clone", list(cfg.experts.ratios))]
    ratios = sorted(cfg.experts.ratios)
    if cfg.parallel == "expert_per_rank":
        ratios = ratios[info.rank :: info.world]
    return [(f"r{r}", [r]) for r in ratios]


def _all_runs(cfg: ExpertsConfig) -> list[tuple[str, list[int]]]:
    return run_plan(replace(cfg, parallel="data"), DistInfo())


def run_experts(
    cfg: ExpertsConfig,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> ExpertsResult:
    """Train every expert of the plan (resuming), then write OUTPUT/experts on rank 0.

    `stop_after` stops each expert's loop after that step (tests use it to simulate a kill).
    """
    from selfctx.models import resolve_dtype

    info = init_distributed(cfg.loop.device)
    try:
        device = resolve_device(cfg.loop.device, info)
        dtype = resolve_dtype(cfg.loop.dtype, device.type)
        model, tokenizer = load_base(cfg.model, cfg.loop.seed, device, dtype)
        output = Path(cfg.loop.output_dir)
        if cfg.model.name == TINY and info.is_main:  # an in-memory base: keep it so the experts can be loaded
            model.save_pretrained(str(output / "base"))
            tokenizer.save_pretrained(str(output / "base"))
        compressed = build_compressed(cfg, model, tokenizer)
        module = ExpertModule(compressed)
        mix = build_mix(cfg.data, tokenizer, cfg.loop.seed)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad_id is None:
            raise SelfctxError("the tokenizer has neither a pad nor an eos token: pick another model")
        per_rank = cfg.parallel == "expert_per_rank"
        loop_info = DistInfo() if per_rank else info
        if per_rank and info.enabled and cfg.experts.kind == "mha_clone":
            raise SelfctxError(
                "parallel=expert_per_rank needs LoRA experts (the clone is one model): use data"
            )
        runs: dict[str, TrainResult] = {}
        finished = True
        for name, ratios in run_plan(cfg, info):
            module.select(ratios[0])
            batches: Any = MixBatches(mix, cfg.loop.micro_batch_size, cfg.loop.grad_accum_steps, int(pad_id))
            if len(ratios) > 1:
                batches = RatioMixBatches(batches, ratios, cfg.loop.seed)
            loop = replace(cfg.loop, output_dir=str(output / name))
            objective = CompressionObjective(ratios[0], cfg.loop.gradient_checkpointing)
            trainer = Trainer(
                loop, module, objective, batches, dist_info=loop_info, run_config=cfg, on_step=on_step
            )
            result = trainer.train(stop_after=stop_after)
            runs[name] = result
            finished = finished and result.step >= cfg.loop.max_steps
            if not finished:
                break
        compressed.eval()
        module.select(cfg.experts.ratios[0])
        compressed.battery.requires_grad_(False)
        experts_dir: Path | None = None
        barrier(info)
        if finished and info.is_main:
            experts_dir = save_battery(cfg, module, output)
        barrier(info)
        return ExpertsResult(runs, compressed, experts_dir if finished else None)
    finally:
        cleanup(info)


def save_battery(cfg: ExpertsConfig, module: ExpertModule, output: Path) -> Path:
    """Write OUTPUT/experts atomically from each run's final weights (other ranks may have trained some)."""
    params = dict(module.named_parameters())
    for name, _ in _all_runs(cfg):
        final = ckpt.latest(output / name)
        if final is None or int(_read_step(final)) < cfg.loop.max_steps:
            raise SelfctxError(f"{output / name} has not finished training: rerun the same command")
        saved = load_file(str(final / "trainable.safetensors"))
        with torch.no_grad():
            for key, value in saved.items():
                params[key].copy_(value.to(params[key].device, params[key].dtype))
    target = output / EXPERTS_DIR
    tmp = output / (EXPERTS_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.compressed.battery.save(tmp)
    write_json_atomic(tmp / "selfctx_train.json", to_dict(cfg))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def _read_step(checkpoint_path: Path) -> int:
    import json

    return int(json.loads((checkpoint_path / "state.json").read_text())["step"])

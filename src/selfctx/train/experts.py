"""`selfctx train --method experts`: train the compression experts on the data mix.

Each LoRA expert trains at its own fixed ratio, one after the other (or one per rank with
`parallel: expert_per_rank` under torchrun), with the shared loop: OUTPUT/r<ratio>/ holds that expert's
checkpoints and log, so a killed run resumes inside the expert it was training and skips finished ones. The
single-compressor baseline (`experts.kind: mha_clone`) trains once, over a seeded mix of the ratios, in
OUTPUT/clone/. The finished battery is written to OUTPUT/experts/ (what `CompressedLM.from_pretrained(base,
experts=...)`, `selfctx generate/eval/serve --experts` load).

Loss (`objective`): the KL divergence from the frozen model reading the raw sample with full attention (the
teacher) on every token that reads compressed memory, and/or next-token cross-entropy on labelled ordinary
tokens (answers for chat/synth samples, every token for plain text), each given the memory of the earlier
windows and the raw current window; gradients flow through the memory across windows into the expert only;
the base model stays frozen.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from selfctx.compress.config import CompressorConfig, MemoryInput
from selfctx.config import to_dict
from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic
from selfctx.train import checkpoint as ckpt
from selfctx.train.config import DataConfig, DataSource, LoopConfig, ModelSettings
from selfctx.train.data import MixBatches, build_mix
from selfctx.train.distributed import DistInfo, barrier, resolve_device
from selfctx.train.examples import IGNORE_INDEX
from selfctx.train.loop import Trainer, TrainResult, check_before_loading, check_same_settings
from selfctx.train.session import Session, load_model, open_session

TINY_INIT = 0.2
EXPERTS_DIR = "experts"


@dataclass(frozen=True)
class ExpertSettings(CompressorConfig):
    """The battery to train and the window mechanism it is trained under (the battery keeps it: inference
    uses it unless told otherwise), with training's own defaults, plus how the experts follow each other."""

    ratios: tuple[int, ...] = (4, 8)
    window: int = 256
    sink: int = 1
    memory_input: MemoryInput = "span_last"
    # a LoRA expert that starts training copies the expert trained just before it (list the ratios in the
    # order they should train: e.g. [8, 4, 16] trains x8 from scratch, x4 from x8, then x16 from x4)
    init_from_previous: bool = True
    # a saved battery (OUTPUT/experts, or a --snapshot folder) trained under the same mechanism: each expert
    # it holds starts from its weights (a second stage of training, on a schedule of its own); another ratio
    # starts from the nearest expert (log scale) among the battery's and the one trained just before it
    # (init_from_previous; the latter on a tie). The battery's experts this run does not train are carried
    # into its battery unchanged, so a battery grows one stage at a time.
    init_from: str | None = None


@dataclass(frozen=True)
class ObjectiveSettings:
    """What the experts minimise.

    kind: `lm` = next-token loss on labelled tokens; `distill` = KL from the teacher (the frozen model reading
    the raw sample with full attention) on the tokens that read compressed memory; `mix` = both, weighted.
    distill_on: `all` tokens that read memory, or only the `labels` ones (answers of task samples).
    normalise: `sample` = each sample's terms are averaged over its own tokens, then samples are averaged (an
    answer is not drowned by packed text); `token` = one average over every token of the batch.
    """

    kind: Literal["lm", "distill", "mix"] = "mix"
    lm_weight: float = 1.0
    distill_weight: float = 1.0
    distill_on: Literal["all", "labels"] = "all"
    top_k: int = 32
    normalise: Literal["sample", "token"] = "sample"
    teacher_cache: bool = True  # keep teacher outputs under OUTPUT/teacher-cache (shared by the experts)

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"objective.top_k must be >= 1, got {self.top_k}")
        if self.lm_weight < 0 or self.distill_weight < 0:
            raise ValueError("objective weights must be >= 0")


@dataclass(frozen=True)
class ExpertsConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    experts: ExpertSettings = field(default_factory=ExpertSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    # data: every rank trains each expert on its share of the global batch; expert_per_rank: under torchrun,
    # rank k trains ratios k, k+world, ... on the whole batch (no gradient exchange).
    parallel: Literal["data", "expert_per_rank"] = "data"


class CompressionObjective:
    """The experts' loss at the batch's ratio, from `CompressedLM.forward_train`, as a sum the loop divides
    by `targets` (samples, or tokens under `normalise: token`)."""

    def __init__(
        self,
        ratio: int | None,
        checkpointing: bool,
        settings: ObjectiveSettings | None = None,
        teacher: Any = None,  # a selfctx.train.teacher.Teacher, needed unless kind is lm
        geometry: tuple[int, int] = (0, 0),  # (sink, window): tokens before them read no memory
    ) -> None:
        self.ratio = ratio
        self.checkpointing = checkpointing
        self.settings = settings or ObjectiveSettings(kind="lm", normalise="token")
        self.teacher = teacher
        self.first_reader = sum(geometry)
        self._terms: list[tuple[float, float]] = []  # per sample (next-token loss, KL) means, this step
        if self.settings.kind != "lm" and teacher is None:
            raise ValueError(f"objective {self.settings.kind!r} needs a teacher")

    def _weights(self) -> tuple[float, float]:
        s = self.settings
        return (
            s.lm_weight if s.kind != "distill" else 0.0,
            s.distill_weight if s.kind != "lm" else 0.0,
        )

    def _kl_mask(self, batch: dict[str, Any]) -> torch.Tensor:
        """Positions whose KL counts: they read compressed memory (past the sink and the first window), are
        real tokens, and (distill_on: labels) predict a labelled token."""
        ids = batch["input_ids"]
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, self.first_reader :] = True
        if "attention_mask" in batch:
            mask &= batch["attention_mask"].bool()
        if self.settings.distill_on == "labels":
            labels = batch["labels"]
            mask[:, :-1] &= labels[:, 1:] != IGNORE_INDEX
            mask[:, -1] = False
        return mask

    def targets(self, batch: dict[str, Any]) -> int:
        if self.settings.normalise == "sample":
            return int(batch["input_ids"].shape[0])
        lm_w, kl_w = self._weights()
        if kl_w and not self.teacher.reads(int(batch["input_ids"].shape[1])):  # __call__'s fallback too
            lm_w, kl_w = max(lm_w, 1.0), 0.0
        n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) if lm_w else 0
        return n + (int(self._kl_mask(batch).sum()) if kl_w else 0)

    def __call__(self, model: Any, batch: dict[str, Any]) -> torch.Tensor:
        ratio = int(batch.get("ratio", self.ratio or 0))
        lm_w, kl_w = self._weights()
        teacher = None
        if kl_w:
            lengths = batch["attention_mask"].sum(1) if "attention_mask" in batch else None
            teacher = self.teacher.targets(batch["input_ids"], self._kl_mask(batch), lengths)
        if kl_w and teacher is None:  # longer than the teacher reads: next-token loss only (warned once)
            lm_w, kl_w = max(lm_w, 1.0), 0.0
        out = model.compressed.forward_train(
            batch["input_ids"], batch["labels"], ratio, checkpointing=self.checkpointing, teacher=teacher
        )
        lm_mean = out.lm_sum / out.lm_count.clamp(min=1)  # (B,) each sample's own averages
        kl_mean = out.kl_sum / out.kl_count.clamp(min=1)
        pairs = zip(lm_mean.detach().tolist(), kl_mean.detach().tolist(), strict=True)
        self._terms += [(float(a), float(b)) for a, b in pairs]
        if self.settings.normalise == "token":
            return lm_w * out.lm_sum.sum() + kl_w * out.kl_sum.sum()
        return (lm_w * lm_mean + kl_w * kl_mean).sum()

    def step_metrics(self) -> dict[str, float]:
        """Mean per-sample next-token loss and KL of this rank's samples since the last call (for the log)."""
        terms, self._terms = self._terms, []
        if not terms:
            return {}
        return {"lm": sum(t[0] for t in terms) / len(terms), "kl": sum(t[1] for t in terms) / len(terms)}


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
    """Wraps a batch source so each micro-batch carries a seeded draw from `ratios` (the MHA clone's mix),
    among the ratios whose memory for that batch stays within what the router allows (`fits`)."""

    def __init__(
        self, inner: MixBatches, ratios: Sequence[int], seed: int, longest: dict[int, int] | None = None
    ) -> None:
        self.inner = inner
        self.ratios = list(ratios)
        self.seed = seed
        self.longest = longest or {}

    def samples_per_step(self, world: int) -> int:
        return self.inner.samples_per_step(world)

    def micro_batches(self, step: int, rank: int, world: int, device: Any) -> list[dict[str, Any]]:
        batches = self.inner.micro_batches(step, rank, world, device)
        rng = np.random.default_rng([self.seed, 2, step, rank])
        for batch in batches:
            n = int(batch["input_ids"].shape[1])
            usable = [r for r in self.ratios if n <= self.longest.get(r, n)] or [max(self.ratios)]
            batch["ratio"] = int(rng.choice(usable))
        return batches


@dataclass
class ExpertsResult:
    runs: dict[str, TrainResult]  # by run folder name (r4, r8, ... or clone)
    compressed: nn.Module  # the CompressedLM as trained in this process
    experts_dir: Path | None  # None when the run stopped early


def recipe_sources(synth: str | Path, pool: str | Path) -> list[DataSource]:
    """The smollm2-cpu preset's data mix (its YAML is the one place it is written) over one run's own data:
    task samples from `synth`, the model's passages (facts hidden among them, plain text) from `pool`."""
    from selfctx.train.preset import preset_defaults

    rows = preset_defaults(ExpertsConfig, "experts", "smollm2-cpu")["data"]["sources"]
    return rebase_sources([DataSource(**row) for row in rows], synth, pool)


def rebase_sources(sources: Sequence[DataSource], synth: str | Path, pool: str | Path) -> list[DataSource]:
    """`sources` over one run's own data, every other setting kept: task samples from `synth`, the model's
    passages (recall, repeat, text) from `pool`; chat files keep their paths."""
    folder = {"synth": synth, "recall": pool, "repeat": pool, "text": pool}
    return [replace(s, path=str(folder[s.kind])) if s.kind in folder else s for s in sources]


def load_base(
    settings: ModelSettings, seed: int, device: torch.device, dtype: torch.dtype
) -> tuple[Any, Any]:
    """The frozen base model and its tokenizer (`tiny`: with a wider init, see TINY_INIT)."""
    return load_model(settings, seed, device, dtype, tiny_init=TINY_INIT)


def build_compressed(cfg: ExpertsConfig, model: Any, tokenizer: Any) -> Any:
    """A CompressedLM with an untrained battery.

    Seeded, so every rank and every resume builds the same one.
    """
    from selfctx.compress.battery import ExpertBattery
    from selfctx.compress.model import CompressedLM

    torch.manual_seed(cfg.loop.seed)
    carried = carried_ratios(cfg)
    experts = replace(cfg.experts, ratios=(*cfg.experts.ratios, *carried))
    battery = ExpertBattery.create(model, config=experts, base_model=cfg.model.name)
    battery.for_training(next(model.parameters()).device)
    compressed = CompressedLM(model, tokenizer, battery, name=cfg.model.name)
    for ratio in carried:
        _start_from_battery(ExpertModule(compressed), str(cfg.experts.init_from), ratio, ratio)
    return compressed


def training_length_limit(cfg: ExpertsConfig, compressed: Any, ratio: int) -> int:
    """The longest training sample at `ratio` whose memory plus one window fits the native context — what
    the router allows at inference (question and answer are inside the sample), so training and inference
    see the same memory geometry."""
    from selfctx.compress.battery import longest_supported

    return longest_supported(0, compressed.native_context, compressed.window, (ratio,), compressed.sink)


def run_plan(cfg: ExpertsConfig, info: DistInfo) -> list[tuple[str, list[int]]]:
    """(run folder name, ratios it trains) for this process."""
    if cfg.experts.kind == "mha_clone":
        return [("clone", list(cfg.experts.ratios))]
    ratios = list(cfg.experts.ratios)  # in the order given: the most needed expert can train first
    if cfg.parallel == "expert_per_rank":
        ratios = ratios[info.rank :: info.world]
    return [(f"r{r}", [r]) for r in ratios]


def _all_runs(cfg: ExpertsConfig) -> list[tuple[str, list[int]]]:
    return run_plan(replace(cfg, parallel="data"), DistInfo())


def _check_same_runs(cfg: ExpertsConfig) -> None:
    """Every run folder of the plan that has trained was trained with `cfg`'s settings, and the battery
    `experts.init_from` names (if any) was trained under the same mechanism."""
    # a LoRA expert's run does not depend on the battery's other ratios: more may be added to it later
    per_run = frozenset({"experts.ratios"}) if cfg.experts.kind == "lora" else frozenset()
    for name, _ in _all_runs(cfg):
        check_same_settings(Path(cfg.loop.output_dir) / name, cfg, per_run)
    _init_ratios(cfg)


# What a battery may differ in and still start another run's experts: which ratios it holds, and batching.
_FREE_TO_DIFFER = ("ratios", "group_tokens")


def _init_ratios(cfg: ExpertsConfig) -> tuple[int, ...]:
    """The ratios of the experts `experts.init_from` holds (none without it); a battery trained under another
    mechanism is refused before any model loads."""
    folder = cfg.experts.init_from
    if folder is None:
        return ()
    from selfctx.compress.battery import read_battery_config

    if cfg.experts.kind != "lora":
        raise SelfctxError("experts.init_from starts LoRA experts: unset it for the single compressor")
    saved = read_battery_config(folder, "experts.init_from")
    wanted = cfg.experts.compressor_only()
    for key in CompressorConfig.__dataclass_fields__:
        if key not in _FREE_TO_DIFFER and getattr(saved, key) != getattr(wanted, key):
            raise SelfctxError(
                f"experts.init_from {folder} was trained with {key}={getattr(saved, key)!r}, this run has "
                f"{getattr(wanted, key)!r}: start from a battery trained under the same mechanism"
            )
    return tuple(saved.ratios)


def carried_ratios(cfg: ExpertsConfig) -> tuple[int, ...]:
    """The experts of `experts.init_from` this run does not train: its battery carries them unchanged."""
    return tuple(r for r in _init_ratios(cfg) if r not in cfg.experts.ratios)


def start_source(ratio: int, battery: Sequence[int], previous: int | None) -> tuple[str, int] | None:
    """Where a starting expert's weights come from: ("battery", r) or ("previous", r), the nearest ratio on a
    log scale (an exact match first; the expert trained just before on a tie), or None (untrained)."""
    if ratio in battery:
        return ("battery", ratio)
    candidates = [("previous", previous)] if previous is not None else []
    candidates += [("battery", r) for r in battery]
    if not candidates:
        return None
    return min(candidates, key=lambda c: abs(math.log(ratio / c[1])))  # min keeps the first on a tie


def run_experts(
    cfg: ExpertsConfig,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> ExpertsResult:
    """Train every expert of the plan (resuming), then write OUTPUT/experts on rank 0.

    `stop_after` stops each expert's loop after that step (tests use it to simulate a kill).
    """
    check_before_loading(cfg.model.name, cfg.loop, cfg.data)
    _check_same_runs(cfg)
    with open_session(cfg.model, cfg.loop, tiny_init=TINY_INIT) as session:
        return _train_plan(cfg, session, stop_after, on_step)


def _train_plan(
    cfg: ExpertsConfig,
    session: Session,
    stop_after: int | None,
    on_step: Callable[[int, float], None] | None,
) -> ExpertsResult:
    """Every expert of the plan, one after the other (resuming), then the battery on rank 0."""
    info, model, tokenizer, output = session.info, session.model, session.tokenizer, session.output
    compressed = build_compressed(cfg, model, tokenizer)
    module = ExpertModule(compressed)
    teacher = None
    if cfg.objective.kind != "lm":
        from selfctx.train.teacher import Teacher

        teacher = Teacher(
            model,
            f"{cfg.model.name}|{type(tokenizer).__name__}|{len(tokenizer)}|{session.dtype}",
            cfg.objective.top_k,
            output / "teacher-cache" if cfg.objective.teacher_cache else None,
        )
    longest = {r: training_length_limit(cfg, compressed, r) for r in cfg.experts.ratios}
    mixes: dict[int, Any] = {}
    per_rank = cfg.parallel == "expert_per_rank"
    loop_info = DistInfo() if per_rank else info
    if per_rank and info.enabled and cfg.experts.kind == "mha_clone":
        raise SelfctxError("parallel=expert_per_rank needs LoRA experts (the clone is one model): use data")
    runs: dict[str, TrainResult] = {}
    finished = True
    sitting = time.perf_counter()  # loop.time_limit_s bounds all experts of this command together
    previous: tuple[str, int] | None = None  # (run folder, ratio) of the expert trained just before
    from_battery = _init_ratios(cfg)
    for name, ratios in run_plan(cfg, info):
        module.select(ratios[0])
        # samples no longer than the memory the router allows at this ratio (the clone: its largest)
        limit = min(cfg.data.max_tokens, max(longest[r] for r in ratios))
        if limit not in mixes:
            data = replace(cfg.data, max_tokens=limit, min_tokens=min(cfg.data.min_tokens, limit))
            mixes[limit] = build_mix(data, tokenizer, cfg.loop.seed)
        batches: Any = MixBatches(
            mixes[limit], cfg.loop.micro_batch_size, cfg.loop.grad_accum_steps, session.pad_id
        )
        if len(ratios) > 1:
            batches = RatioMixBatches(batches, ratios, cfg.loop.seed, longest)
        loop = replace(cfg.loop, output_dir=str(output / name))
        if cfg.loop.time_limit_s is not None:
            left = cfg.loop.time_limit_s - (time.perf_counter() - sitting)
            if left <= 0 and runs:  # time is up before this expert (the first one always takes a step)
                finished = False
                break
            loop = replace(loop, time_limit_s=max(left, 1e-9))
        if ckpt.latest(output / name) is None and cfg.experts.kind == "lora":
            before = previous[1] if previous and cfg.experts.init_from_previous else None
            source = start_source(ratios[0], from_battery, before)
            if source is not None and source[0] == "battery":
                _start_from_battery(module, str(cfg.experts.init_from), source[1], ratios[0])
            elif source is not None and previous is not None:
                _start_from(module, output / previous[0], previous[1], ratios[0])
        objective = CompressionObjective(
            ratios[0],
            cfg.loop.gradient_checkpointing,
            cfg.objective,
            teacher,
            (compressed.sink, compressed.window),
        )
        trainer = Trainer(
            loop, module, objective, batches, dist_info=loop_info, run_config=cfg, on_step=on_step
        )
        result = trainer.train(stop_after=stop_after)
        runs[name] = result
        previous = (name, ratios[0]) if cfg.experts.kind == "lora" else None
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


def _load_run(module: ExpertModule, run_dir: Path) -> None:
    """Copy a finished run's final trainable weights into the module (its expert, by parameter name)."""
    final = ckpt.latest(run_dir)
    if final is None:
        raise SelfctxError(f"{run_dir} has no checkpoint to start the next expert from: rerun the command")
    params = dict(module.named_parameters())
    with torch.no_grad():
        for key, value in load_file(str(final / "trainable.safetensors")).items():
            params[key].copy_(value.to(params[key].device, params[key].dtype))


def _start_from(module: ExpertModule, run_dir: Path, source_ratio: int, ratio: int) -> None:
    """Initialise the expert for `ratio` with the weights the expert for `source_ratio` finished with."""
    _load_run(module, run_dir)
    battery: Any = module.compressed.battery
    battery.adapter_for(ratio).load_state_dict(battery.adapter_for(source_ratio).state_dict())


def _start_from_battery(module: ExpertModule, folder: str, saved_ratio: int, ratio: int) -> None:
    """Initialise the expert for `ratio` with the weights a saved battery's expert for `saved_ratio` holds."""
    from selfctx.compress.battery import saved_expert_weights

    battery: Any = module.compressed.battery
    battery.adapter_for(ratio).load_state_dict(saved_expert_weights(folder, saved_ratio))


def save_battery(cfg: ExpertsConfig, module: ExpertModule, output: Path) -> Path:
    """Write OUTPUT/experts atomically from each run's final weights (other ranks may have trained some)."""
    for name, _ in _all_runs(cfg):
        final = ckpt.latest(output / name)
        if final is None or int(_read_step(final)) < cfg.loop.max_steps:
            raise SelfctxError(f"{output / name} has not finished training: rerun the same command")
        _load_run(module, output / name)
    return _write_battery(cfg, module, output / EXPERTS_DIR, {})


def _write_battery(cfg: ExpertsConfig, module: ExpertModule, target: Path, steps: dict[str, int]) -> Path:
    """The module's battery at `target`, atomically, with the training config (and, for a snapshot, the
    step each run had reached)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    module.compressed.battery.save(tmp)
    write_json_atomic(
        tmp / "selfctx_train.json", {**to_dict(cfg), **({"snapshot_steps": steps} if steps else {})}
    )
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def snapshot_battery(cfg: ExpertsConfig, target: Path) -> dict[str, int]:
    """Write a loadable battery at `target` from each run's latest checkpoint, while training goes on; experts
    without a checkpoint stay untrained. Returns the step of each run folder (0: untrained)."""
    from selfctx.checks import check_out_folder
    from selfctx.models import resolve_dtype

    check_before_loading(cfg.model.name, cfg.loop)
    _check_same_runs(cfg)
    check_out_folder(target, "--snapshot")
    device = resolve_device(cfg.loop.device, DistInfo())
    model, tokenizer = load_base(cfg.model, cfg.loop.seed, device, resolve_dtype(cfg.loop.dtype, device.type))
    module = ExpertModule(build_compressed(cfg, model, tokenizer))
    output = Path(cfg.loop.output_dir)
    steps = {}
    for name, _ in _all_runs(cfg):
        latest = ckpt.latest(output / name)
        steps[name] = _read_step(latest) if latest is not None else 0
        if latest is not None:
            _load_run(module, output / name)
    _write_battery(cfg, module, target, steps)
    return steps


def _read_step(checkpoint_path: Path) -> int:
    import json

    return int(json.loads((checkpoint_path / "state.json").read_text())["step"])

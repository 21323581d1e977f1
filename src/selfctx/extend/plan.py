"""What `selfctx extend` will run: budget presets -> one ExtendConfig -> the stage configs.

A budget scales data size, training steps and the evaluation grid; `--config FILE` (keys of ExtendConfig)
goes over the budget, and `--model` / `--target-length` over both. The expert ratios are not configured but
planned: the consecutive powers of two from `min_ratio` up to the first one with which the router
(`selfctx.compress.battery.route`) fits `target_length` tokens (plus `eval.prompt_margin` tokens of prompt
around them) and the question/answer budget into the
model's native context (capped by `experts.experts.native_context`) with the chosen window.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

from selfctx.checks import DTYPE_NAMES, Budget
from selfctx.config import load_config, to_dict
from selfctx.errors import SelfctxError
from selfctx.eval.needle import VARIANTS
from selfctx.eval.synthetic import CHECKS
from selfctx.synth.lengths import parse_length
from selfctx.synth.pipeline import SynthConfig
from selfctx.train.experts import ExpertsConfig, recipe_sources

STAGES = ("synth", "train", "eval", "report")
BUDGETS: tuple[str, ...] = get_args(Budget)


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation grid: truncation to the native window vs the trained experts."""

    grid_points: int = 2  # needle context lengths, evenly spaced up to the target length
    lengths: tuple[int, ...] = ()  # explicit lengths (tokens) instead of grid_points
    depths: tuple[float, ...] = (0.25, 0.75)
    variant: str = "classic"
    samples: int = 1
    max_new_tokens: int = 24
    answer_budget: int = 128  # question + answer tokens the router keeps free (also sizes the ratio plan)
    # tokens the eval prompt wraps around a target-length context (instructions, chat template): the ratio
    # plan fits target_length + prompt_margin, so the longest needle cell routes too
    prompt_margin: int = 64
    dtype: str = "auto"
    # the truncation baseline: hf (the same transformers model as the experts) or llamacpp (the same GGUF
    # weights through llama.cpp, several times faster on CPU; f16 KV cache); auto: llamacpp for a GGUF model
    baseline_backend: str = "hf"
    # held-out synthetic checks (selfctx.eval.synthetic) at the needle lengths; () skips them. Their facts
    # use nouns the synth stage's data and pool never name (the stage excludes OUT/synth's nouns).
    synthetic_checks: tuple[str, ...] = CHECKS
    synthetic_depths: tuple[float, ...] = (0.5,)
    synthetic_lengths: tuple[int, ...] = ()  # default: the needle lengths

    def __post_init__(self) -> None:
        unknown = [c for c in self.synthetic_checks if c not in CHECKS]
        if unknown:
            raise ValueError(
                f"eval.synthetic_checks: unknown {', '.join(unknown)}; pick from {', '.join(CHECKS)}"
            )
        if any(not 0 <= d <= 1 for d in self.synthetic_depths) or (
            self.synthetic_checks and not self.synthetic_depths
        ):
            raise ValueError(
                f"eval.synthetic_depths must be fractions between 0 and 1, got {self.synthetic_depths}"
            )
        if self.baseline_backend not in ("auto", "hf", "llamacpp"):
            raise ValueError(
                f"eval.baseline_backend must be auto, hf or llamacpp, got {self.baseline_backend!r}"
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"eval.variant {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if self.grid_points < 1 or self.samples < 1 or self.max_new_tokens < 1 or self.answer_budget < 1:
            raise ValueError("eval.grid_points, samples, max_new_tokens and answer_budget must be >= 1")
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"eval.dtype {self.dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
        if self.prompt_margin < 0:
            raise ValueError(f"eval.prompt_margin must be >= 0 tokens, got {self.prompt_margin}")
        if not self.depths or any(not 0 <= d <= 1 for d in self.depths):
            raise ValueError(f"eval.depths must be fractions between 0 and 1, got {self.depths}")


@dataclass(frozen=True)
class ExtendConfig:
    model: str = "smollm2-135m"
    budget: str = "smoke"
    target_length: int = 2048
    min_ratio: int = 2  # the gentlest expert trained (shorter inputs route to it)
    synth: SynthConfig = field(default_factory=SynthConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)

    def __post_init__(self) -> None:
        if self.min_ratio < 2 or self.min_ratio & (self.min_ratio - 1):
            raise ValueError(f"min_ratio must be a power of two >= 2, got {self.min_ratio}")
        if self.target_length < 1:
            raise ValueError(f"target_length must be a positive token count, got {self.target_length}")


# Budget presets as plain config dicts. Sizes follow the packaged experts presets (smollm2-cpu, smollm2-gpu,
# llama-7b); the smoke budget is the smallest run that still exercises every stage on the embedded model.
_SMOKE: dict[str, Any] = {
    "target_length": 960,  # x4 reaches 1024 with the sink; the needle prompt's margin takes the rest
    "min_ratio": 4,
    "synth": {
        "backend": "llamacpp",
        "tasks": ["qa", "summarization"],
        "per_task": 1,
        "length": "512",
        "pool_shard_size": 8,
        "max_attempts_per_sample": 2,
        "gen": {"passage_words": 60, "passage_max_tokens": 120, "answer_max_tokens": 60},
    },
    "experts": {
        "experts": {"rank": 4, "alpha": 8, "window": 128, "native_context": 512, "group_tokens": 2048},
        "data": {"min_tokens": 128, "max_tokens": 640},
        "loop": {
            "max_steps": 2,
            "micro_batch_size": 1,
            "grad_accum_steps": 1,
            "dtype": "float32",
            "gradient_checkpointing": True,
            "save_every": 1,
            "optim": {"lr": 1.0e-3, "warmup_steps": 0, "scheduler": "constant"},
        },
    },
    "eval": {
        "grid_points": 2,
        "depths": [0.25, 0.75],
        "max_new_tokens": 24,
        "dtype": "float32",
        "baseline_backend": "auto",
        "synthetic_checks": ["kv-retrieval"],
    },
}
_CPU_HOURS: dict[str, Any] = {
    "target_length": 8192,
    "min_ratio": 4,
    "synth": {"backend": "llamacpp", "per_task": 8, "uniform": "2k-8k"},
    "experts": {"preset": "smollm2-cpu"},
    "eval": {
        "grid_points": 4,
        "depths": [0.0, 0.25, 0.5, 0.75, 1.0],
        "max_new_tokens": 32,
        "baseline_backend": "auto",
    },
}
_GPU_HOUR: dict[str, Any] = {
    "target_length": 32768,
    "min_ratio": 4,
    "synth": {"backend": "hf", "per_task": 200, "uniform": "2k-16k", "concurrency": 32},
    "experts": {"preset": "smollm2-gpu"},
    "eval": {"grid_points": 5, "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "samples": 2, "dtype": "bfloat16"},
}
_PAPER: dict[str, Any] = {
    "target_length": 131072,
    "min_ratio": 2,
    "synth": {"backend": "hf", "per_task": 1000, "uniform": "1k-8k", "concurrency": 64},
    "experts": {"preset": "llama-7b"},
    "eval": {"grid_points": 6, "depths": [0.0, 0.25, 0.5, 0.75, 1.0], "samples": 3, "dtype": "bfloat16"},
}
_BUDGET_DICTS = {"smoke": _SMOKE, "cpu-hours": _CPU_HOURS, "gpu-hour": _GPU_HOUR, "paper": _PAPER}


def budget_defaults(budget: str) -> dict[str, Any]:
    """The budget's ExtendConfig as a plain dict (experts sizes read from the packaged experts preset)."""
    if budget not in _BUDGET_DICTS:
        raise SelfctxError(f"unknown budget {budget!r}: pick one of {', '.join(BUDGETS)}")
    preset = _BUDGET_DICTS[budget]
    data: dict[str, Any] = {k: v for k, v in preset.items() if k != "experts"}
    experts = dict(preset["experts"])
    name = experts.pop("preset", None)
    if name is not None:
        from selfctx.train.preset import preset_defaults

        experts = {**preset_defaults(ExpertsConfig, "experts", name), **experts}
        # the sources are this run's synth folder (planned in make_plan), not the preset's paths
        experts["data"] = {k: v for k, v in experts["data"].items() if k != "sources"}
    data["experts"] = experts
    data["budget"] = budget
    return data


def load_extend_config(
    model: str,
    budget: str = "smoke",
    *,
    target_length: str | int | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> ExtendConfig:
    """budget preset <- --config FILE <- --set overrides <- --model/--target-length."""
    base = load_config(ExtendConfig, config_file, overrides or [], defaults=budget_defaults(budget))
    data = to_dict(base)
    data["model"] = model
    data["budget"] = budget
    if target_length is not None:
        data["target_length"] = parse_length(target_length)
    return load_config(ExtendConfig, None, [], defaults=data)


def ratio_plan(
    target_length: int,
    window: int,
    native_context: int,
    answer_budget: int,
    min_ratio: int = 2,
    margin: int = 0,
    sink: int = 0,
) -> tuple[int, ...]:
    """Consecutive powers of two from `min_ratio` up to the first ratio that fits `target_length` (+
    `margin`: the prompt around the input) tokens, `sink` raw tokens counted in the memory."""
    from selfctx.compress.battery import longest_supported

    if native_context - window - answer_budget <= 0:
        raise SelfctxError(
            f"window {window} plus the {answer_budget}-token answer budget leaves no room for memory in "
            f"the native context {native_context}: use a smaller experts.experts.window or a larger native "
            "context"
        )
    ratios: list[int] = []
    ratio = min_ratio
    while ratio <= window:
        ratios.append(ratio)
        if longest_supported(answer_budget, native_context, window, (ratio,), sink) >= target_length + margin:
            return tuple(ratios)
        ratio *= 2
    best = longest_supported(answer_budget, native_context, window, tuple(ratios) or (window,), sink)
    raise SelfctxError(
        f"target length {target_length} tokens (+{margin} of prompt) is out of reach: with window {window} "
        f"and native context {native_context} even ratio {ratios[-1] if ratios else window} reads at most "
        f"{best} tokens; "
        "lower --target-length or raise experts.experts.window / native_context"
    )


def model_native_context(model: str) -> int | None:
    """The model's own position limit without loading its weights (None when it cannot be read)."""
    try:
        from selfctx.models import load_model_config

        config = load_model_config(model)
    except SelfctxError:
        raise
    except Exception:  # noqa: BLE001 - an unreadable config only loses the cap check
        return None
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


@dataclass(frozen=True)
class Plan:
    """The resolved run: every stage's config and the planned expert ratios."""

    config: ExtendConfig
    out: Path
    native_context: int
    ratios: tuple[int, ...]
    synth: SynthConfig
    experts: ExpertsConfig
    needle_lengths: tuple[int, ...]

    def stage_configs(self) -> dict[str, Any]:
        """What each stage's done-marker hash covers (paths are relative to the output folder)."""
        configs = {
            "synth": to_dict(self.synth),
            "train": to_dict(self.experts),
            "eval": {
                **to_dict(self.config.eval),
                "lengths": list(self.needle_lengths),
                "native_context": self.native_context,
            },
            "report": {"model": self.config.model, "budget": self.config.budget},
        }
        return {name: _relative(value, str(self.out)) for name, value in configs.items()}


def _relative(value: Any, prefix: str) -> Any:
    """Paths under the output folder written relative to it, so a moved folder keeps its markers valid."""
    if isinstance(value, dict):
        return {k: _relative(v, prefix) for k, v in value.items()}
    if isinstance(value, list):
        return [_relative(v, prefix) for v in value]
    if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
        return "." + value[len(prefix) :]
    return value


def make_plan(cfg: ExtendConfig, out: Path, *, native_of_model: int | None = None) -> Plan:
    """Resolve the ratios, data sources and needle grid for a run into `out`."""
    e = cfg.experts.experts
    model_native = native_of_model if native_of_model is not None else model_native_context(cfg.model)
    caps = [n for n in (e.native_context, model_native) if n]
    if not caps:
        raise SelfctxError(
            f"cannot read the native context of {cfg.model}: set experts.experts.native_context in --config"
        )
    native = min(caps)
    ev = cfg.eval
    ratios = ratio_plan(
        cfg.target_length,
        e.window,
        native,
        ev.answer_budget,
        cfg.min_ratio,
        margin=ev.prompt_margin,
        sink=e.sink,
    )
    synth = replace(cfg.synth, model=cfg.model)
    sources = recipe_sources(out / "synth", out / "synth" / "pool")
    experts = replace(
        cfg.experts,
        model=replace(cfg.experts.model, name=cfg.model),
        experts=replace(e, ratios=tuple(ratios), native_context=native),
        data=replace(cfg.experts.data, sources=sources),
        loop=replace(cfg.experts.loop, output_dir=str(out / "train")),
    )
    if ev.lengths:
        lengths = tuple(sorted(ev.lengths))
    else:
        step = cfg.target_length / ev.grid_points
        lengths = tuple(sorted({int(round(step * (i + 1))) for i in range(ev.grid_points)}))
    if lengths[-1] > cfg.target_length:
        raise SelfctxError(
            f"needle length {lengths[-1]} exceeds the target length {cfg.target_length}: lower eval.lengths"
        )
    return Plan(cfg, out, native, ratios, synth, experts, lengths)


def baseline_gguf(cfg: ExtendConfig) -> str | None:
    """The GGUF file the truncation baseline runs on through llama.cpp (eval.baseline_backend), or None for
    transformers; llamacpp with a model llama.cpp cannot run as it is is refused."""
    backend = cfg.eval.baseline_backend
    gguf = None
    if backend != "hf":
        from selfctx.models import resolve_model

        spec = resolve_model(cfg.model)
        gguf = str(spec.gguf_path) if spec.runs_on_llamacpp else None
    if backend == "llamacpp" and gguf is None:
        raise SelfctxError(
            f"eval.baseline_backend=llamacpp needs a .gguf model, not {cfg.model}: set it to hf or auto"
        )
    return gguf


def check_plan(plan: Plan) -> None:
    """What a later stage would refuse, checked before the first one starts (before the output folder is
    made): the synth settings and backend, the training device and folder, the evaluation baseline."""
    from selfctx.llm.factory import BACKENDS
    from selfctx.train.loop import check_before_loading

    plan.synth.validate()
    if plan.synth.backend.lower() not in BACKENDS:
        raise SelfctxError(
            f"synth.backend {plan.synth.backend!r} is unknown: use one of {', '.join(BACKENDS)}"
        )
    # the training data is the synth stage's output: its paths are checked when the train stage starts
    check_before_loading(plan.experts.model.name, plan.experts.loop, where="experts.")
    baseline_gguf(plan.config)

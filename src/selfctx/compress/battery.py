"""The expert battery: ratio -> adapter, saved as one folder per expert, and the router that picks one.

On disk (named as what they are, not as PEFT adapters: PEFT cannot load a memory expert):
    DIR/battery.json                      {"kind", "ratios", "base_model", "compressor": CompressorConfig}
    DIR/README.md                         a model card: what the folder is and how to load it
    DIR/expert-r8/expert_config.json      AdapterConfig
    DIR/expert-r8/expert.safetensors      weights; the header's metadata names format, ratio and base model
    DIR/mha-clone/...                     (the single-compressor baseline: one adapter for every ratio)
Batteries saved before this layout (adapter_config.json + adapter_model.safetensors) load unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save
from torch import nn

from selfctx.compress.adapters import AdapterConfig, MemoryAdapter, build_adapter
from selfctx.compress.config import CompressorConfig, Kind, LoraOn, MemoryInput
from selfctx.errors import SelfctxError
from selfctx.fsutil import atomic_open, write_json_atomic, write_text_atomic

CONFIG_FILE, WEIGHTS_FILE = "expert_config.json", "expert.safetensors"
_OLD_CONFIG_FILE, _OLD_WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"  # before the rename
FORMAT = "selfctx-memory-expert"


def _folder_name(config: AdapterConfig) -> str:
    return "mha-clone" if config.kind == "mha_clone" else f"expert-r{config.ratio}"


def _files(sub: Path) -> tuple[Path, Path]:
    """(config, weights) of one expert folder, in the current layout or the one before it."""
    for config, weights in ((CONFIG_FILE, WEIGHTS_FILE), (_OLD_CONFIG_FILE, _OLD_WEIGHTS_FILE)):
        if (sub / config).is_file() and (sub / weights).is_file():
            return sub / config, sub / weights
    raise SelfctxError(f"expert folder {sub} has no {CONFIG_FILE} + {WEIGHTS_FILE}: save the battery again")


def _init_embedding(model: Any, token_id: int | None) -> tuple[torch.Tensor, int]:
    """The memory embedding starts as an existing token's embedding (BOS, else EOS, else token 0), so the
    untrained memory token reads like a real token rather than noise."""
    config = model.config
    for candidate in (
        token_id,
        getattr(config, "bos_token_id", None),
        getattr(config, "eos_token_id", None),
        0,
    ):
        if isinstance(candidate, list):
            candidate = candidate[0] if candidate else None
        if isinstance(candidate, int) and 0 <= candidate < config.vocab_size:
            return model.get_input_embeddings().weight[candidate], candidate
    raise AssertionError("unreachable: token 0 always exists")


class ExpertBattery(nn.Module):
    """Adapters by ratio, and the config they were built (and trained) under.

    `kind="lora"`: one LoRA expert per ratio. `kind="mha_clone"`: one shared compressor for all ratios.
    """

    def __init__(self, config: CompressorConfig, adapters: dict[int, MemoryAdapter]) -> None:
        super().__init__()
        if not adapters:
            raise SelfctxError("an expert battery needs at least one ratio")
        self.ratios: tuple[int, ...] = tuple(sorted(adapters))
        # what inference uses unless told otherwise: saved with the battery
        self.config = dataclasses.replace(config.compressor_only(), ratios=self.ratios)
        self.kind = self.config.kind
        unique: dict[int, MemoryAdapter] = {}
        for adapter in adapters.values():
            unique.setdefault(id(adapter), adapter)
        # Registered once each (the clone is shared); typed by what it holds.
        self.adapters: list[MemoryAdapter] = nn.ModuleList(unique.values())  # type: ignore[assignment]
        self._by_ratio = adapters

    @staticmethod
    def create(
        model: Any,
        ratios: tuple[int, ...] | list[int] | None = None,
        *,
        config: CompressorConfig | None = None,
        kind: Kind | None = None,
        rank: int | None = None,
        alpha: float | None = None,
        targets: tuple[str, ...] | None = None,
        lora_on: LoraOn | None = None,
        memory_input: MemoryInput | None = None,
        base_model: str = "",
        init_token_id: int | None = None,
    ) -> ExpertBattery:
        """Untrained adapters for `model` (LoRA B = 0: each expert starts as the base weights), as `config`
        says (default: `CompressorConfig()`) with the given settings over it."""
        settings = (config or CompressorConfig()).override(
            ratios=tuple(int(r) for r in ratios) if ratios is not None else None,
            kind=kind,
            rank=rank,
            alpha=alpha,
            targets=tuple(targets) if targets is not None else None,
            lora_on=lora_on,
            memory_input=memory_input,
        )
        layers = model.model.layers
        embedding, token = _init_embedding(model, init_token_id)
        common: dict[str, Any] = dict(
            rank=settings.rank,
            alpha=settings.alpha,
            targets=settings.targets,
            lora_on=settings.lora_on,
            base_model=base_model,
            hidden_size=model.config.hidden_size,
            num_layers=len(layers),
            init_token_id=token,
            memory_input=settings.memory_input,
        )
        ordered = tuple(sorted(set(settings.ratios)))
        if settings.kind == "lora":
            adapters = {
                r: build_adapter(AdapterConfig(kind="lora", ratio=r, **common), layers, embedding)
                for r in ordered
            }
        else:
            clone = AdapterConfig(kind="mha_clone", ratio=None, extra={"ratios": list(ordered)}, **common)
            adapters = dict.fromkeys(ordered, build_adapter(clone, layers, embedding))
        battery = ExpertBattery(settings, adapters)
        battery.requires_grad_(False)
        return battery

    def adapter_for(self, ratio: int) -> MemoryAdapter:
        if ratio not in self._by_ratio:
            raise SelfctxError(
                f"no expert for ratio {ratio}: this battery has {', '.join(map(str, self.ratios))}"
            )
        return self._by_ratio[ratio]

    def for_training(self, device: torch.device | str) -> ExpertBattery:
        """On `device` with float32 weights, whatever the frozen base runs in: these are the master weights an
        optimizer updates (in bf16, lr x grad of a small update rounds away). The experts cast their inputs
        and outputs to the base's dtype."""
        return self.to(device=device, dtype=torch.float32)

    def adapter_name(self, ratio: int) -> str:
        return "mha_clone" if self.kind == "mha_clone" else f"lora-r{ratio}"

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per expert (the clone counted once)."""
        if self.kind == "mha_clone":
            return {"mha_clone": self.adapters[0].num_parameters()}
        return {self.adapter_name(r): self._by_ratio[r].num_parameters() for r in self.ratios}

    def model_card(self) -> str:
        """README.md of a saved battery: what it is, how it was built and how to load it."""
        first = self.adapters[0].config
        from selfctx.models import hub_id

        base = first.base_model or "(unrecorded)"
        hub = hub_id(first.base_model)  # the Hub's metadata wants an id it knows, not a local path or alias
        experts = (
            "one compressor shared by every ratio (the single-compressor baseline)"
            if self.kind == "mha_clone"
            else ", ".join(f"x{r}" for r in self.ratios) + f" (one LoRA expert per ratio, rank {first.rank})"
        )
        mechanism = ", ".join(f"{k} {v}" for k, v in sorted(self.config.mechanism().items()))
        return (
            "---\n"
            "library_name: selfctx\n"
            + (f"base_model: {hub}\n" if hub else "")
            + "tags: [selfctx, context-compression, long-context, memory-experts]\n"
            "---\n\n"
            f"# selfctx memory experts for {base}\n\n"
            "Compression experts for the selfctx package: the frozen base model reads a long input window "
            "by window, and after each window these weights turn its activations into a few memory tokens "
            "whose keys and values replace the window's. They are not a PEFT adapter and do not change the "
            "model's answers on inputs that fit its window.\n\n"
            f"- experts: {experts}\n"
            f"- memory tokens start as: {first.memory_input}\n"
            f"- window mechanism: {mechanism}\n"
            f"- parameters: {sum(self.parameter_counts().values()):,}\n\n"
            "```python\n"
            "from selfctx.compress import CompressedLM\n"
            f'lm = CompressedLM.from_pretrained("{base}", "path/to/this/folder")\n'
            "```\n\n"
            "Training settings, where recorded: selfctx_train.json beside this file.\n"
        )

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for adapter in self.adapters:
            sub = folder / _folder_name(adapter.config)
            sub.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
            metadata = {
                "format": FORMAT,
                "kind": adapter.config.kind,
                "ratio": str(adapter.config.ratio or "any"),
                "base_model": adapter.config.base_model or "",
            }
            with atomic_open(sub / WEIGHTS_FILE, "wb") as handle:
                handle.write(save(state, metadata=metadata))
            write_json_atomic(sub / CONFIG_FILE, adapter.config.to_json())
        write_text_atomic(folder / "README.md", self.model_card())
        first = self.adapters[0].config
        write_json_atomic(
            folder / "battery.json",
            {
                "kind": self.kind,
                "ratios": list(self.ratios),
                "base_model": first.base_model,
                "parameters": self.parameter_counts(),
                "compressor": self.config.to_json(),
                "mechanism": self.config.mechanism(),  # what versions before "compressor" read
            },
        )

    @staticmethod
    def load(folder: str | Path, model: Any) -> ExpertBattery:
        """Load a saved battery for `model`; shapes are checked against it."""
        folder = Path(folder)
        meta = read_battery_meta(folder)
        layers = model.model.layers
        embedding, _ = _init_embedding(model, None)
        subfolders = (
            ["mha-clone"] if meta["kind"] == "mha_clone" else [f"expert-r{r}" for r in meta["ratios"]]
        )
        adapters: dict[int, MemoryAdapter] = {}
        first: dict[str, Any] | None = None
        for name in subfolders:
            sub = folder / name
            config_file, weights_file = _files(sub)
            raw = json.loads(config_file.read_text())
            first = first or raw
            config = AdapterConfig.from_json(raw)
            if config.hidden_size != model.config.hidden_size or config.num_layers != len(layers):
                raise SelfctxError(
                    f"expert {sub} was trained for hidden size {config.hidden_size} x {config.num_layers} "
                    f"layers, but the model has {model.config.hidden_size} x {len(layers)}: "
                    "use this model's experts"
                )
            adapter = build_adapter(config, layers, embedding)
            state = load_file(str(weights_file), device=str(embedding.device))
            missing, unexpected = adapter.load_state_dict(
                {k: v.to(embedding.dtype) for k, v in state.items()}, strict=False
            )
            if missing or unexpected:
                raise SelfctxError(
                    f"expert {sub} does not match the model: missing {missing[:3]}, extra {unexpected[:3]}"
                )
            if config.kind == "mha_clone":
                adapters.update(dict.fromkeys(meta["ratios"], adapter))
            else:
                adapters[int(config.ratio or 0)] = adapter
        battery = ExpertBattery(CompressorConfig.from_battery_json(meta, first), adapters)
        battery.requires_grad_(False)
        return battery


def read_battery_config(folder: str | Path, name: str = "expert folder") -> CompressorConfig:
    """What a saved battery is and was trained under, read without loading any weights."""
    meta = read_battery_meta(folder, name)
    first = Path(folder) / (
        "mha-clone" if meta.get("kind") == "mha_clone" else f"expert-r{meta['ratios'][0]}"
    )
    adapter = json.loads(_files(first)[0].read_text()) if first.is_dir() else None
    return CompressorConfig.from_battery_json(meta, adapter)


def saved_expert_weights(folder: str | Path, ratio: int) -> dict[str, torch.Tensor]:
    """One saved LoRA expert's weights as stored (the float32 master weights training wrote)."""
    return load_file(str(_files(Path(folder) / f"expert-r{ratio}")[1]))


def read_battery_meta(folder: str | Path, name: str = "expert folder") -> dict[str, Any]:
    """battery.json of an expert folder (kind, ratios, mechanism), read without loading any weights."""
    index = Path(folder) / "battery.json"
    if not index.is_file():
        raise SelfctxError(
            f"{name} {folder} is not an expert directory (no battery.json): pass the folder `selfctx train` "
            "wrote (OUTPUT/experts)"
        )
    try:
        meta = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SelfctxError(f"{name} {folder}: battery.json is not valid JSON: copy it again") from None
    if not isinstance(meta, dict) or not meta.get("ratios"):
        raise SelfctxError(f"{name} {folder}: battery.json names no ratios: train or copy it again")
    return meta


@dataclass(frozen=True)
class Route:
    """The router's choice for one input. ratio 1 = the input fits natively; nothing is compressed."""

    ratio: int
    requested_ratio: float  # the least compression that would fit (context tokens / memory slots available)
    memory_entries: int
    context_tokens: int
    native_context: int
    window: int
    budget: int

    def describe(self) -> str:
        if self.ratio == 1:
            return f"{self.context_tokens} tokens fit the native {self.native_context}: no compression"
        return (
            f"{self.context_tokens} tokens -> expert x{self.ratio} ({self.memory_entries} memory entries; "
            f"needed x{self.requested_ratio:.2f} to fit {self.native_context})"
        )


def memory_entries_for(n_tokens: int, window: int, ratio: int, sink: int = 0) -> int:
    """Memory entries after compressing an n-token input at `ratio`: the raw sink tokens, then the memory
    tokens of every full window after them."""
    kept = min(sink, n_tokens)
    return kept + ((n_tokens - kept) // window) * (window // ratio)


def route(
    n_tokens: int,
    budget: int,
    native_context: int,
    window: int,
    ratios: tuple[int, ...],
    sink: int = 0,
) -> Route:
    """Smallest trained ratio whose memory (sink included) + one window + budget fits the native context.

    Inputs that fit natively with their budget are not compressed at all (ratio 1).
    """
    if n_tokens + budget <= native_context:
        return Route(1, 1.0, 0, n_tokens, native_context, window, budget)
    room = native_context - window - budget - sink  # memory slots available
    requested = ((n_tokens - sink) // window) * window / room if room > 0 else float("inf")
    for ratio in sorted(ratios):
        entries = memory_entries_for(n_tokens, window, ratio, sink)
        # covers compression too: the last window's positions reach (entries - n) + W + n
        if entries + window + budget <= native_context:
            return Route(ratio, requested, entries, n_tokens, native_context, window, budget)
    longest = longest_supported(budget, native_context, window, ratios, sink)
    raise SelfctxError(
        f"an input of {n_tokens} tokens does not fit: with window {window}, a {budget}-token "
        f"question+answer budget and native context {native_context}, the experts (ratios "
        f"{', '.join(map(str, ratios))}) support at most "
        f"{longest} tokens; train a larger ratio or shorten the input"
    )


def longest_supported(
    budget: int, native_context: int, window: int, ratios: tuple[int, ...], sink: int = 0
) -> int:
    """The longest input (tokens) the battery can compress into the native context."""
    best = native_context - budget
    for ratio in ratios:
        per_window = window // ratio
        room = native_context - window - budget - sink
        if room >= 0 and per_window > 0:
            best = max(best, sink + (room // per_window + 1) * window - 1)
    return best

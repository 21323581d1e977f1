"""What memory tokens go through instead of the frozen base weights.

Two kinds, one interface (`MemoryAdapter`):
- `LoRAExpert`: one per compression ratio; a low-rank delta on the chosen attention projections plus a
  learned memory-token embedding. By default the delta is applied only at memory-token rows, so ordinary
  tokens always read through the frozen base weights (`lora_on="all"` applies it everywhere, for ablation).
- `MHACloneCompressor`: the single-compressor baseline (Activation Beacon v1's "MHA clone"): full copies of
  q/k/v/o per layer, used for memory-token rows at every ratio.

Parameter names follow PEFT's (`...q_proj.lora_A.weight`) so the safetensors files look familiar.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import nn

from selfctx.compress.config import PROJECTIONS, Kind, LoraOn, MemoryInput


@dataclass(frozen=True)
class AdapterConfig:
    """Everything needed to rebuild an adapter's shapes; saved as expert_config.json."""

    kind: Kind = "lora"
    ratio: int | None = 8  # None for the ratio-agnostic MHA clone
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = PROJECTIONS
    lora_on: LoraOn = "memory"
    base_model: str = ""
    hidden_size: int = 0
    num_layers: int = 0
    init_token_id: int | None = None  # which token embedding seeded the memory embedding ("shared" input)
    memory_input: MemoryInput = "shared"  # "span_last": the span's last token embedding + a learned offset
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["targets"] = list(self.targets)
        return data

    @staticmethod
    def from_json(data: dict[str, Any]) -> AdapterConfig:
        data = dict(data)
        data["targets"] = tuple(data.get("targets", PROJECTIONS))
        return AdapterConfig(**data)


# Memory tokens' outputs of the last layer are never read (only their keys/values are kept, and those come
# from q/k/v *inputs* of each layer), so its q_proj and o_proj would get no gradient: they are not created.
DEAD_IN_LAST_LAYER = ("q_proj", "o_proj")


def _live_targets(targets: tuple[str, ...], layer: int, num_layers: int) -> tuple[str, ...]:
    if layer == num_layers - 1:
        return tuple(t for t in targets if t not in DEAD_IN_LAST_LAYER)
    return targets


def _linear_shapes(attn: nn.Module) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each attention projection of one layer."""
    return {name: (getattr(attn, name).in_features, getattr(attn, name).out_features) for name in PROJECTIONS}


def _memory_embedding(config: AdapterConfig, init_embedding: torch.Tensor) -> nn.Parameter:
    """The learned memory embedding: a real token's embedding when it is the whole input ("shared"), a zero
    offset over the span's own token when it is added to one ("span_last")."""
    start = init_embedding.detach().clone()
    return nn.Parameter(torch.zeros_like(start) if config.memory_input == "span_last" else start)


class MemoryAdapter(nn.Module):
    """Base: a memory-token embedding and a way to project memory rows."""

    config: AdapterConfig
    memory_embedding: nn.Parameter
    layers: nn.ModuleList  # one ModuleDict per decoder layer, keyed by projection name

    @property
    def applies_everywhere(self) -> bool:
        return False

    def project(
        self, layer: int, name: str, base: nn.Linear, x: torch.Tensor, memory_rows: torch.Tensor | None
    ) -> torch.Tensor:
        """Output of projection `name` of `layer` for hidden states `x` (B, T, Din) -> (B, T, Dout).

        `memory_rows` holds the indices (along T) of memory tokens, or None when the block has none.
        """
        raise NotImplementedError

    def _targets(self, layer: int) -> nn.ModuleDict:
        """This adapter's modules of one layer, by projection name."""
        return cast(nn.ModuleDict, self.layers[layer])

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class LoRAExpert(MemoryAdapter):
    """Low-rank deltas on the attention projections + a memory embedding, for one compression ratio."""

    def __init__(self, config: AdapterConfig, layers: nn.ModuleList, init_embedding: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.scale = config.alpha / config.rank
        ref = init_embedding
        self.memory_embedding = _memory_embedding(config, init_embedding)  # (D,)
        self.layers = nn.ModuleList()
        layer: Any
        for index, layer in enumerate(layers):
            shapes = _linear_shapes(layer.self_attn)
            per_layer = nn.ModuleDict()
            live = (
                _live_targets(config.targets, index, len(layers))
                if config.lora_on == "memory"
                else config.targets
            )
            for name in live:
                din, dout = shapes[name]
                lora_a = nn.Linear(din, config.rank, bias=False, device=ref.device, dtype=ref.dtype)
                lora_b = nn.Linear(config.rank, dout, bias=False, device=ref.device, dtype=ref.dtype)
                # PEFT's default init: A Kaiming-uniform, B zero, so an untrained expert equals the base.
                nn.init.kaiming_uniform_(lora_a.weight, a=math.sqrt(5))
                nn.init.zeros_(lora_b.weight)
                per_layer[name] = nn.ModuleDict({"lora_A": lora_a, "lora_B": lora_b})
            self.layers.append(per_layer)

    @property
    def applies_everywhere(self) -> bool:
        return self.config.lora_on == "all"

    def _delta(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        lora: Any = self._targets(layer)[name]
        # the expert may keep float32 weights over a bf16 base (master weights in training)
        delta = lora["lora_B"](lora["lora_A"](x.to(lora["lora_A"].weight.dtype))) * self.scale
        return delta.to(x.dtype)

    def project(
        self, layer: int, name: str, base: nn.Linear, x: torch.Tensor, memory_rows: torch.Tensor | None
    ) -> torch.Tensor:
        out = base(x)  # (B, T, Dout): frozen weights for every row
        if name not in self._targets(layer):
            return out
        if self.applies_everywhere:
            return out + self._delta(layer, name, x)
        if memory_rows is None or memory_rows.numel() == 0:
            return out
        x_mem = x.index_select(1, memory_rows)  # (B, Tm, Din)
        return out.index_add(1, memory_rows, self._delta(layer, name, x_mem))  # delta only on memory rows


class MHACloneCompressor(MemoryAdapter):
    """One full copy of q/k/v/o per layer, shared by every ratio (the paper's single-compressor baseline)."""

    def __init__(self, config: AdapterConfig, layers: nn.ModuleList, init_embedding: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        self.memory_embedding = _memory_embedding(config, init_embedding)  # (D,)
        self.layers = nn.ModuleList()
        for index, layer in enumerate(layers):
            per_layer = nn.ModuleDict()
            for name in _live_targets(PROJECTIONS, index, len(layers)):
                base: nn.Linear = getattr(layer.self_attn, name)
                clone = nn.Linear(
                    base.in_features,
                    base.out_features,
                    bias=base.bias is not None,
                    device=base.weight.device,
                    dtype=base.weight.dtype,
                )
                clone.load_state_dict(base.state_dict())
                per_layer[name] = clone
            self.layers.append(per_layer)

    def project(
        self, layer: int, name: str, base: nn.Linear, x: torch.Tensor, memory_rows: torch.Tensor | None
    ) -> torch.Tensor:
        out = base(x)  # (B, T, Dout)
        if memory_rows is None or memory_rows.numel() == 0 or name not in self._targets(layer):
            return out
        clone: Any = self._targets(layer)[name]
        rows = clone(x.index_select(1, memory_rows).to(clone.weight.dtype)).to(out.dtype)
        return out.index_copy(1, memory_rows, rows)  # memory rows replaced


def build_adapter(
    config: AdapterConfig, layers: nn.ModuleList, init_embedding: torch.Tensor
) -> MemoryAdapter:
    if config.kind == "lora":
        return LoRAExpert(config, layers, init_embedding)
    if config.kind == "mha_clone":
        return MHACloneCompressor(config, layers, init_embedding)
    raise ValueError(f"unknown adapter kind {config.kind!r}")

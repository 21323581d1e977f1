"""A compressed context: per-layer memory keys/values (pre-RoPE) plus the raw tail, savable and reusable."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from selfctx.compress.engine import LayerMemory
from selfctx.errors import SelfctxError
from selfctx.fsutil import atomic_open, write_json_atomic

FORMAT_VERSION = 1


@dataclass(frozen=True)
class MemoryInfo:
    """What produced a Memory; checked when it is loaded into a model."""

    model_name: str
    adapter: str | None  # e.g. "lora-r8", "mha_clone", or None when nothing was compressed
    ratio: int  # 1 when nothing was compressed
    window: int
    n_context_tokens: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str
    format_version: int = FORMAT_VERSION
    sink: int = 0  # raw tokens kept at the head of the memory (files written before it existed: 0)


@dataclass
class Memory:
    """The compressed form of one context.

    layers: one LayerMemory per decoder layer, keys/values (1, Hkv, M, hd) before RoPE.
    tail_ids: (T,) the context's last partial window, kept as raw tokens (processed with the prompt).
    """

    layers: list[LayerMemory]
    tail_ids: torch.Tensor
    info: MemoryInfo

    @property
    def num_entries(self) -> int:
        """Memory entries per layer (compressed key/value slots)."""
        return int(self.layers[0].keys.shape[2]) if self.layers else 0

    @property
    def nbytes(self) -> int:
        """Bytes of the memory's keys and values over all layers (the tail is token ids, not counted here)."""
        return sum(t.numel() * t.element_size() for m in self.layers for t in (m.keys, m.values))

    @property
    def kv_entries(self) -> int:
        """Key/value slots this context occupies once the tail is read too (memory + raw tail)."""
        return self.num_entries + int(self.tail_ids.numel())

    @property
    def achieved_ratio(self) -> float:
        return self.info.n_context_tokens / max(1, self.kv_entries)

    def save(self, path: str | Path) -> None:
        """Write `path/memory.safetensors` and `path/memory.json` atomically."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {"tail_ids": self.tail_ids.detach().cpu().contiguous()}
        for i, layer in enumerate(self.layers):
            tensors[f"layers.{i}.keys"] = layer.keys.detach().cpu().contiguous()
            tensors[f"layers.{i}.values"] = layer.values.detach().cpu().contiguous()
        with atomic_open(folder / "memory.safetensors", "wb") as handle:
            handle.write(save(tensors))
        write_json_atomic(folder / "memory.json", asdict(self.info))

    @staticmethod
    def load(path: str | Path, device: str | torch.device = "cpu") -> Memory:
        folder = Path(path)
        meta, weights = check_memory_folder(folder)
        data: dict[str, Any] = json.loads(meta.read_text())
        if data.get("format_version") != FORMAT_VERSION:
            raise SelfctxError(
                f"memory at {folder} has format {data.get('format_version')}, expected {FORMAT_VERSION}"
            )
        info = MemoryInfo(**data)
        tensors = load_file(str(weights), device=str(device))
        layers = [
            LayerMemory(tensors[f"layers.{i}.keys"], tensors[f"layers.{i}.values"])
            for i in range(info.num_layers)
        ]
        return Memory(layers=layers, tail_ids=tensors["tail_ids"], info=info)


def check_memory_folder(folder: str | Path, name: str = "memory folder") -> tuple[Path, Path]:
    """(memory.json, memory.safetensors) of a saved memory, checked without reading them."""
    meta, weights = Path(folder) / "memory.json", Path(folder) / "memory.safetensors"
    if not meta.is_file() or not weights.is_file():
        raise SelfctxError(
            f"{name} {folder} holds no saved memory (memory.json + memory.safetensors): save one first "
            "(generate --save-memory)"
        )
    return meta, weights

"""Compression experts: memory tokens over a sliding window, one LoRA expert per ratio, picked by length."""

from selfctx.compress.adapters import AdapterConfig, LoRAExpert, MHACloneCompressor
from selfctx.compress.battery import ExpertBattery, Route, longest_supported, route
from selfctx.compress.config import DEFAULT_RATIOS, CompressorConfig
from selfctx.compress.memory import Memory, MemoryInfo
from selfctx.compress.model import CompressedLM, GenerationResult, TrainOutput

__all__ = [
    "DEFAULT_RATIOS",
    "AdapterConfig",
    "CompressedLM",
    "CompressorConfig",
    "ExpertBattery",
    "GenerationResult",
    "LoRAExpert",
    "MHACloneCompressor",
    "Memory",
    "MemoryInfo",
    "Route",
    "TrainOutput",
    "longest_supported",
    "route",
]

"""Cheap argument checks shared by the commands: each runs before anything heavy (a model load) and before
anything is written, and fails with one SelfctxError line that names the argument and says what to do.

    check_dtype("float99", "--dtype")     # SelfctxError: --dtype float99 is not one of auto, float32, ...
    check_device("gpu0", "--device")
    check_positive(0, "--samples")
    check_fractions([0.5, 1.5], "--depths")
    check_out_folder(Path("run"), "--out")

Nothing here imports torch unless a CUDA or MPS device has to be checked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, get_args

from selfctx.errors import SelfctxError

# Choices the commands offer, as types typer shows in --help and enforces (one place each; light to import).
# The dtype names every command accepts (selfctx.models.resolve_dtype maps them to torch dtypes).
DtypeName = Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"]
DTYPE_NAMES: tuple[str, ...] = get_args(DtypeName)
EvalBackend = Literal["hf", "llamacpp"]  # how `selfctx eval` runs a model
# what a memory token's input embedding is (compress/engine.py: memory_inputs): one learned embedding
# shared by every slot, or the last token of the slot's own span plus a learned offset (here, so the CLI
# reads it without importing torch)
MemoryInput = Literal["shared", "span_last"]
SynthBackend = Literal["hf", "llamacpp", "openai"]  # what writes `selfctx synth`'s data
Executor = Literal["local", "ray"]  # how `selfctx synth` schedules its work
Budget = Literal["smoke", "cpu-hours", "gpu-hour", "paper"]  # `selfctx extend` presets
# what each budget runs and costs (`selfctx extend --help`); cpu-hours: 3x the preset's measured x8
BUDGET_HELP: dict[str, str] = {
    "smoke": "embedded-model rehearsal, 2 training steps of one x4 expert; minutes on 2 CPU cores",
    "cpu-hours": "SmolLM2 on 2 CPU cores, 8K target: x4/x8/x16 at 400 steps each of the smollm2-cpu preset "
    "(its x8 took 4.4 h), so ~13 h of training (estimate) plus ~30 min of data and evaluation",
    "gpu-hour": "SmolLM2-size model on one GPU, 32K target, bf16: about an hour (estimate)",
    "paper": "the paper's recipe (llama-7b preset, 128K target, ratios from 2): a GPU node",
}
_DEVICE = re.compile(r"^(cpu|cuda|mps|xpu)(:(\d+))?$")


def check_dtype(dtype: str | None, name: str = "--dtype") -> str:
    """A dtype name (None means auto)."""
    if dtype is None:
        return "auto"
    if dtype not in DTYPE_NAMES:
        raise SelfctxError(f"{name} {dtype} is not one of {', '.join(DTYPE_NAMES)}: pick one of them")
    return dtype


def check_device(device: str | None, name: str = "--device") -> str | None:
    """A device string torch understands, and that this machine has (None: pick automatically)."""
    if device is None:
        return None
    match = _DEVICE.match(device)
    if match is None:
        raise SelfctxError(f"{name} {device} is not a device: use cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(3)
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SelfctxError(f"{name} {device}: this machine has no usable CUDA device: use {name} cpu")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise SelfctxError(
                f"{name} {device}: this machine has {torch.cuda.device_count()} CUDA device(s): "
                f"use cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    if kind == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise SelfctxError(f"{name} {device}: MPS is not available on this machine: use {name} cpu")
    return device


def check_positive(value: int | float | None, name: str, *, minimum: int | float = 1) -> None:
    """`value` is at least `minimum` (None: unset, allowed)."""
    if value is not None and value < minimum:
        raise SelfctxError(f"{name} must be at least {minimum}, got {value}")


def check_fractions(values: Iterable[float], name: str) -> None:
    """At least one value, each between 0 and 1."""
    values = list(values)
    if not values:
        raise SelfctxError(f"{name} is empty: give comma-separated fractions between 0 and 1")
    bad = [v for v in values if not 0 <= v <= 1]
    if bad:
        raise SelfctxError(f"{name} must be fractions between 0 and 1, got {bad[0]}")


def parse_numbers(text: str, name: str, kind: type = float) -> list:
    """Comma-separated numbers ('1000,2000' -> [1000, 2000] for kind=int)."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    try:
        return [kind(v) for v in values]
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise SelfctxError(f"{name} {text!r} is not a list of {what}: give them comma-separated") from None


def check_folder(path: Path | None, name: str, what: str) -> None:
    """An existing folder (None: unset, allowed); `what` says what it should hold."""
    if path is not None and not Path(path).is_dir():
        raise SelfctxError(f"{name} {path} is not a folder: pass {what}")


def check_file(path: Path | None, name: str, what: str) -> None:
    """An existing file (None: unset, allowed)."""
    if path is not None and not Path(path).is_file():
        raise SelfctxError(f"{name} {path} does not exist: pass {what}")


def check_out_folder(path: Path | None, name: str = "--out") -> None:
    """An output folder: new, or an existing folder (never a file, never under a file)."""
    if path is None:
        return
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise SelfctxError(f"{name} {path}: {part} is a file: pass a folder (new or from an earlier run)")

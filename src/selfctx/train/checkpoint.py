"""Checkpoints that make a killed run resume exactly.

OUTPUT/checkpoints/step-000050/ holds the trainable parameters (safetensors), the optimizer and scheduler
states, the RNG states of every rank (python, numpy, torch, cuda) and the loop state (step, samples seen).
A checkpoint is written into a temporary folder and renamed into place, and `latest.json` is replaced
atomically afterwards, so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic

LATEST = "latest.json"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def begin(output_dir: str | Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step` (rank 0 calls this)."""
    tmp = checkpoint_dir(output_dir, step).with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def write_rank_rng(tmp: Path, rank: int) -> None:
    torch.save(rng_state(), tmp / f"rng-rank{rank}.pt")


def finish(
    output_dir: str | Path,
    tmp: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loop_state: dict[str, Any],
    keep: int,
) -> Path:
    """Write the shared state into `tmp`, rename it into place, point latest.json at it, prune old ones."""
    save_file({k: v.detach().contiguous() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps(loop_state, indent=2))
    for file in tmp.iterdir():  # the rename below is only as durable as the files' contents
        with file.open("rb") as handle:
            os.fsync(handle.fileno())
    final = checkpoint_dir(output_dir, step)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_json_atomic(Path(output_dir) / "checkpoints" / LATEST, {"step": step, "path": final.name})
    _prune(Path(output_dir) / "checkpoints", keep)
    return final


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest(output_dir: str | Path) -> Path | None:
    pointer = Path(output_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / json.loads(pointer.read_text())["path"]
    if not (path / "state.json").is_file():
        raise SelfctxError(f"{pointer} names {path}, which is incomplete: delete {pointer.parent} to restart")
    return path


def load(
    path: Path,
    rank: int,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> dict[str, Any]:
    """Restore everything `finish` wrote; returns the loop state."""
    saved = load_file(str(path / "trainable.safetensors"))
    if set(saved) != set(params):
        missing = sorted(set(params) - set(saved))[:3]
        raise SelfctxError(
            f"checkpoint {path} does not match the model's trainable parameters (e.g. {missing}): "
            "resume with the same model and method, or use a new output_dir"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name].to(param.device, param.dtype))
    device = next(iter(params.values())).device
    # Our own files; they hold RNG tuples and optimizer dicts, which need the full unpickler.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rng_file = path / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise SelfctxError(
            f"checkpoint {path} has no RNG state for rank {rank}: resume with the same world size"
        )
    set_rng_state(torch.load(rng_file, weights_only=False))
    return dict(json.loads((path / "state.json").read_text()))

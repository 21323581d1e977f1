"""Run named stages in order with done-markers, so a rerun after a kill continues where it stopped.

Each stage works in OUT/<stage>/. `started.json` records the config hash the folder's contents were made
under; `done.json` (written last, atomically) adds the stage's outputs summary, wall time and peak memory.
A rerun skips a stage whose done-marker carries the current hash; a stage that started under another hash
has its folder cleared (its checkpoints belong to another config) unless the stage resumes across configs
itself. Each hash covers the stage's own config and the hashes before it, so a changed upstream stage
reruns everything after it. `from_stage` clears that stage and every later one first.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic

DONE = "done.json"
STARTED = "started.json"


@dataclass(frozen=True)
class Stage:
    name: str
    config: Any  # JSON-able; what the hash covers
    run: Callable[[Path], dict[str, Any]]  # gets OUT/<name>/, returns the outputs summary
    keep_on_change: bool = False  # True: the stage resumes into a folder made under another config itself


def config_hash(config: Any, upstream: str = "") -> str:
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{upstream}\n{text}".encode()).hexdigest()[:16]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory:
    """Peak resident memory while the block runs (sampled), plus peak CUDA memory when CUDA is in use."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_rss = 0
        self.peak_cuda: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, _rss_bytes())
        cuda = _cuda()
        if cuda is not None:
            self.peak_cuda = int(cuda.max_memory_allocated())


def _cuda() -> Any:
    torch = sys.modules.get("torch")  # only when the stage itself imported torch
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda
    return None


def clear_stage(folder: Path) -> None:
    """Remove a stage folder: renamed aside first so a kill never leaves a half-deleted folder in place."""
    if not folder.exists():
        return
    trash = folder.with_name(f".{folder.name}.deleting")
    shutil.rmtree(trash, ignore_errors=True)
    folder.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def run_stages(
    out: Path,
    stages: Sequence[Stage],
    *,
    from_stage: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run (or skip) every stage in order; returns each stage's done-marker."""
    names = [s.name for s in stages]
    if from_stage is not None and from_stage not in names:
        raise SelfctxError(f"unknown stage {from_stage!r} for --from: pick one of {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    if from_stage is not None:
        for stage in stages[names.index(from_stage) :]:
            clear_stage(out / stage.name)
    markers: dict[str, dict[str, Any]] = {}
    upstream = ""
    for stage in stages:
        folder = out / stage.name
        digest = config_hash(stage.config, upstream)
        upstream = digest
        done = read_json(folder / DONE)
        if done is not None and done.get("config_hash") == digest:
            log(f"[{stage.name}] done already (config {digest}): skipped")
            markers[stage.name] = done
            continue
        started = read_json(folder / STARTED)
        if started is not None and started.get("config_hash") != digest:
            if stage.keep_on_change:
                log(f"[{stage.name}] config changed: resuming into {folder} under the new config")
            else:
                log(f"[{stage.name}] config changed since {folder} was started: starting it over")
                clear_stage(folder)
        elif started is not None:
            log(f"[{stage.name}] resuming the unfinished stage in {folder}")
        (folder / DONE).unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / STARTED, {"stage": stage.name, "config_hash": digest})
        log(f"[{stage.name}] running")
        began = time.time()
        clock = time.perf_counter()
        with PeakMemory() as memory:
            outputs = stage.run(folder)
        marker = {
            "stage": stage.name,
            "config_hash": digest,
            "config": stage.config,
            "started_at": began,
            "seconds": round(time.perf_counter() - clock, 2),
            "peak_rss_bytes": memory.peak_rss,
            "peak_cuda_bytes": memory.peak_cuda,
            "resumed": started is not None and started.get("config_hash") == digest,
            "outputs": outputs,
        }
        write_json_atomic(folder / DONE, marker)
        log(f"[{stage.name}] done in {marker['seconds']} s")
        markers[stage.name] = marker
    return markers

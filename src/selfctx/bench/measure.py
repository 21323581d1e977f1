"""What the `selfctx bench` measurements share: memory probes, real text as token ids, length lists, and one
measurement per fresh worker process (so its peak memory is its own)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def text_ids(tokenizer: Any, source: str | None, n_tokens: int) -> list[int]:
    """Real text, repeated if needed, cut to n tokens: files of a folder, or one file."""
    if source:
        path = Path(source)
        files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
        text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    else:  # no text given: the WordNet noun list shipped with the package (real words, not random ids)
        from importlib.resources import files as package_files

        text = (package_files("selfctx.synth") / "data" / "wordnet_nouns.txt").read_text(encoding="utf-8")
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise SelfctxError(f"no text found in {source}")
    while len(ids) < n_tokens:
        ids = ids + ids
    return ids[:n_tokens]


def parse_lengths(text: str) -> list[int]:
    """'4k,16k,64k' -> [4096, 16384, 65536] (k = 1024)."""
    out = []
    for part in (p.strip().lower() for p in text.split(",")):
        if part:
            try:
                out.append(int(float(part[:-1]) * 1024) if part.endswith("k") else int(part))
            except ValueError:
                raise SelfctxError(f"length {part!r} is not a number like 4096 or 16k") from None
    return out


def run_worker(verb: str, spec: dict[str, Any], what: str) -> dict[str, Any]:
    """One measurement in a fresh `selfctx bench <verb> --worker` process, so its peak memory is its own; its
    JSON row (the last stdout line). A failed worker raises naming `what` and its last stderr line, or
    "(no output)" when it died without one (e.g. killed for memory)."""
    proc = subprocess.run(
        [sys.executable, "-m", "selfctx", "bench", verb, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SelfctxError(f"{what} failed: {last}")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        raise SelfctxError(f"{what} failed: the worker exited without printing its result")
    return json.loads(lines[-1])

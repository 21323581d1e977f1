"""Compressed memories by key: an in-RAM LRU bounded in bytes, optionally backed by a folder on disk.

The key (see `memory_key`) hashes the context text, how it was rendered, the model and the expert set, so a
memory is only ever reused by the same model with the same experts. On disk each memory is a folder
`<dir>/<key>/` written by `Memory.save` into a temporary folder and renamed into place, so another process
sees either nothing or a complete memory. The disk copy is not budgeted (delete old folders to reclaim space).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from selfctx.compress import Memory
from selfctx.errors import SelfctxError
from selfctx.fsutil import honour_umask

Source = Literal["ram", "disk"]


def memory_key(context: str, mode: str, model_fingerprint: str) -> str:
    """Content address of a compressed context: sha256 of (model/experts fingerprint, mode, text)."""
    payload = json.dumps({"model": model_fingerprint, "mode": mode, "context": context}, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def memory_footprint(memory: Memory) -> int:
    """Bytes a memory holds: its keys/values plus the raw tail ids."""
    return memory.nbytes + memory.tail_ids.numel() * memory.tail_ids.element_size()


@dataclass
class StoreStats:
    hits_ram: int = 0
    hits_disk: int = 0
    misses: int = 0
    evictions: int = 0
    bytes_in_ram: int = 0
    entries_in_ram: int = 0


class MemoryStore:
    def __init__(
        self, budget_bytes: int, folder: Path | None = None, device: str | torch.device = "cpu"
    ) -> None:
        self.budget_bytes = budget_bytes
        self.folder = folder
        self.device = device
        self.stats = StoreStats()
        self._entries: OrderedDict[str, tuple[Memory, int]] = OrderedDict()
        self._lock = threading.Lock()
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SelfctxError(
                    f"cannot create memory folder {folder} ({exc}): pass a writable --memory-dir"
                ) from None

    def get(self, key: str) -> tuple[Memory, Source] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.stats.hits_ram += 1
                return entry[0], "ram"
        memory = self._load(key)
        if memory is None:
            with self._lock:
                self.stats.misses += 1
            return None
        with self._lock:
            self.stats.hits_disk += 1
        self._remember(key, memory)
        return memory, "disk"

    def put(self, key: str, memory: Memory) -> None:
        self._remember(key, memory)
        if self.folder is not None:
            self._save(key, memory)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            if key in self._entries:
                return True
        return self.folder is not None and (self.folder / key / "memory.json").is_file()

    def _remember(self, key: str, memory: Memory) -> None:
        size = memory_footprint(memory)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return
            if size > self.budget_bytes:  # larger than the whole budget: used once, never kept in RAM
                return
            self._entries[key] = (memory, size)
            self.stats.bytes_in_ram += size
            while self.stats.bytes_in_ram > self.budget_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.stats.bytes_in_ram -= evicted
                self.stats.evictions += 1
            self.stats.entries_in_ram = len(self._entries)

    def _load(self, key: str) -> Memory | None:
        if self.folder is None or not (self.folder / key / "memory.json").is_file():
            return None
        try:
            return Memory.load(self.folder / key, device=self.device)
        except (SelfctxError, OSError, ValueError, KeyError):  # a damaged folder is a miss: compress again
            return None

    def _save(self, key: str, memory: Memory) -> None:
        assert self.folder is not None
        final = self.folder / key
        if (final / "memory.json").is_file():
            return
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:16]}-", dir=self.folder))
        try:
            honour_umask(staging, directory=True)  # mkdtemp's 0700 would survive the rename
            memory.save(staging)
            os.replace(staging, final)  # atomic: readers see no folder or a complete one
        except OSError:
            # another process won the race (final exists and is not empty): theirs is the same memory
            shutil.rmtree(staging, ignore_errors=True)

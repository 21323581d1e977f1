"""A persistent call cache in front of any backend: finished calls survive a kill -9 and are never repeated.

Each completed call is stored under `ChatRequest.cache_key(model_id)`, i.e. (model, messages, sampling
parameters incl. seed), in a SQLite file in WAL mode. All misses go to the backend at once (so it stays
busy) through `generate_iter`, and each result is committed as soon as the backend hands it over, so a killed
run loses at most the calls in flight. Errored completions are not stored: the next run tries them again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM, BackendStats, ChatRequest, Completion, in_request_order

CACHE_FILENAME = "llm_calls.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    completion TEXT NOT NULL,
    created REAL NOT NULL
)
"""


class CallCache:
    """The SQLite store itself: `get_many(keys)` and `put_many(items)`; safe to share between threads.

    `path` is a directory (the file inside is `llm_calls.sqlite`) or a file ending in .sqlite/.sqlite3/.db.
    """

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix not in (".sqlite", ".sqlite3", ".db"):  # a directory (the usual --cache-dir)
            path = path / CACHE_FILENAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: transactions are opened explicitly in put_many.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise SelfctxError(
                f"cannot open the LLM call cache at {path}: {exc}: pass a writable --cache-dir"
            ) from None
        self.path = path
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):  # stay under SQLite's bound-parameter limit
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, completion FROM calls WHERE key IN ({marks})", chunk)
                for key, blob in rows:
                    found[key] = Completion.from_json(json.loads(blob))
        return found

    def put_many(self, items: Sequence[tuple[str, str, Completion]]) -> None:
        """Store (key, model, completion) triples in one transaction; errored completions are skipped."""
        rows = [
            (key, model, json.dumps({**c.to_json(), "cached": False}, ensure_ascii=False), time.time())
            for key, model, c in items
            if c.ok
        ]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


class CachedLLM(LLM):
    """Wraps `inner`; answers repeated calls from the cache (`Completion.cached=True`).

    `stats` combines the inner backend's counters with the cache hits: `calls` counts every request asked
    for, `cached_calls` those answered from the cache.
    """

    def __init__(self, inner: LLM, path: str | Path) -> None:
        super().__init__()
        self.inner = inner
        self.model_id = inner.model_id
        self.cache = CallCache(path)
        self._hits = 0
        self._lock = threading.Lock()

    @property
    def preferred_batch_size(self) -> int:
        return self.inner.preferred_batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        return in_request_order(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests: Sequence[ChatRequest]) -> Iterator[tuple[int, Completion]]:
        keys = [r.cache_key(self.model_id) for r in requests]
        positions: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            positions.setdefault(k, []).append(i)  # identical requests in one batch are generated once
        found = self.cache.get_many(keys)
        hits = sum(len(positions[k]) for k in found)
        with self._lock:
            self._hits += hits
        for k, c in found.items():
            cached = Completion(**{**c.to_json(), "cached": True})
            for i in positions[k]:
                yield i, cached
        pending = [k for k in positions if k not in found]
        for j, completion in self.inner.generate_iter([requests[positions[k][0]] for k in pending]):
            self.cache.put_many([(pending[j], self.model_id, completion)])
            for i in positions[pending[j]]:
                yield i, completion

    @property
    def stats(self) -> BackendStats:
        inner = self.inner.stats
        merged = BackendStats(**inner.to_json())
        merged.cached_calls = self._hits
        merged.calls = inner.calls + self._hits
        return merged

    @stats.setter
    def stats(self, value: BackendStats) -> None:
        pass  # LLM.__init__ assigns a fresh BackendStats; this wrapper derives its own

    def close(self) -> None:
        self.cache.close()
        self.inner.close()

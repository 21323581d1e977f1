"""A persistent call cache in front of any backend: finished calls survive a kill -9 and are never repeated.

Each completed call is stored under `ChatRequest.cache_key(model_id)`, i.e. (model, messages, sampling
parameters incl. seed), in a SQLite file in WAL mode. Misses are sent to the backend in chunks of its
preferred batch size and every chunk is committed at once, so a killed run loses at most the chunk in flight.
Errored completions are not stored: the next run tries them again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM, BackendStats, ChatRequest, Completion

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
        self._asked = 0
        self._lock = threading.Lock()

    @property
    def preferred_batch_size(self) -> int:
        return self.inner.preferred_batch_size

    def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        keys = [r.cache_key(self.model_id) for r in requests]
        results: dict[str, Completion] = {
            k: Completion(**{**c.to_json(), "cached": True}) for k, c in self.cache.get_many(keys).items()
        }
        hits = sum(1 for k in keys if k in results)
        # Identical requests in one batch are generated once.
        pending = [(k, r) for k, r in dict(zip(keys, requests, strict=True)).items() if k not in results]
        step = max(1, self.inner.preferred_batch_size)
        for start in range(0, len(pending), step):
            chunk = pending[start : start + step]
            done = self.inner.generate([r for _, r in chunk])
            self.cache.put_many([(k, self.model_id, c) for (k, _), c in zip(chunk, done, strict=True)])
            results.update((k, c) for (k, _), c in zip(chunk, done, strict=True))
        with self._lock:
            self._hits += hits
            self._asked += len(requests)
        return [results[k] for k in keys]

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

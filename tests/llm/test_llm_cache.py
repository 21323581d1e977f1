"""CachedLLM: hits and misses, persistence across processes, and a kill -9 midway through a batch."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from selfctx.llm import CachedLLM, ChatRequest, Completion, EchoLLM, SamplingParams
from selfctx.llm.base import LLM
from selfctx.llm.cache import CACHE_FILENAME


def _requests(n: int, seed: int = 0) -> list[ChatRequest]:
    return [ChatRequest.user(f"question {i}", SamplingParams(max_tokens=20, seed=seed)) for i in range(n)]


def test_hits_misses_and_stats(tmp_path: Path) -> None:
    inner = EchoLLM()
    llm = CachedLLM(inner, tmp_path)
    first = llm.generate(_requests(5))
    assert [c.cached for c in first] == [False] * 5
    again = llm.generate(_requests(7))  # 5 hits, 2 misses
    assert [c.cached for c in again] == [True] * 5 + [False] * 2
    assert [c.text for c in again[:5]] == [c.text for c in first]
    assert len(inner.calls) == 7
    assert llm.stats.cached_calls == 5
    assert llm.stats.calls == 12


def test_key_covers_model_messages_sampling_and_seed(tmp_path: Path) -> None:
    inner = EchoLLM()
    llm = CachedLLM(inner, tmp_path)
    base = ChatRequest.user("same text", SamplingParams(seed=1))
    variants = [
        base,
        ChatRequest.user("same text", SamplingParams(seed=2)),
        ChatRequest.user("same text", SamplingParams(seed=1, temperature=0.1)),
        ChatRequest.user("same text", SamplingParams(seed=1), system="be brief"),
    ]
    llm.generate(variants)
    assert len(inner.calls) == 4
    other_model = CachedLLM(EchoLLM(model_id="echo:other"), tmp_path)
    other_model.generate([base])
    assert len(other_model.inner.calls) == 1  # type: ignore[attr-defined]


def test_duplicates_in_one_batch_are_generated_once(tmp_path: Path) -> None:
    inner = EchoLLM()
    out = CachedLLM(inner, tmp_path).generate(_requests(3) * 3)
    assert len(inner.calls) == 3
    assert [c.text for c in out[:3]] == [c.text for c in out[3:6]] == [c.text for c in out[6:]]


class _FlakyLLM(LLM):
    """Fails every request whose text contains 'bad' (an errored Completion, as backends report failures)."""

    model_id = "flaky"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:  # type: ignore[override]
        self.calls += len(requests)
        return [
            Completion("", finish_reason="error", error="boom")
            if "bad" in r.messages[-1].content
            else Completion("fine")
            for r in requests
        ]


def test_errored_completions_are_not_cached(tmp_path: Path) -> None:
    inner = _FlakyLLM()
    llm = CachedLLM(inner, tmp_path)
    reqs = [ChatRequest.user("good"), ChatRequest.user("bad")]
    first = llm.generate(reqs)
    assert first[0].ok and not first[1].ok
    second = llm.generate(reqs)
    assert second[0].cached and not second[1].cached and not second[1].ok
    assert inner.calls == 3  # the failed call was tried again, the good one was not
    assert len(llm.cache) == 1


_WORKER = textwrap.dedent(
    """
    import sys
    from selfctx.llm import CachedLLM, ChatRequest, EchoLLM, SamplingParams
    reqs = [ChatRequest.user(f"question {i}", SamplingParams(max_tokens=20, seed=7)) for i in range(40)]
    llm = CachedLLM(EchoLLM(delay_s=float(sys.argv[2])), sys.argv[1])
    llm.generate(reqs)
    print("finished", flush=True)
    """
)


def _cached_rows(path: Path) -> int:
    db = path / CACHE_FILENAME
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError:  # table not created yet
        return 0


def test_persists_across_processes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-c", _WORKER, str(tmp_path), "0"], check=True, timeout=120)
    inner = EchoLLM()
    out = CachedLLM(inner, tmp_path).generate(
        [ChatRequest.user(f"question {i}", SamplingParams(max_tokens=20, seed=7)) for i in range(40)]
    )
    assert all(c.cached for c in out)
    assert inner.calls == []


def test_kill_9_midway_then_rerun_makes_only_the_missing_calls(tmp_path: Path) -> None:
    reqs = [ChatRequest.user(f"question {i}", SamplingParams(max_tokens=20, seed=7)) for i in range(40)]
    reference = [c.text for c in EchoLLM().generate(reqs)]

    # 40 calls at 50 ms each, committed in chunks of 8: kill once at least two chunks are stored.
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(tmp_path), "0.05"], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _cached_rows(tmp_path) < 16:
        assert proc.poll() is None, "the worker finished before it could be killed"
        assert time.monotonic() < deadline, "the worker stored nothing"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    survived = _cached_rows(tmp_path)
    assert 16 <= survived < 40

    inner = EchoLLM()
    llm = CachedLLM(inner, tmp_path)
    out = llm.generate(reqs)
    assert [c.text for c in out] == reference  # same data as an uninterrupted run
    assert len(inner.calls) == 40 - survived  # finished calls are not repeated
    assert sum(c.cached for c in out) == survived
    assert _cached_rows(tmp_path) == 40  # nothing duplicated


def test_each_result_is_saved_as_soon_as_the_backend_returns_it(tmp_path: Path) -> None:
    llm = CachedLLM(EchoLLM(), tmp_path)
    seen = []
    for i, completion in llm.generate_iter(_requests(4)):
        seen.append(i)
        assert completion.ok
        assert len(llm.cache) == len(seen)  # committed before the next call starts
    assert sorted(seen) == [0, 1, 2, 3]

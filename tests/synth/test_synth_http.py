"""The pipeline through a real OpenAI-compatible HTTP server on localhost (tests/fake_openai_server.py):
injected failures and timeouts are retried and counted; a `selfctx synth` killed with SIGKILL midway and run
again gives the same dataset as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from synth_fakes import scripted_llm

from fake_openai_server import Fault, serve_in_thread
from selfctx.synth.pipeline import SynthConfig, run_synth


def rows(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for shard in sorted((out / "data").glob("train-*.jsonl"))
        for line in shard.read_text().splitlines()
        if line.strip()
    ]


def test_http_run_retries_failures_and_timeouts_and_completes(tmp_path: Path) -> None:
    faults = [
        Fault(kind="error", status=500, every=4, attempts=1),  # transient: retried
        Fault(kind="delay", delay_s=2.0, every=11, attempts=1),  # past the client timeout once: retried
        Fault(match="Name one key detail", kind="error", status=500, every=2, attempts=-1),  # permanent
    ]
    with serve_in_thread(scripted_llm(), model_name="scripted", faults=faults) as server:
        cfg = SynthConfig(
            backend="openai",
            base_url=server.base_url,
            model="scripted",
            tokenizer="regex",
            per_task=1,
            length="2k",
            seed=6,
            timeout=0.5,
            max_retries=3,
            concurrency=8,
            max_attempts_per_sample=8,
        )
        summary = run_synth(cfg, tmp_path)
        injected = server.stats.faults_injected
    backend = summary["backend"]
    assert injected > 0
    assert backend["retries"] > 0 and backend["timeouts"] > 0 and backend["errors"] > 0
    assert summary["dropped_by_filter"]["error"] == backend["errors"]  # every failed call dropped one item
    assert summary["samples"] == 6 and len(rows(tmp_path)) == 6
    card = (tmp_path / "README.md").read_text()
    assert "| retries |" in card and "| error |" in card


def _cached_calls(out: Path) -> int:
    path = out / "cache" / "llm_calls.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.1) as db:
            return int(db.execute("select count(*) from calls").fetchone()[0])
    except sqlite3.Error:
        return 0


def _synth_cmd(out: Path, base_url: str) -> list[str]:
    return [
        sys.executable, "-m", "selfctx", "synth", "--out", str(out), "--backend", "openai",
        "--base-url", base_url, "--model", "scripted", "--tokenizer", "regex", "--per-task", "2",
        "--length", "2k", "--seed", "3", "--concurrency", "4",
    ]  # fmt: skip


def test_kill_9_midway_then_rerun_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    env = {**os.environ, "SELFCTX_PROGRESS": "0"}
    with serve_in_thread(scripted_llm(delay_s=0.02), model_name="scripted", max_batch=4) as server:
        reference = subprocess.run(
            _synth_cmd(tmp_path / "ref", server.base_url),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert reference.returncode == 0, reference.stderr
        total = server.stats.requests

        before = server.stats.requests
        proc = subprocess.Popen(
            _synth_cmd(tmp_path / "run", server.base_url), env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        # Kill once the call cache holds about two thirds of the calls: past the pool, into the tasks.
        while _cached_calls(tmp_path / "run") < total * 2 // 3 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        served_before_kill = server.stats.requests - before
        assert 0 < served_before_kill < total
        assert not (tmp_path / "run" / "summary.json").exists()  # it really died midway

        rerun = subprocess.run(
            _synth_cmd(tmp_path / "run", server.base_url),
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rerun.returncode == 0, rerun.stderr
        served_by_rerun = server.stats.requests - before - served_before_kill

    expected, got = rows(tmp_path / "ref"), rows(tmp_path / "run")
    assert got == expected  # nothing lost, nothing duplicated, same order
    assert len({(r["task"], r["seed"]) for r in got}) == len(got) == 12
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["cached_calls_this_run"] > 0  # finished calls were replayed, not repeated
    # Only the calls lost with the kill are asked again (at most one in-flight batch per worker).
    assert served_by_rerun < total - served_before_kill + 16

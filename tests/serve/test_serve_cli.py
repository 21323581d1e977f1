"""`selfctx serve` as a user runs it: bad options exit 2 in one line; the real model serves and stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def _selfctx(*args: str) -> list[str]:
    return [sys.executable, "-m", "selfctx", *args]


def test_missing_expert_folder_is_a_one_line_error(tmp_path: object) -> None:
    done = subprocess.run(
        _selfctx("serve", "--experts", "/nonexistent/experts"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "expert folder /nonexistent/experts does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_smollm2_server_reuses_memory_and_stops_gracefully(tmp_path: object) -> None:
    port = _free_port()
    env = {**os.environ, "SELFCTX_PROGRESS": "0"}
    proc = subprocess.Popen(
        _selfctx(
            "serve",
            "--model",
            "smollm2-135m",
            "--window",
            "128",
            "--native-context",
            "512",
            "--answer-budget",
            "64",
            "--port",
            str(port),
            "--memory-dir",
            str(tmp_path),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start in 300 s"
            time.sleep(1)
        doc = " ".join(f"The {w} is kept in room {i}." for i, w in enumerate(["lamp", "book", "key"] * 30))
        body = {
            "model": "smollm2-135m",
            "max_tokens": 8,
            "messages": [
                {"role": "system", "content": doc},
                {"role": "user", "content": "Where is the key kept?"},
            ],
        }
        first = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300).json()
        second = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300).json()
        assert first["selfctx"]["ratio"] > 1 and first["selfctx"]["memory_source"] == "compressed"
        assert second["selfctx"]["memory_source"] == "ram" and second["selfctx"]["memory_reused"] is True
        assert first["choices"][0]["message"]["content"] == second["choices"][0]["message"]["content"]
        assert first["usage"]["completion_tokens"] >= 1
        assert any(p.is_dir() for p in tmp_path.iterdir())  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_window_the_experts_native_context_cannot_hold_is_refused_before_loading(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    experts = tmp_path / "experts"
    experts.mkdir()
    mechanism = {"window": 64, "native_context": 1024}
    (experts / "battery.json").write_text(json.dumps({"kind": "lora", "ratios": [8], "mechanism": mechanism}))
    model = tmp_path / "model"  # a model folder that fails to load: the refusal must come before loading
    model.mkdir()
    (model / "config.json").write_text("{}")
    done = subprocess.run(
        _selfctx("serve", "--model", str(model), "--experts", str(experts), "--window", "2048"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--window 2048 must be smaller than the native context" in done.stderr

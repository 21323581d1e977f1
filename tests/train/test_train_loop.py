"""The shared loop through `run_finetune` on the tiny model: exact resume, accumulation, overfitting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfctx.config import load_config, to_dict
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


def test_a_start_killed_before_its_first_checkpoint_leaves_no_row_behind(
    tmp_path: Path, synth_dir: Path
) -> None:
    cfg = tiny_cfg(tmp_path / "c", synth_dir, "loop.save_every=3")
    run_finetune(cfg, stop_after=1)  # step 1 logged, no checkpoint yet: a kill at this point
    assert not (tmp_path / "c" / "checkpoints" / "latest.json").exists()
    run_finetune(cfg)
    log = [json.loads(line) for line in (tmp_path / "c" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4, 5, 6]  # step 1 once, from the run that went on


def test_a_time_limit_checkpoints_the_step_it_stops_at_and_the_rerun_continues_exactly(
    tmp_path: Path, synth_dir: Path
) -> None:
    run_finetune(tiny_cfg(tmp_path / "a", synth_dir))  # uninterrupted
    first = run_finetune(tiny_cfg(tmp_path / "b", synth_dir, "loop.time_limit_s=1e-6"))
    assert first.final_dir is None and first.train.step == 1  # save_every is 2: step 1 saved for the limit
    second = run_finetune(tiny_cfg(tmp_path / "b", synth_dir))
    assert second.train.resumed_from == 1
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_stop_at_step_checkpoints_there_on_the_full_schedule_and_a_rerun_without_it_continues_exactly(
    tmp_path: Path, synth_dir: Path
) -> None:
    run_finetune(tiny_cfg(tmp_path / "a", synth_dir))  # uninterrupted
    first = run_finetune(tiny_cfg(tmp_path / "b", synth_dir, "loop.stop_at_step=3"))
    assert first.final_dir is None and first.train.step == 3  # save_every is 2: step 3 saved for the stop
    again = run_finetune(tiny_cfg(tmp_path / "b", synth_dir, "loop.stop_at_step=3"))
    assert again.train.step == 3 and again.train.losses == []  # already there: nothing more is trained
    second = run_finetune(tiny_cfg(tmp_path / "b", synth_dir))
    assert second.train.resumed_from == 3
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert all(torch.equal(a[name], b[name]) for name in a)  # the lr schedule ran to max_steps throughout


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
    with pytest.raises(SelfctxError, match=r"trained with loop\.micro_batch_size=1, this command has 2"):
        run_finetune(tiny_cfg(tmp_path / "g", synth_dir, "loop.micro_batch_size=2"))


KILLER = """
import os, signal, sys
from selfctx.config import load_config, to_dict
from selfctx.train.config import FinetuneConfig
from selfctx.train.finetune import run_finetune

def die(step, loss):
    if step == int(sys.argv[2]):  # after this step's update, before its checkpoint: its work is lost
        os.kill(os.getpid(), signal.SIGKILL)

run_finetune(load_config(FinetuneConfig, None, sys.argv[3:]), on_step=die)
"""


def test_sigkill_midway_then_rerun_continues_exactly(tmp_path: Path, synth_dir: Path) -> None:
    sets = ["loop.save_every=2", "loop.max_steps=8", "loop.micro_batch_size=2"]
    reference = run_finetune(tiny_cfg(tmp_path / "a", synth_dir, *sets))
    cfg_b = tiny_cfg(tmp_path / "b", synth_dir, *sets)
    overrides = [f"{k}={v}" for k, v in _flat(to_dict(cfg_b)).items()]
    env = {**os.environ, "SELFCTX_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, "x", "5", *overrides], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())["step"] == 4
    assert not (tmp_path / "b" / "final").exists()
    resumed = run_finetune(cfg_b)
    assert resumed.train.resumed_from == 4
    assert reference.train.losses[4:] == resumed.train.losses
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def _flat(data: dict, prefix: str = "") -> dict:
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif value is not None:
            out[f"{prefix}{key}"] = json.dumps(value)  # YAML reads JSON
    return out


def test_tensorboard_logging_is_optional_and_says_how_to_enable(tmp_path: Path, synth_dir: Path) -> None:
    import importlib.util

    cfg = tiny_cfg(tmp_path / "tb", synth_dir, "loop.tensorboard=true", "loop.max_steps=1")
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(SelfctxError, match="pip install tensorboard"):
            run_finetune(cfg)
    else:
        run_finetune(cfg)
        assert any((tmp_path / "tb" / "tensorboard").iterdir())


def test_warmup_starts_above_zero_so_the_first_step_updates() -> None:
    from selfctx.train.loop import lr_factor

    cosine = lr_factor("cosine", 4, 20)
    assert [cosine(s) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert cosine(4) == 1.0 and abs(cosine(20)) < 1e-12 and 0 < cosine(12) < 1
    assert lr_factor("linear", 0, 10)(5) == 0.5 and lr_factor("constant", 2, 10)(9) == 1.0

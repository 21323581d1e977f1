"""Data parallelism: two gloo processes under torchrun train exactly what one process does with the same
global batch (accumulating over the two halves)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def _args(out: Path, synth: Path, accum: int) -> list[str]:
    sets = [
        "model.name=tiny",
        f"loop.output_dir={out}",
        "loop.max_steps=4",
        "loop.save_every=2",
        f"data.sources=[{{kind: synth, path: {synth}}}]",
        "data.max_tokens=512",
        "lora.r=4",
        "loop.micro_batch_size=2",
        f"loop.grad_accum_steps={accum}",
        "loop.optim.lr=1e-2",
        "loop.device=cpu",
    ]
    return ["-m", "selfctx", "train", "--method", "finetune", *[x for s in sets for x in ("--set", s)]]


def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tmp_path: Path, synth_dir: Path) -> None:
    env = {**os.environ, "SELFCTX_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, *_args(tmp_path / "one", synth_dir, accum=2)],
        check=True,
        env=env,
        capture_output=True,
    )
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp = subprocess.run(
        [*launch, *_args(tmp_path / "two", synth_dir, accum=1)], env=env, capture_output=True, text=True
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = load_file(str(tmp_path / "one" / "final" / "adapter_model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "adapter_model.safetensors"))
    init_b = [name for name in one if "lora_B" in name]
    assert init_b and all(one[name].abs().max() > 0 for name in init_b)  # B starts at zero: it was trained
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)
    # Both ranks wrote their RNG state into the shared checkpoint.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints" / "step-000004").glob("rng-*")) == [
        "rng-rank0.pt",
        "rng-rank1.pt",
    ]

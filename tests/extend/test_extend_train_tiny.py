"""The real train stage on the tiny random Llama: experts published to OUT/experts, loadable, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfctx.extend.plan import load_extend_config, make_plan
from selfctx.extend.runner import DONE, Stage, run_stages
from selfctx.extend.stages import train_stage

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _tiny_plan(out: Path, steps: int = 1):  # noqa: ANN202
    cfg = load_extend_config(
        "tiny",
        "smoke",
        target_length=192,  # x4 reaches 256 tokens with the sink: 192 + the 64-token prompt margin
        overrides=[
            "min_ratio=2",
            "eval.answer_budget=32",
            "experts.experts.window=32",
            "experts.experts.native_context=128",
            "experts.experts.group_tokens=512",
            "experts.data.min_tokens=16",
            "experts.data.max_tokens=160",  # room for a recall sample (chat header + fact + question)
            f"experts.loop.max_steps={steps}",
            "experts.loop.optim.lr=0.01",
        ],
    )
    return make_plan(cfg, out)


def _pool(out: Path) -> None:
    pool = out / "synth" / "pool"
    pool.mkdir(parents=True)
    rows = [
        {"text": f"Passage {i}: the {i}th lantern hangs by the blue door near the river. " * 3}
        for i in range(8)
    ]
    (pool / "pool-000000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_train_stage_publishes_a_loadable_battery_and_reruns_skip(tmp_path: Path) -> None:
    from selfctx.compress import CompressedLM
    from selfctx.extend.stages import load_base_for_eval

    _pool(tmp_path)
    plan = _tiny_plan(tmp_path)
    assert plan.native_context == 128 and plan.ratios == (2, 4)
    stage = Stage("train", plan.stage_configs()["train"], lambda folder: train_stage(plan, folder, tmp_path))
    markers = run_stages(tmp_path, [stage], log=lambda _: None)
    outputs = markers["train"]["outputs"]
    assert outputs["sources"] == [
        "recall",
        "text",
    ]  # no synth samples: facts among the passages, and the passages
    assert set(outputs["experts"]) == {"r2", "r4"} and all(
        e["steps"] == 1 for e in outputs["experts"].values()
    )
    model, tokenizer = load_base_for_eval(plan)  # the train stage's own base model, handed over once
    again_loaded, _ = load_base_for_eval(plan)  # the next call loads the saved base
    assert again_loaded is not model and not model.training
    for name, value in model.state_dict().items():
        assert torch.equal(value, again_loaded.state_dict()[name]), name
    lm = CompressedLM.from_pretrained(model, experts=tmp_path / "experts", tokenizer=tokenizer)
    assert lm.battery.ratios == (2, 4) and lm.window == 32 and lm.native_context == 128
    # a rerun with the same config skips; one more step (a changed config) retrains from scratch
    before = (tmp_path / "train" / DONE).read_text()
    run_stages(tmp_path, [stage], log=lambda _: None)
    assert (tmp_path / "train" / DONE).read_text() == before
    plan3 = _tiny_plan(tmp_path, steps=2)
    stage3 = Stage(
        "train", plan3.stage_configs()["train"], lambda folder: train_stage(plan3, folder, tmp_path)
    )
    again = run_stages(tmp_path, [stage3], log=lambda _: None)
    assert all(e["steps"] == 2 for e in again["train"]["outputs"]["experts"].values())
    assert again["train"]["resumed"] is False

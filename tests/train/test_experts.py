"""Training compression experts (issue #4) on the tiny model with the `cpu-smoke` preset."""

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
from typer.testing import CliRunner

from selfctx.cli import app
from selfctx.config import load_config
from selfctx.errors import SelfctxError
from selfctx.train.experts import ExpertsConfig, run_experts, start_source
from selfctx.train.preset import preset_defaults


def smoke_cfg(out: Path, *overrides: str) -> ExpertsConfig:
    defaults = preset_defaults(ExpertsConfig, "experts", "cpu-smoke")
    return load_config(ExpertsConfig, None, [f"loop.output_dir={out}", *overrides], defaults=defaults)


def expert_weights(folder: Path) -> dict[str, torch.Tensor]:
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*/expert.safetensors")):
        weights.update({f"{file.parent.name}/{k}": v for k, v in load_file(str(file)).items()})
    assert weights, f"no expert weights under {folder}"  # comparing two empty dicts would prove nothing
    return weights


def test_thirty_steps_on_a_fixed_batch_drive_the_loss_down(tmp_path: Path) -> None:
    cfg = smoke_cfg(
        tmp_path / "run",
        "experts.ratios=[4]",
        "data.max_samples_per_source=2",
        "loop.micro_batch_size=2",
        "loop.max_steps=30",
    )
    result = run_experts(cfg)
    losses = result.runs["r4"].losses
    assert len(losses) == 30
    assert losses[-1] < 0.6 * losses[0], losses
    log = [
        json.loads(line) for line in (tmp_path / "run" / "r4" / "train_log.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in log] == list(range(1, 31))
    assert all(row["tokens_per_s"] > 0 and row["memory_mb"] > 0 for row in log)


def test_only_the_expert_in_training_changes(tmp_path: Path) -> None:
    cfg = smoke_cfg(tmp_path / "run", "loop.max_steps=3")
    result = run_experts(cfg, stop_after=3)  # trains r2 to the end, then r4
    battery = result.compressed.battery
    base = {k: v.clone() for k, v in result.compressed.model.state_dict().items()}
    fresh = smoke_cfg(tmp_path / "fresh", "loop.max_steps=3")
    from selfctx.train.experts import build_compressed, load_base

    model, tokenizer = load_base(fresh.model, fresh.loop.seed, torch.device("cpu"), torch.float32)
    untrained = build_compressed(fresh, model, tokenizer).battery
    for ratio in (2, 4):
        trained_params = dict(battery.adapter_for(ratio).named_parameters())
        initial = dict(untrained.adapter_for(ratio).named_parameters())
        changed = [n for n in trained_params if not torch.equal(trained_params[n], initial[n])]
        assert changed, f"expert r{ratio} did not train"
        assert any(n.startswith("memory_embedding") or "embedding" in n for n in changed), changed
    for key, value in result.compressed.model.state_dict().items():  # the base stays frozen
        assert torch.equal(value, base[key])
    assert torch.equal(model.model.embed_tokens.weight, result.compressed.model.model.embed_tokens.weight), (
        "the base model must equal a freshly built one (frozen)"
    )


@pytest.mark.parametrize("kind", ["lora", "mha_clone"])
def test_over_a_bf16_base_the_experts_train_float32_weights(tmp_path: Path, kind: str) -> None:
    cfg = smoke_cfg(tmp_path / "run", "loop.dtype=bfloat16", f"experts.kind={kind}", "loop.max_steps=3")
    result = run_experts(cfg)
    assert all(p.dtype == torch.bfloat16 for p in result.compressed.model.parameters())
    params = list(result.compressed.battery.parameters())
    assert params and all(p.dtype == torch.float32 for p in params)
    assert all(torch.isfinite(torch.tensor(r.losses)).all() for r in result.runs.values())
    # what the loop trained is what was saved, and it loads over the bf16 base
    from selfctx.compress.battery import ExpertBattery

    loaded = ExpertBattery.load(tmp_path / "run" / "experts", result.compressed.model)
    saved = dict(loaded.named_parameters())
    for name, value in result.compressed.battery.named_parameters():
        assert torch.allclose(saved[name].float(), value, atol=1e-2), name


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    sets = ("loop.max_steps=6", "loop.save_every=2")
    reference = run_experts(smoke_cfg(tmp_path / "a", *sets))
    cfg = smoke_cfg(tmp_path / "b", *sets)
    first = run_experts(cfg, stop_after=3)  # r2 stops after step 3 (checkpoint at 2): nothing is saved yet
    assert first.experts_dir is None and not (tmp_path / "b" / "experts").exists()
    resumed = run_experts(cfg)
    assert resumed.runs["r2"].resumed_from == 2
    assert reference.runs["r2"].losses[2:] == resumed.runs["r2"].losses
    assert reference.runs["r4"].losses == resumed.runs["r4"].losses
    a, b = expert_weights(tmp_path / "a" / "experts"), expert_weights(tmp_path / "b" / "experts")
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


KILLER = """
import os, signal, sys
from selfctx.train.preset import preset_defaults
from selfctx.config import load_config
from selfctx.errors import SelfctxError
from selfctx.train.experts import ExpertsConfig, run_experts, start_source
out, kill_at = sys.argv[1], int(sys.argv[2])
cfg = load_config(ExpertsConfig, None, [f"loop.output_dir={out}", "loop.max_steps=6", "loop.save_every=2"],
                  defaults=preset_defaults(ExpertsConfig, "experts", "cpu-smoke"))
def on_step(step, loss):
    if step == kill_at and os.path.isdir(os.path.join(out, "r4")):
        os.kill(os.getpid(), signal.SIGKILL)
run_experts(cfg, on_step=on_step)
"""


def test_sigkill_in_the_second_expert_then_rerun_gives_the_same_experts(tmp_path: Path) -> None:
    sets = ("loop.max_steps=6", "loop.save_every=2")
    run_experts(smoke_cfg(tmp_path / "a", *sets))
    env = {**os.environ, "SELFCTX_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, str(tmp_path / "b"), "3"], env=env, capture_output=True, timeout=600
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "b" / "r4" / "checkpoints" / "latest.json").read_text())["step"] == 2
    resumed = run_experts(smoke_cfg(tmp_path / "b", *sets))
    assert resumed.runs["r2"].resumed_from == 6 and resumed.runs["r4"].resumed_from == 2
    a, b = expert_weights(tmp_path / "a" / "experts"), expert_weights(tmp_path / "b" / "experts")
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_saved_experts_load_into_compressed_lm_and_change_its_outputs(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from selfctx.compress.model import CompressedLM
    from selfctx.tiny import tiny_tokenizer

    out = tmp_path / "run"
    run_experts(smoke_cfg(out, "loop.max_steps=8"))
    base = AutoModelForCausalLM.from_pretrained(str(out / "base"))
    trained = CompressedLM.from_pretrained(base, experts=out / "experts", tokenizer=tiny_tokenizer())
    assert trained.window == 32 and trained.native_context == 128  # the trained mechanism is the default
    assert trained.battery.ratios == (2, 4)
    untrained = CompressedLM.from_pretrained(
        base, ratios=(2, 4), window=32, native_context=128, tokenizer=tiny_tokenizer()
    )
    ids = torch.randint(0, 200, (1, 100), generator=torch.Generator().manual_seed(0))
    for ratio in (2, 4):
        with torch.no_grad():
            a, b = trained.logits(ids, ratio), untrained.logits(ids, ratio)
        assert torch.allclose(a[:, :32], b[:, :32], atol=1e-5)  # the first window reads no memory
        assert (a[:, 32:] - b[:, 32:]).abs().max() > 1e-3  # later windows read the trained memory
    answer = trained.generate(
        context="The number of amber-3 is 4821. " * 8, prompt="What is the number?", max_new_tokens=4
    )
    assert answer.expert in ("lora-r2", "lora-r4", "none")


def test_single_compressor_baseline_trains_over_a_ratio_mix(tmp_path: Path) -> None:
    out = tmp_path / "clone"
    result = run_experts(smoke_cfg(out, "experts.kind=mha_clone", "loop.max_steps=4"))
    assert list(result.runs) == ["clone"]
    meta = json.loads((out / "experts" / "battery.json").read_text())
    assert meta["kind"] == "mha_clone" and meta["ratios"] == [2, 4]
    from selfctx.compress.battery import ExpertBattery

    loaded = ExpertBattery.load(out / "experts", result.compressed.model)
    assert loaded.adapter_for(2) is loaded.adapter_for(4)


def test_cli_trains_a_preset_and_rejects_an_unknown_one(tmp_path: Path) -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "selfctx", "train", "--method", "experts", "--preset", "nope"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0, bad.stderr  # one line, no traceback
    assert "unknown experts preset 'nope'" in bad.stderr and "cpu-smoke" in bad.stderr
    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "train",
            "--method",
            "experts",
            "--preset",
            "cpu-smoke",
            "--set",
            f"loop.output_dir={tmp_path}",
            "--set",
            "loop.max_steps=2",
            "--set",
            "experts.ratios=[4]",
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert f"experts in {tmp_path / 'experts'}" in ok.output


@pytest.mark.parametrize("preset", ["smollm2-cpu", "smollm2-gpu", "llama-7b"])
def test_presets_are_valid_configs(preset: str) -> None:
    cfg = load_config(ExpertsConfig, None, [], defaults=preset_defaults(ExpertsConfig, "experts", preset))
    assert cfg.experts.window % max(cfg.experts.ratios) == 0
    assert cfg.experts.native_context is None or cfg.experts.window < cfg.experts.native_context


def test_snapshot_writes_a_loadable_battery_from_the_latest_checkpoints(tmp_path: Path) -> None:
    from selfctx.compress import CompressedLM
    from selfctx.train.experts import snapshot_battery

    cfg = smoke_cfg(
        tmp_path / "run", "loop.max_steps=4", "loop.save_every=2", "data.max_samples_per_source=4"
    )
    run_experts(cfg, stop_after=2)  # r2 stops at step 2 of 4: training is unfinished, no experts/ yet
    assert not (tmp_path / "run" / "experts").exists()
    steps = snapshot_battery(cfg, tmp_path / "snap")
    assert steps == {"r2": 2, "r4": 0}
    saved = expert_weights(tmp_path / "snap")
    checkpoint = load_file(
        str(next((tmp_path / "run" / "r2" / "checkpoints").glob("step-*")) / "trainable.safetensors")
    )
    assert any(v.abs().sum() > 0 for k, v in saved.items() if k.startswith("expert-r2/") and "lora_B" in k)
    assert all(v.abs().sum() == 0 for k, v in saved.items() if k.startswith("expert-r4/") and "lora_B" in k)
    assert len(checkpoint) == sum(1 for k in saved if k.startswith("expert-r2/"))
    from selfctx.train.experts import load_base

    model, tokenizer = load_base(cfg.model, cfg.loop.seed, torch.device("cpu"), torch.float32)
    lm = CompressedLM.from_pretrained(model, experts=tmp_path / "snap", tokenizer=tokenizer)
    assert lm.battery.ratios == (2, 4) and lm.window == cfg.experts.window and lm.sink == cfg.experts.sink
    meta = json.loads((tmp_path / "snap" / "selfctx_train.json").read_text())
    assert meta["snapshot_steps"] == {"r2": 2, "r4": 0}


def test_the_log_splits_the_loss_into_next_token_and_kl_terms(tmp_path: Path) -> None:
    cfg = smoke_cfg(
        tmp_path / "run", "experts.ratios=[4]", "loop.max_steps=2", "data.max_samples_per_source=4"
    )
    run_experts(cfg)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "r4" / "train_log.jsonl").read_text().splitlines()
    ]
    for row in rows:  # mix, per-sample normalisation: the step's loss is the mean of lm + kl over its samples
        assert row["lm"] > 0 and row["kl"] >= 0
        assert row["loss"] == pytest.approx(row["lm"] + row["kl"], rel=1e-4)


def test_rebasing_a_mix_moves_only_its_paths() -> None:
    from selfctx.train.config import DataSource
    from selfctx.train.experts import rebase_sources, recipe_sources

    mix = [
        DataSource("recall", "old/pool", 0.7, facts_per_1k=4),
        DataSource("synth", "old/synth", 0.2),
        DataSource("chat", "mine.jsonl", 0.1),
    ]
    moved = rebase_sources(mix, "S", "P")
    assert [(s.kind, s.path, s.weight, s.facts_per_1k) for s in moved] == [
        ("recall", "P", 0.7, 4),
        ("synth", "S", 0.2, None),
        ("chat", "mine.jsonl", 0.1, None),
    ]
    preset = preset_defaults(ExpertsConfig, "experts", "smollm2-cpu")["data"]["sources"]
    expected = [(r["kind"], r["weight"]) for r in preset]
    assert [(s.kind, s.weight) for s in recipe_sources("S", "P")] == expected


def test_a_time_limit_bounds_all_experts_of_one_command(tmp_path: Path) -> None:
    result = run_experts(smoke_cfg(tmp_path / "run", "loop.max_steps=4", "loop.time_limit_s=1e-6"))
    # the first expert takes one step, checkpointed; the time is then up for the next one
    assert {name: run.step for name, run in result.runs.items()} == {"r2": 1}
    assert result.experts_dir is None
    again = run_experts(smoke_cfg(tmp_path / "run", "loop.max_steps=4"))  # no limit now: it resumes
    assert again.runs["r2"].resumed_from == 1 and again.experts_dir is not None


def test_resuming_with_other_settings_is_refused_before_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    run_experts(smoke_cfg(out, "loop.max_steps=3", "experts.ratios=[2]", "loop.stop_at_step=1"))
    log = (out / "r2" / "train_log.jsonl").read_text()
    with pytest.raises(SelfctxError, match=r"r2 was trained with loop\.optim\.lr=.*new loop\.output_dir"):
        run_experts(smoke_cfg(out, "loop.max_steps=3", "experts.ratios=[2]", "loop.optim.lr=0.5"))
    assert (out / "r2" / "train_log.jsonl").read_text() == log  # refused before anything ran
    # where the run lives, when this sitting stops and which other experts the battery holds may change
    moved = tmp_path / "moved"
    out.rename(moved)
    again = run_experts(smoke_cfg(moved, "loop.max_steps=3", "experts.ratios=[2, 4]", "loop.save_every=1"))
    assert again.runs["r2"].resumed_from == 1 and again.experts_dir is not None


def test_a_second_stage_starts_from_a_saved_battery_of_the_same_mechanism(tmp_path: Path) -> None:
    first = run_experts(smoke_cfg(tmp_path / "one", "loop.max_steps=3", "experts.ratios=[2]"))
    assert first.experts_dir is not None
    still = ("loop.max_steps=1", "loop.optim.lr=1e-12", "loop.optim.warmup_steps=0")  # weights barely move
    second = run_experts(
        smoke_cfg(tmp_path / "two", *still, "experts.ratios=[2, 4]", f"experts.init_from={first.experts_dir}")
    )
    assert second.experts_dir is not None
    before, after = expert_weights(first.experts_dir), expert_weights(second.experts_dir)
    trained = [k for k in before if "lora_B" in k]
    assert trained and any(before[k].abs().sum() > 0 for k in trained)  # the first stage learned something
    for key in trained:  # x2 starts from the saved x2, x4 (not saved) from the x2 trained just before it
        assert torch.allclose(after[key], before[key], atol=1e-6), key
        assert torch.allclose(after[key.replace("expert-r2", "expert-r4")], before[key], atol=1e-6), key
    with pytest.raises(SelfctxError, match=r"init_from .* was trained with window=32, this run has 64"):
        run_experts(
            smoke_cfg(tmp_path / "three", "experts.window=64", f"experts.init_from={first.experts_dir}")
        )


def test_a_battery_grows_by_a_stage_that_trains_other_ratios(tmp_path: Path) -> None:
    first = run_experts(smoke_cfg(tmp_path / "one", "loop.max_steps=3", "experts.ratios=[4]"))
    assert first.experts_dir is not None
    still = ("loop.max_steps=1", "loop.optim.lr=1e-12", "loop.optim.warmup_steps=0")
    second = run_experts(
        smoke_cfg(tmp_path / "two", *still, "experts.ratios=[2]", f"experts.init_from={first.experts_dir}")
    )
    assert second.experts_dir is not None
    assert json.loads((second.experts_dir / "battery.json").read_text())["ratios"] == [2, 4]
    before, after = expert_weights(first.experts_dir), expert_weights(second.experts_dir)
    saved = [k for k in before if "lora_" in k]
    assert saved and any(before[k].abs().sum() > 0 for k in saved if "lora_B" in k)
    for key in saved:  # x4 carried unchanged; x2 (not in the first battery) started from its x4
        assert torch.equal(after[key], before[key]), key
        assert torch.allclose(after[key.replace("expert-r4", "expert-r2")], before[key], atol=1e-6), key


@pytest.mark.parametrize(
    ("ratio", "battery", "previous", "expected"),
    [
        (8, (8,), 4, ("battery", 8)),  # an exact match first
        (16, (8,), 4, ("battery", 8)),  # the nearest on a log scale, wherever it comes from
        (4, (16,), 8, ("previous", 8)),
        (4, (8,), 2, ("previous", 2)),  # a tie: the expert trained just before
        (4, (), None, None),  # nothing to start from: untrained
        (32, (4, 8, 16), None, ("battery", 16)),
    ],
)
def test_a_starting_expert_copies_the_nearest_trained_ratio(
    ratio: int, battery: tuple[int, ...], previous: int | None, expected: tuple[str, int] | None
) -> None:
    assert start_source(ratio, battery, previous) == expected

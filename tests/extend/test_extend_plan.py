"""The ratio plan, budget presets and config layering of `selfctx extend`."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfctx.compress.battery import longest_supported, route
from selfctx.errors import SelfctxError
from selfctx.extend.plan import BUDGETS, load_extend_config, make_plan, ratio_plan


@pytest.mark.parametrize(
    ("target", "window", "native", "budget", "min_ratio"),
    [
        (2048, 256, 1024, 128, 4),
        (8192, 256, 1024, 128, 4),
        (32768, 1024, 2048, 128, 4),
        (131072, 1024, 4096, 128, 2),
    ],
)
def test_ratio_plan_is_the_smallest_power_of_two_run_that_routes_the_target(
    target: int, window: int, native: int, budget: int, min_ratio: int
) -> None:
    ratios = ratio_plan(target, window, native, budget, min_ratio)
    assert ratios[0] == min_ratio
    assert all(b == 2 * a for a, b in zip(ratios, ratios[1:], strict=False))
    # the router really fits the target with the planned set, and the set one shorter does not
    assert route(target, budget, native, window, ratios).ratio == ratios[-1]
    if len(ratios) > 1:
        assert longest_supported(budget, native, window, ratios[:-1]) < target
        with pytest.raises(SelfctxError):
            route(target, budget, native, window, ratios[:-1])


def test_ratio_plan_examples() -> None:
    assert ratio_plan(2048, 256, 1024, 128, 4) == (4,)
    assert ratio_plan(8192, 256, 1024, 128, 4) == (4, 8, 16)
    assert ratio_plan(32768, 1024, 2048, 128, 4) == (4, 8, 16, 32, 64)
    assert ratio_plan(131072, 1024, 4096, 128, 2) == (2, 4, 8, 16, 32, 64)
    assert ratio_plan(500, 256, 1024, 128, 2) == (2,)  # already fits: the gentlest expert alone
    # room 640 is a whole number of x8 windows: the raw sink token pushes 5,375 tokens past x8's reach
    assert ratio_plan(5375, 256, 1024, 128, 8) == (8,)
    assert ratio_plan(5375, 256, 1024, 128, 8, sink=1) == (8, 16)


def test_ratio_plan_out_of_reach_says_what_to_do() -> None:
    with pytest.raises(SelfctxError, match="out of reach.*lower --target-length"):
        ratio_plan(10_000_000, 256, 1024, 128, 2)
    with pytest.raises(SelfctxError, match="no room for memory"):
        ratio_plan(4096, 1024, 1024, 128, 2)


@pytest.mark.parametrize("budget", BUDGETS)
def test_every_budget_plans(budget: str, tmp_path: Path) -> None:
    cfg = load_extend_config("smollm2-135m", budget)
    plan = make_plan(cfg, tmp_path, native_of_model=8192)
    assert plan.needle_lengths[-1] == cfg.target_length
    assert plan.experts.experts.ratios == tuple(plan.ratios)
    assert plan.experts.loop.output_dir == str(tmp_path / "train")
    assert [(s.kind, s.path) for s in plan.experts.data.sources] == [
        ("recall", str(tmp_path / "synth" / "pool")),
        ("synth", str(tmp_path / "synth")),
        ("text", str(tmp_path / "synth" / "pool")),
    ]
    # hashes cover paths relative to the run folder, so a moved folder keeps its markers
    assert str(tmp_path) not in str(plan.stage_configs())


def test_smoke_budget_is_small() -> None:
    cfg = load_extend_config("smollm2-135m", "smoke")
    plan = make_plan(cfg, Path("/x"), native_of_model=8192)
    assert plan.ratios == (4,) and plan.native_context == 512 and plan.experts.experts.window == 128
    assert plan.experts.loop.max_steps <= 3 and plan.synth.per_task == 1 and len(plan.synth.tasks) == 2
    assert len(plan.needle_lengths) * len(cfg.eval.depths) == 4


def test_model_native_context_caps_the_preset(tmp_path: Path) -> None:
    cfg = load_extend_config("smollm2-135m", "gpu-hour", target_length="8k")
    plan = make_plan(cfg, tmp_path, native_of_model=1536)  # a model shorter than the preset's 2K cap
    assert plan.native_context == 1536
    assert plan.experts.experts.native_context == 1536


def test_layering_config_file_set_and_flags(tmp_path: Path) -> None:
    file = tmp_path / "extend.yaml"
    file.write_text("target_length: 4096\nexperts:\n  loop:\n    max_steps: 7\neval:\n  grid_points: 3\n")
    cfg = load_extend_config(
        "m.gguf", "smoke", config_file=file, overrides=["eval.samples=2"], target_length="3k"
    )
    assert cfg.target_length == 3072  # the flag beats the file
    assert cfg.experts.loop.max_steps == 7 and cfg.eval.grid_points == 3 and cfg.eval.samples == 2
    assert cfg.model == "m.gguf" and cfg.synth.per_task == 1  # the rest stays the budget's
    plan = make_plan(cfg, tmp_path, native_of_model=8192)
    assert plan.synth.model == "m.gguf" and plan.experts.model.name == "m.gguf"
    assert plan.needle_lengths == (1024, 2048, 3072)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"budget": "huge"}, "unknown budget 'huge'"),
        ({"target_length": "lots"}, "not a token count"),
        ({"overrides": ["eval.variant=nope"]}, "eval.variant"),
        ({"overrides": ["min_ratio=3"]}, "power of two"),
        ({"overrides": ["bogus=1"]}, "unknown config key bogus"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(SelfctxError, match=match):
        load_extend_config("smollm2-135m", **kwargs)


def test_prompt_margin_makes_the_longest_needle_prompt_route() -> None:
    # x4 reads up to 2815 tokens at window 256, native 1024, budget 128: 2048 fit, 2048 + 800 do not
    assert ratio_plan(2048, 256, 1024, 128, 4) == (4,)
    ratios = ratio_plan(2048, 256, 1024, 128, 4, margin=800)
    assert ratios == (4, 8)
    assert route(2048 + 800, 128, 1024, 256, ratios).ratio == 8
    with pytest.raises(SelfctxError, match=r"\+800 of prompt"):
        ratio_plan(1_000_000, 256, 1024, 128, 4, margin=800)

"""`selfctx extend`: from a model to a longer-reading model in one resumable command (synth -> train -> eval
-> report). See plan.py (budgets, ratio plan), runner.py (done-markers, resume), stages.py, report.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selfctx.extend.plan import (
    BUDGETS,
    STAGES,
    ExtendConfig,
    Plan,
    check_plan,
    load_extend_config,
    make_plan,
    ratio_plan,
)


def run_extend(
    model: str,
    out: str | Path,
    *,
    budget: str = "smoke",
    target_length: str | int | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
    from_stage: str | None = None,
    command: str | None = None,
    log: Any = print,
) -> dict[str, dict[str, Any]]:
    """Run (or resume) every stage into `out`; returns each stage's done-marker."""
    from selfctx.extend.runner import run_stages
    from selfctx.extend.stages import build_stages
    from selfctx.fsutil import write_json_atomic

    folder = Path(out).resolve()
    cfg = load_extend_config(
        model, budget, target_length=target_length, config_file=config_file, overrides=overrides
    )
    plan = make_plan(cfg, folder)
    check_plan(plan)  # nothing is written before every stage's settings are known to be usable
    command = command or f"selfctx extend --model {model} --out {out} --budget {budget}"
    log(
        f"plan: {cfg.model}, target {cfg.target_length:,} tokens, native {plan.native_context:,}, window "
        f"{plan.experts.experts.window}, experts x{', x'.join(map(str, plan.ratios))}, needle lengths "
        f"{', '.join(map(str, plan.needle_lengths))}"
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        folder / "extend.json",
        {"command": command, "ratios": list(plan.ratios), "stages": plan.stage_configs()},
    )
    return run_stages(folder, build_stages(plan, folder, command=command), from_stage=from_stage, log=log)


__all__ = [
    "BUDGETS",
    "STAGES",
    "ExtendConfig",
    "Plan",
    "load_extend_config",
    "make_plan",
    "ratio_plan",
    "run_extend",
]

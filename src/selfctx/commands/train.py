"""`selfctx train`: compression experts or long-context fine-tuning, one shared loop.

    selfctx train --method experts --preset smollm2-cpu
    selfctx train --method experts --preset smollm2-cpu --config configs/compare-x8-nosynth.yaml  # a variant
    selfctx train --method finetune --preset smollm2-cpu --set loop.max_steps=10
    torchrun --nproc_per_node 2 -m selfctx train --method experts --preset ...   # data parallel

A preset is a packaged YAML (selfctx/train/presets/<method>-<name>.yaml); --config is applied on top of it and
--set on top of both. Rerunning the same command resumes from the latest checkpoint in loop.output_dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selfctx.errors import SelfctxError
from selfctx.train.preset import preset_defaults

METHODS = ("experts", "finetune")


def command(
    method: Annotated[
        str, typer.Option("--method", help=f"training method: {', '.join(METHODS)}")
    ] = "experts",
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="packaged preset: experts: cpu-smoke, smollm2-cpu, smollm2-gpu, llama-7b; "
            "finetune: smollm2-cpu",
        ),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (applied over the preset)")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="dotted override, e.g. loop.max_steps=10 (repeatable)"),
    ] = None,
    snapshot: Annotated[
        Path | None,
        typer.Option(
            "--snapshot",
            help="experts only: write a loadable battery here from the latest checkpoints and exit (the "
            "training may still be running)",
        ),
    ] = None,
) -> None:
    """Train compression experts or fine-tune for long contexts (resumes from the latest checkpoint)."""
    if method not in METHODS:
        raise SelfctxError(f"unknown training method {method!r}: use one of {', '.join(METHODS)}")
    if snapshot is not None and method != "experts":
        raise SelfctxError("--snapshot writes an expert battery: use it with --method experts")
    from selfctx.config import load_config

    if method == "experts":
        from selfctx.train.experts import ExpertsConfig, run_experts

        defaults = preset_defaults(ExpertsConfig, method, preset) if preset else None
        cfg = load_config(ExpertsConfig, config, overrides or [], defaults=defaults)
        if snapshot is not None:
            from selfctx.train.experts import snapshot_battery

            steps = snapshot_battery(cfg, snapshot)
            typer.echo(f"experts in {snapshot} ({', '.join(f'{k}: step {v}' for k, v in steps.items())})")
            return
        outcome = run_experts(cfg)
        where = Path(cfg.loop.output_dir)
        for name, run in outcome.runs.items():
            resumed = f" (resumed from step {run.resumed_from})" if run.resumed_from else ""
            last = f", last loss {run.losses[-1]:.4f}" if run.losses else ""
            typer.echo(f"{name}: step {run.step}{resumed}{last}; log {where / name / 'train_log.jsonl'}")
        if outcome.experts_dir is not None:
            typer.echo(f"experts in {outcome.experts_dir}")
        return
    from selfctx.train.config import FinetuneConfig
    from selfctx.train.finetune import run_finetune

    defaults = preset_defaults(FinetuneConfig, method, preset) if preset else None
    ft = load_config(FinetuneConfig, config, overrides or [], defaults=defaults)
    result = run_finetune(ft).train
    where = Path(ft.loop.output_dir)
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    typer.echo(
        f"trained to step {result.step}{resumed}{last}; model in {where / 'final'}, log in "
        f"{where / 'train_log.jsonl'}"
    )

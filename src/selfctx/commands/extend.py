"""`selfctx extend`: one resumable command from a model to a longer-reading model (see selfctx.extend)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from selfctx.checks import BUDGET_HELP, Budget
from selfctx.errors import SelfctxError


def command(
    model: Annotated[
        str, typer.Option(help="Model spec: smollm2-135m (embedded), a .gguf, an HF folder/id.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Run folder (a rerun resumes into it).")],
    target_length: Annotated[
        str | None, typer.Option(help="Longest input to read, e.g. 128k (default: the budget's).")
    ] = None,
    budget: Annotated[
        Budget,
        typer.Option(
            help="How much compute the run may take: "
            + "; ".join(f"{k}: {v}" for k, v in BUDGET_HELP.items())
        ),
    ] = "smoke",
    config: Annotated[
        Path | None,
        typer.Option(help="YAML over the budget: keys target_length, min_ratio, synth.*, experts.*, eval.*"),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override, e.g. experts.loop.max_steps=4.")
    ] = None,
    from_stage: Annotated[
        str | None, typer.Option("--from", help="Rerun from this stage: synth, train, eval or report.")
    ] = None,
) -> None:
    """Write data with the model, train the experts the target length needs, evaluate, write OUT/REPORT.md."""
    from selfctx.checks import check_out_folder
    from selfctx.extend import STAGES, run_extend

    # run_extend checks the budget, config and every stage's settings before it makes --out
    if from_stage is not None and from_stage not in STAGES:
        raise SelfctxError(f"unknown stage {from_stage!r} for --from: pick one of {', '.join(STAGES)}")
    check_out_folder(out)
    markers = run_extend(
        model,
        out,
        budget=budget,
        target_length=target_length,
        config_file=config,
        overrides=set_ or [],
        from_stage=from_stage,
        command="selfctx " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        log=lambda line: typer.echo(line, err=True),
    )
    typer.echo(f"wrote {out / 'REPORT.md'}; experts in {out / 'experts'}")
    needle = markers["eval"]["outputs"].get("needle", {})
    for name, figures in needle.items():
        typer.echo(f"  {name}: needle mean score {figures.get('mean_score')}")

"""`selfctx train`: fine-tune a model for long contexts (issue #8) with the shared training loop.

    selfctx train --method finetune --config configs/train-smollm2-cpu.yaml --set loop.max_steps=10
    torchrun --nproc_per_node 2 -m selfctx train --method finetune --config ...   # data parallel

Rerunning the same command resumes from the latest checkpoint in loop.output_dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selfctx.errors import SelfctxError

METHODS = ("finetune",)


def command(
    method: Annotated[
        str, typer.Option("--method", help=f"training method: {', '.join(METHODS)}")
    ] = "finetune",
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (configs/train-*.yaml)")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="dotted override, e.g. loop.max_steps=10 (repeatable)"),
    ] = None,
) -> None:
    """Train a model (resumes from the latest checkpoint in the output folder)."""
    if method not in METHODS:
        raise SelfctxError(f"unknown training method {method!r}: use one of {', '.join(METHODS)}")
    from selfctx.config import load_config
    from selfctx.train.config import FinetuneConfig
    from selfctx.train.finetune import run_finetune

    cfg = load_config(FinetuneConfig, config, overrides or [])
    result = run_finetune(cfg).train
    where = Path(cfg.loop.output_dir)
    resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    typer.echo(
        f"trained to step {result.step}{resumed}{last}; model in {where / 'final'}, log in "
        f"{where / 'train_log.jsonl'}"
    )

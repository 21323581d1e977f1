"""`selfctx bench ...`: commands that print the figures benchmarks/BENCHMARKS.md quotes."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    help="Benchmarks: each prints its figures beside a baseline measured in the same run.",
    no_args_is_help=True,
)

# (sub-verb, module under selfctx.bench exposing `command`)
BENCHES: list[tuple[str, str]] = [
    ("prefill", "prefill"),
    ("assemble", "assemble"),
    ("synth-throughput", "synth_throughput"),
    ("serve-load", "serve_load"),
    ("expert-train", "expert_train"),
    ("probe", "probe"),
]

for verb, module_name in BENCHES:
    try:
        module = importlib.import_module(f"selfctx.bench.{module_name}")
    except ModuleNotFoundError as exc:  # a bench whose module is not written yet is simply not offered
        if exc.name != f"selfctx.bench.{module_name}":
            raise
        continue
    app.command(verb)(module.command)

"""`selfctx synth`: the model writes long-context training data itself (see selfctx.synth.pipeline)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from selfctx.checks import Executor, SynthBackend
from selfctx.errors import SelfctxError


def command(
    out: Annotated[Path, typer.Option("--out", help="Output directory (a rerun resumes into it).")],
    model: Annotated[
        str | None,
        typer.Option(help="Model spec (default: embedded smollm2-135m; a .gguf, an HF dir) or served name."),
    ] = None,
    backend: Annotated[
        SynthBackend | None, typer.Option(help="what writes the data (default: llamacpp)")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server URL (--backend openai).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="Tokenizer that counts lengths (default: --model's).")
    ] = None,
    tasks: Annotated[
        str,
        typer.Option(
            help="all, or a comma list of qa,summarization,simdiff,multiqa,logic,code "
            "(with --from-docs: docs_qa,docs_summary,docs_crossqa)."
        ),
    ] = "all",
    per_task: Annotated[int | None, typer.Option(help="Samples per task (default 2).")] = None,
    length: Annotated[
        str | None, typer.Option(help="Target length, e.g. 16k (default when no length is given).")
    ] = None,
    bucket: Annotated[str | None, typer.Option(help="Length bucket, e.g. 8k-16k.")] = None,
    uniform: Annotated[str | None, typer.Option(help="Uniform length range, e.g. 1k-8k.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed (same seed = same data).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML config (keys of SynthConfig; options override it).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override, e.g. gen.passage_words=100.")
    ] = None,
    pool: Annotated[
        Path | None, typer.Option(help="Passage pool directory to reuse/extend (default OUT/pool).")
    ] = None,
    allow_repeat: Annotated[
        bool, typer.Option(help="Let a sample longer than the pool repeat distractors.")
    ] = False,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight / llama.cpp instances / hf batch.")
    ] = None,
    from_docs: Annotated[
        Path | None,
        typer.Option(
            help="Directory of your own txt/md/jsonl documents: the model writes a summary and QA pairs per "
            "chunk and the chunks are stitched, in order, into long samples (tasks docs_qa, docs_summary, "
            "docs_crossqa), padded with other documents' chunks; chunk size: --set chunk_tokens=384."
        ),
    ] = None,
    executor: Annotated[
        Executor | None, typer.Option(help="how the work is scheduled (default: local)")
    ] = None,
) -> None:
    """Write a long-context instruction dataset with the model itself: six tasks, padded to any length."""
    from selfctx.config import load_config
    from selfctx.synth.pipeline import SynthConfig, parse_tasks

    cli: dict[str, Any] = {}
    for key, value in (
        ("model", model), ("backend", backend), ("executor", executor), ("base_url", base_url),
        ("tokenizer", tokenizer), ("per_task", per_task), ("seed", seed),
        ("pool", str(pool) if pool else None), ("concurrency", concurrency),
        ("length", length), ("bucket", bucket), ("uniform", uniform),
    ):  # fmt: skip
        if value is not None:
            cli[key] = value
    if from_docs is not None:
        cli["from_docs"] = str(from_docs)
    if tasks != "all" or config is None:
        cli["tasks"] = list(parse_tasks(tasks, from_docs=from_docs is not None))
    if allow_repeat:
        cli["allow_repeat"] = True
    if any(k in cli for k in ("length", "bucket", "uniform")):
        cli.update({k: cli.get(k) for k in ("length", "bucket", "uniform")})  # one length option wins
    cfg = load_config(SynthConfig, config, set_ or [])
    cfg = load_config(SynthConfig, None, [], defaults={**_as_plain(cfg), **cli})
    if cfg.executor == "ray":
        from selfctx.synth.executors import run_synth_ray

        summary = run_synth_ray(cfg, out, command=_command_line())
    else:
        from selfctx.synth.pipeline import run_synth

        summary = run_synth(cfg, out, command=_command_line())
    _print_summary(summary, out)
    from selfctx.synth.pipeline import report_shortfalls

    report_shortfalls(summary)  # last, so a task that fell short is what the run ends by saying


def _as_plain(cfg: Any) -> dict[str, Any]:
    from selfctx.config import to_dict

    return to_dict(cfg)


def _command_line() -> str:
    return "selfctx " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    tasks = summary["stages"]["tasks"]
    typer.echo(
        f"wrote {summary['samples']} samples to {out} ({summary['length']}), {summary['wall_seconds']} s"
    )
    if "pool" in summary["stages"]:
        pool = summary["stages"]["pool"]
        typer.echo(
            f"pool: {pool['passages']} passages, {pool['tokens']:,} tokens "
            f"(dropped {_nonzero(pool['dropped'])})"
        )
    if "documents" in summary:
        docs = summary["documents"]
        typer.echo(
            f"documents: {docs['documents']} in {docs['path']}, {docs['chunks']} chunks of <= "
            f"{docs['chunk_tokens']} tokens, {docs['tokens']:,} tokens"
        )
    for name, t in tasks.items():
        typer.echo(
            f"  {name:<14} kept {t['kept']}/{t['wanted']} of {t['attempted']} tried; "
            f"dropped {_nonzero(t['dropped'])}; tokens {t['token_counts']}"
        )
    typer.echo(f"dropped by filter: {json.dumps(summary['dropped_by_filter'])}")
    typer.echo(f"backend: {json.dumps(summary['backend'])}")
    typer.echo(
        f"generated {summary['generated_tokens_this_run']:,} tokens this run "
        f"({summary['generated_tokens_per_s']} tok/s; {summary['cached_calls_this_run']} of "
        f"{summary['calls_this_run']} calls from the cache)"
    )


def _nonzero(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


__all__ = ["command", "SelfctxError"]

"""OUT/REPORT.md of a `selfctx extend` run: what was planned, what each stage made and cost, the scores.

Figures come from the stages' done-markers and eval folders (nothing is recomputed here); every figure is
listed with the command that reproduces it. OUT/report/report.json holds the same numbers for scripts.
"""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path
from typing import Any

from selfctx.extend.plan import STAGES, Plan
from selfctx.extend.runner import DONE, read_json
from selfctx.fsutil import write_json_atomic, write_text_atomic

MIB = 1024 * 1024


def _mib(value: Any) -> str:
    if not value:
        return "-"
    return f"{value / MIB:,.0f}" if value >= 10 * MIB else f"{value / MIB:.3g}"  # small models: KiB show


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _shown(path: Path) -> Path:
    """The path as the user's commands name it: relative to the working directory when under it."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def report_numbers(out: Path) -> dict[str, Any]:
    """The run's figures that do not depend on timing (what a resumed run must reproduce exactly)."""
    markers = {s: read_json(out / s / DONE) or {} for s in STAGES if s != "report"}
    synth = markers["synth"].get("outputs", {})
    train = markers["train"].get("outputs", {})
    ev = markers["eval"].get("outputs", {})
    return {
        "synth": {k: synth.get(k) for k in ("samples", "pool_passages", "pool_tokens", "tasks")},
        "train": {"ratios": train.get("ratios"), "experts": train.get("experts")},
        "eval": ev.get("needle"),
        "held_out_synthetic": ev.get("held_out_synthetic"),
    }


def write_report(plan: Plan, out: Path, command: str) -> Path:
    cfg = plan.config
    markers = {s: read_json(out / s / DONE) or {} for s in STAGES if s != "report"}
    numbers = report_numbers(out)
    base = _base_command(command)
    lines = [
        f"# selfctx extend: {cfg.model} to {cfg.target_length:,} tokens ({cfg.budget} budget)",
        "",
        f"Written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')} by `{command}`.",
        "",
        f"- Native context used: **{plan.native_context:,}** tokens "
        "(the model's own, capped by experts.experts.native_context); "
        f"window **{plan.experts.experts.window}**.",
        f"- Experts trained: **x{', x'.join(map(str, plan.ratios))}** "
        f"(the powers of two from x{cfg.min_ratio} up to the first that fits {cfg.target_length:,} "
        f"tokens with a {cfg.eval.answer_budget}-token question/answer budget).",
        f"- Use them: `selfctx serve --model {cfg.model} --experts {_shown(out / 'experts')}` or "
        f"`CompressedLM.from_pretrained({cfg.model!r}, experts={str(_shown(out / 'experts'))!r})`.",
        "",
        "## Stages",
        "",
        "Time is the wall time of the run that finished the stage (a stage resumed after a kill counts only "
        "its last run); memory is the peak resident set size sampled during the stage (and peak CUDA "
        "memory).",
        "",
        "| stage | seconds | peak RSS (MiB) | peak CUDA (MiB) | resumed | config hash |",
        "|---|---|---|---|---|---|",
    ]
    for name in STAGES[:-1]:
        m = markers[name]
        lines.append(
            f"| {name} | {_fmt(m.get('seconds'))} | {_mib(m.get('peak_rss_bytes'))} | "
            f"{_mib(m.get('peak_cuda_bytes'))} | {_fmt(m.get('resumed'))} | `{m.get('config_hash', '-')}` |"
        )
    synth = markers["synth"].get("outputs", {})
    kept = ", ".join(f"{k} {v}" for k, v in (synth.get("tasks") or {}).items()) or "-"
    lines += [
        "",
        "## Data the model wrote (`synth/`)",
        "",
        f"{_fmt(synth.get('samples'))} samples, {_fmt(synth.get('length'))} "
        f"(kept per task: {kept}); passage pool: {_fmt(synth.get('pool_passages'))} "
        f"passages, {_fmt(synth.get('pool_tokens'))} tokens; generation ran at "
        f"{_fmt(synth.get('generated_tokens_per_s'))} tokens/s.",
        "",
        "## Training (`train/`, battery in `experts/`)",
        "",
        "| expert | steps | first loss | last loss |",
        "|---|---|---|---|",
    ]
    train = markers["train"].get("outputs", {})
    for name, e in (train.get("experts") or {}).items():
        lines.append(f"| {name} | {_fmt(e['steps'])} | {_fmt(e['first_loss'])} | {_fmt(e['last_loss'])} |")
    lines.append(f"\nData sources: {', '.join(train.get('sources') or []) or '-'}.")
    lines += _eval_section(markers["eval"].get("outputs", {}), out, base)
    lines += [
        "",
        "## Reproduce",
        "",
        f"- Whole run (resumes; skips finished stages): `{command}`",
        f"- Rerun the evaluation and this report: `{base} --from eval`",
        f"- Rewrite this report only: `{base} --from report`",
        "",
    ]
    write_json_atomic(out / "report" / "report.json", numbers)
    path = out / "REPORT.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def _eval_section(ev: dict[str, Any], out: Path, base: str) -> list[str]:
    needle = ev.get("needle") or {}
    grid = ev.get("grid") or {}
    lengths = [str(n) for n in grid.get("lengths", [])]
    lines = [
        "",
        f"## Evaluation (`eval/`): needle in a haystack ({grid.get('variant', '-')}), haystack = the model's "
        "own passage pool",
        "",
        "Score = share of the expected answer found in the reply, mean over depths "
        f"{', '.join(f'{d:g}' for d in grid.get('depths', []))}. Memory = KV state held when answering; "
        "effective ratio = tokens the task needed / KV entries held.",
        "",
        *(
            [
                "The truncation baseline ran through llama.cpp on the same GGUF weights (f16 KV cache: its "
                "memory is counted at 2 bytes a value, the experts' at the transformers model's dtype).",
                "",
            ]
            if ev.get("baseline_backend") == "LlamaCppMethod"
            else []
        ),
        "| method | "
        + " | ".join(f"{n} tok" for n in lengths)
        + " | mean | ROUGE-L recall | mean memory (MiB) "
        "| effective ratio |",
        "|---|" + "---|" * (len(lengths) + 4),
    ]
    for name, r in needle.items():
        table = r.get("score_by_length_depth", {})
        cells = []
        for n in lengths:
            values = list(table.get(n, {}).values())
            cells.append(_fmt(round(sum(values) / len(values), 4)) if values else "-")
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_fmt(r.get('mean_score'))} | "
            f"{_fmt(r.get('mean_rouge_recall'))} | {_mib(r.get('mean_memory_bytes'))} | "
            f"{_fmt(r.get('effective_ratio'))} |"
        )
    runs = ev.get("runs") or []
    lines += ["", "Figures (each reproduced by the command beside it):", ""]
    for run in runs:
        lines.append(f"- ![{run}]({run}/heatmap.png) `{run}/heatmap.png`: `{base} --from eval`")
    report_cmd = "selfctx eval report " + " ".join(shlex.quote(str(_shown(out / r))) for r in runs)
    report_cmd += f" --out {shlex.quote(str(_shown(out / 'eval' / 'report')))}"
    for plot in ("score_vs_length.png", "score_vs_ratio.png"):
        if (out / "eval" / "report" / plot).is_file():
            lines.append(f"- ![{plot}](eval/report/{plot}) `eval/report/{plot}`: `{report_cmd}`")
    return lines + _synthetic_section(ev.get("held_out_synthetic"), ev.get("synthetic_runs") or [], base)


def _synthetic_section(synthetic: dict[str, Any] | None, runs: list[str], base: str) -> list[str]:
    if not synthetic:
        return ["", "Held-out synthetic checks: not run (eval.synthetic_checks is empty)."]
    checks = list(next(iter(synthetic.values()))["by_check"])
    lengths = list(next(iter(synthetic.values()))["score_by_length"])
    excluded = next(iter(synthetic.values())).get("excluded_nouns")
    lines = [
        "",
        "## Evaluation (`eval/synthetic/`): held-out synthetic checks",
        "",
        "Facts about nouns that neither this run's dataset nor its passage pool name "
        f"({_fmt(excluded)} nouns excluded), hidden among the pool's passages at the needle lengths "
        "(selfctx.eval.synthetic). Score = share of the expected answer found in the reply.",
        "",
        "| method | " + " | ".join(checks) + " | " + " | ".join(f"{n} tok" for n in lengths) + " | mean |",
        "|---|" + "---|" * (len(checks) + len(lengths) + 1),
    ]
    for name, r in synthetic.items():
        by_length = r.get("score_by_length", {})
        lines.append(
            f"| {name} | "
            + " | ".join(_fmt(r["by_check"].get(c)) for c in checks)
            + " | "
            + " | ".join(_fmt(by_length.get(n)) for n in lengths)
            + f" | {_fmt(r.get('mean_score'))} |"
        )
    lines += ["", "Figures (per-cell rows in `synthetic.jsonl` beside each):", ""]
    lines += [f"- ![{run}]({run}/synthetic.png) `{run}/synthetic.png`: `{base} --from eval`" for run in runs]
    return lines


def _base_command(command: str) -> str:
    """The command without a --from option (so `--from X` can be appended)."""
    words = shlex.split(command)
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--from":
            skip = True
            continue
        if word.startswith("--from="):
            continue
        kept.append(word)
    return " ".join(shlex.quote(w) for w in kept)

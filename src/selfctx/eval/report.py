"""One report comparing methods on the same model: LongBench tables, needle scores, held-out synthetic
checks, the memory each held.

Input: run folders written by `selfctx eval longbench` / `needle` / `synthetic` (run.json describes the
method; LongBench folders hold <dataset>.jsonl + result.json, needle folders results.json + needle.jsonl,
synthetic folders synthetic.json + synthetic.jsonl). Folders of the same method are merged into one column.
Output: report.json, report.md, score_vs_length.png, score_vs_ratio.png (+ synthetic_vs_length.png).

Memory budget: the mean KV state a method held when generation started (bytes) and the effective ratio
= tokens the task needed (tokens given + tokens middle truncation cut) / KV entries held (memory bytes /
bytes per token).
Truncation shows a ratio > 1 too: it "compresses" by dropping the middle.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.eval.scoring import CATEGORIES, LENGTH_BUCKETS, aggregate, length_bucket, read_jsonl, score_rows
from selfctx.fsutil import write_json_atomic, write_text_atomic

SYNTHETIC_SUMMARY = "synthetic.json"  # selfctx.eval.synthetic's files (not imported: it pulls in synth)
SYNTHETIC_ROWS = "synthetic.jsonl"


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def collect_run(folder: str | Path) -> dict[str, Any]:
    """The figures of one run folder."""
    return _with_memory(_collect(folder))


_PARTS = ("longbench", "needle", "synthetic")


def merge_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One column per method: folders of the same method (e.g. OUT/needle/full and OUT/synthetic/full)
    are merged when they hold different parts; a part seen twice keeps its own column."""
    merged: list[dict[str, Any]] = []
    for run in runs:
        into = next(
            (
                m
                for m in merged
                if m["method"] == run["method"] and not any(p in m and p in run for p in _PARTS)
            ),
            None,
        )
        if into is None:
            merged.append({**run, "rows": list(run["rows"])})
            continue
        into["folder"] = f"{into['folder']}, {run['folder']}"
        into["meta"] = {**run["meta"], **into["meta"]}
        into["rows"] += run["rows"]
        into.update({p: run[p] for p in _PARTS if p in run})
    return merged


def _collect(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SelfctxError(f"run folder {folder} does not exist: pass folders written by selfctx eval")
    meta = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    run: dict[str, Any] = {"folder": str(folder), "method": meta.get("name", folder.name), "meta": meta}
    rows_seen: list[dict[str, Any]] = []
    if (folder / "result.json").is_file():
        result = json.loads((folder / "result.json").read_text())
        run["longbench"] = {"result": result, "summary": aggregate(result)}
        buckets: dict[str, list[float]] = {b: [] for b in LENGTH_BUCKETS}
        for dataset in result:
            rows = read_jsonl(folder / f"{dataset}.jsonl")
            rows_seen += rows
            for row, value in zip(rows, score_rows(dataset, rows), strict=True):
                buckets[length_bucket(int(row.get("length", 0)))].append(value)
        run["longbench"]["by_length"] = {
            b: (round(100 * v, 2) if (v := _mean(s)) is not None else None) for b, s in buckets.items()
        }
    if (folder / "results.json").is_file():
        needle = json.loads((folder / "results.json").read_text())
        table = needle["score_by_length_depth"]
        run["needle"] = {
            "variant": needle["variant"],
            "mean_score": needle["mean_score"],
            "by_length": {n: round(100 * (_mean(list(d.values())) or 0.0), 2) for n, d in table.items()},
        }
        if (folder / "needle.jsonl").is_file():
            rows_seen += read_jsonl(folder / "needle.jsonl")
    if (folder / SYNTHETIC_SUMMARY).is_file():
        synthetic = json.loads((folder / SYNTHETIC_SUMMARY).read_text())
        run["synthetic"] = {
            "mean_score": synthetic["mean_score"],
            "by_check": {
                check: {
                    "mean_score": figures["mean_score"],
                    "confused_rate": figures["confused_rate"],
                    "by_length": {
                        n: (round(100 * v, 2) if v is not None else None)
                        for n, v in figures["score_by_length"].items()
                    },
                }
                for check, figures in synthetic["by_check"].items()
            },
            "held_out": synthetic.get("held_out", {}),
        }
        if (folder / SYNTHETIC_ROWS).is_file():
            rows_seen += read_jsonl(folder / SYNTHETIC_ROWS)
    if not any(k in run for k in ("longbench", "needle", "synthetic")):
        raise SelfctxError(
            f"{folder} holds neither result.json (LongBench), results.json (needle) nor "
            f"{SYNTHETIC_SUMMARY} (synthetic checks): pass folders written by selfctx eval"
        )
    run["rows"] = rows_seen
    return run


def _with_memory(run: dict[str, Any]) -> dict[str, Any]:
    """Memory figures over the rows a run (or several folders of one method) wrote; drops the rows."""
    rows_seen = run.pop("rows")
    per_token = run["meta"].get("kv_bytes_per_token")
    memory = [float(r["memory_bytes"]) for r in rows_seen if "memory_bytes" in r]
    by_length: dict[int, list[float]] = {}
    for r in rows_seen:
        if "memory_bytes" in r and isinstance(r.get("length"), int) and "cell" in r:  # needle/synthetic grids
            by_length.setdefault(r["length"], []).append(float(r["memory_bytes"]))
    run["memory_bytes_by_length"] = {str(n): round(max(v)) for n, v in sorted(by_length.items())}
    run["mean_memory_bytes"] = round(_mean(memory) or 0) if memory else None
    if per_token and memory:
        # tokens the task needed = tokens given + tokens middle truncation cut away
        needed = [
            r.get("input_tokens", 0) + max(0, r.get("original_tokens", 0) - r.get("prompt_tokens", 0))
            for r in rows_seen
            if "memory_bytes" in r
        ]
        held = [m / per_token for m in memory]
        run["effective_ratio"] = round(math.fsum(needed) / max(1e-9, math.fsum(held)), 3)
    else:
        run["effective_ratio"] = None
    return run


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value}"


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    names = [r["method"] for r in runs]
    head = "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)
    lines = ["# Method comparison", ""]
    lines += ["## Memory budget", "", head]
    lines.append(
        "| mean memory (MiB) | "
        + " | ".join(
            _cell(round(r["mean_memory_bytes"] / 2**20, 2) if r["mean_memory_bytes"] else None) for r in runs
        )
        + " |"
    )
    lines.append("| effective ratio | " + " | ".join(_cell(r["effective_ratio"]) for r in runs) + " |")
    grid_lengths = sorted({int(n) for r in runs for n in r.get("memory_bytes_by_length", {})})
    if grid_lengths:
        lines += ["", "Memory held when generation starts, by context length (MiB, largest over the grid):"]
        lines += ["", head]
        for n in grid_lengths:
            lines.append(
                f"| {n} | "
                + " | ".join(_cell(_mib(r.get("memory_bytes_by_length", {}).get(str(n)))) for r in runs)
                + " |"
            )
    if any("longbench" in r for r in runs):
        datasets = sorted(
            {d for r in runs for d in r.get("longbench", {}).get("result", {})},
            key=lambda d: [n for names_ in CATEGORIES.values() for n in names_].index(d),
        )
        lines += ["", "## LongBench", "", head]
        for d in datasets:
            lines.append(
                f"| {d} | "
                + " | ".join(_cell(r.get("longbench", {}).get("result", {}).get(d)) for r in runs)
                + " |"
            )
        for category in CATEGORIES:
            if any(category in r.get("longbench", {}).get("summary", {}).get("categories", {}) for r in runs):
                lines.append(
                    f"| *{category}* | "
                    + " | ".join(
                        _cell(r.get("longbench", {}).get("summary", {}).get("categories", {}).get(category))
                        for r in runs
                    )
                    + " |"
                )
        for key, label in (
            ("mean_over_datasets", "**mean over datasets**"),
            ("mean_over_categories", "**mean of categories**"),
        ):
            lines.append(
                f"| {label} | "
                + " | ".join(_cell(r.get("longbench", {}).get("summary", {}).get(key)) for r in runs)
                + " |"
            )
    if any("needle" in r for r in runs):
        lengths = sorted({int(n) for r in runs for n in r.get("needle", {}).get("by_length", {})})
        lines += ["", "## Needle in a haystack (score x100 by context length)", "", head]
        for n in lengths:
            lines.append(
                f"| {n} | "
                + " | ".join(_cell(r.get("needle", {}).get("by_length", {}).get(str(n))) for r in runs)
                + " |"
            )
    if any("synthetic" in r for r in runs):
        lines += _synthetic_tables(runs, head)
    return "\n".join(lines) + "\n"


def _mib(value: float | None) -> float | None:
    if value is None:
        return None
    return round(value / 2**20, 3 if value < 10 * 2**20 else 1)


def _synthetic_tables(runs: Sequence[dict[str, Any]], head: str) -> list[str]:
    checks = list(dict.fromkeys(c for r in runs for c in r.get("synthetic", {}).get("by_check", {})))
    held = next(r["synthetic"]["held_out"] for r in runs if "synthetic" in r)
    lines = [
        "",
        "## Held-out synthetic checks (score x100)",
        "",
        f"Facts about nouns held out from training (seed stream {held.get('seed_stream')}, seed "
        f"{held.get('seed')}, {held.get('excluded_nouns')} nouns excluded"
        + (f" incl. those of {', '.join(held['exclude_from'])}" if held.get("exclude_from") else "")
        + "), among pool passages.",
        "",
        head,
    ]
    for check in checks:
        figures = [r.get("synthetic", {}).get("by_check", {}).get(check, {}) for r in runs]
        lines.append(
            f"| *{check}* | "
            + " | ".join(
                _cell(round(100 * f["mean_score"], 2) if f.get("mean_score") is not None else None)
                for f in figures
            )
            + " |"
        )
        lengths = sorted({int(n) for f in figures for n in f.get("by_length", {})})
        for n in lengths:
            lines.append(
                f"| {check} @ {n} | "
                + " | ".join(_cell(f.get("by_length", {}).get(str(n))) for f in figures)
                + " |"
            )
        lines.append(
            f"| {check}: wrong value given (%) | "
            + " | ".join(
                _cell(round(100 * f["confused_rate"], 1) if f.get("confused_rate") is not None else None)
                for f in figures
            )
            + " |"
        )
    lines.append(
        "| **mean over checks** | "
        + " | ".join(
            _cell(round(100 * r["synthetic"]["mean_score"], 2) if "synthetic" in r else None) for r in runs
        )
        + " |"
    )
    return lines


def _plots(runs: Sequence[dict[str, Any]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        if "needle" in r:
            xs = sorted(int(n) for n in r["needle"]["by_length"])
            ax.plot(
                xs,
                [r["needle"]["by_length"][str(x)] for x in xs],
                marker="o",
                label=f"{r['method']} (needle)",
            )
        if "synthetic" in r:
            by_length: dict[int, list[float]] = {}
            for figures in r["synthetic"]["by_check"].values():
                for n, v in figures["by_length"].items():
                    if v is not None:
                        by_length.setdefault(int(n), []).append(v)
            xs = sorted(by_length)
            ax.plot(
                xs,
                [math.fsum(by_length[x]) / len(by_length[x]) for x in xs],
                marker="^",
                linestyle=":",
                label=f"{r['method']} (synthetic, mean of checks)",
            )
        if "longbench" in r:
            points = [
                (i, v)
                for i, b in enumerate(LENGTH_BUCKETS)
                if (v := r["longbench"]["by_length"][b]) is not None
            ]
            if points:
                ax.plot(
                    [(2000, 6000, 10000)[i] for i, _ in points],
                    [v for _, v in points],
                    marker="s",
                    linestyle="--",
                    label=f"{r['method']} (LongBench, 0-4k/4-8k/8k+)",
                )
    ax.set_xlabel("context length (tokens; LongBench: bucket centre of the length field)")
    ax.set_ylabel("score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "score_vs_length.png", dpi=100)
    plt.close(fig)
    files.append("score_vs_length.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        score = r.get("longbench", {}).get("summary", {}).get("mean_over_datasets")
        if score is None and "needle" in r:
            score = 100 * r["needle"]["mean_score"]
        if score is None and "synthetic" in r:
            score = 100 * r["synthetic"]["mean_score"]
        if r["effective_ratio"] is not None and score is not None:
            ax.scatter([r["effective_ratio"]], [score])
            ax.annotate(r["method"], (r["effective_ratio"], score), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("effective compression ratio (tokens read / KV entries held)")
    ax.set_ylabel("mean score")
    fig.tight_layout()
    fig.savefig(out / "score_vs_ratio.png", dpi=100)
    plt.close(fig)
    files.append("score_vs_ratio.png")
    if any("synthetic" in r for r in runs):
        files.append(_synthetic_plot(runs, out))
    return files


def _synthetic_plot(runs: Sequence[dict[str, Any]], out: Path) -> str:
    """One panel per synthetic check: score against context length, one line per method."""
    import matplotlib.pyplot as plt

    checks = list(dict.fromkeys(c for r in runs for c in r.get("synthetic", {}).get("by_check", {})))
    fig, axes = plt.subplots(1, len(checks), figsize=(3.2 * len(checks), 3.2), squeeze=False, sharey=True)
    for ax, check in zip(axes[0], checks, strict=True):
        for r in runs:
            figures = r.get("synthetic", {}).get("by_check", {}).get(check)
            if not figures:
                continue
            xs = sorted(int(n) for n, v in figures["by_length"].items() if v is not None)
            ax.plot(xs, [figures["by_length"][str(x)] for x in xs], marker="o", label=r["method"])
        ax.set_title(check, fontsize=9)
        ax.set_xlabel("context length (tokens)", fontsize=8)
        ax.set_ylim(-5, 105)
    axes[0][0].set_ylabel("score x100")
    axes[0][-1].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "synthetic_vs_length.png", dpi=100)
    plt.close(fig)
    return "synthetic_vs_length.png"


def build_report(folders: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    if not folders:
        raise SelfctxError("no run folders given: pass the folders selfctx eval longbench/needle wrote")
    runs = [_with_memory(r) for r in merge_runs([_collect(f) for f in folders])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", {"runs": runs})
    write_text_atomic(out / "report.md", markdown(runs))
    files = ["report.json", "report.md", *_plots(runs, out)]
    return {"runs": runs, "files": files}

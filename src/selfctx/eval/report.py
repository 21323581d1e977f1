"""One report comparing methods on the same model: LongBench tables, needle scores, the memory each held.

Input: run folders written by `selfctx eval longbench` / `selfctx eval needle` (run.json describes the
method; LongBench folders hold <dataset>.jsonl + result.json, needle folders results.json + needle.jsonl).
Output: report.json, report.md, score_vs_length.png, score_vs_ratio.png.

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


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def collect_run(folder: str | Path) -> dict[str, Any]:
    """The figures of one run folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SelfctxError(f"run folder {folder} does not exist: pass folders written by selfctx eval")
    meta = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    run: dict[str, Any] = {"folder": str(folder), "method": meta.get("name", folder.name), "meta": meta}
    per_token = meta.get("kv_bytes_per_token")
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
    if "longbench" not in run and "needle" not in run:
        raise SelfctxError(f"{folder} holds neither result.json (LongBench) nor results.json (needle)")
    memory = [float(r["memory_bytes"]) for r in rows_seen if "memory_bytes" in r]
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
    return "\n".join(lines) + "\n"


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
    return files


def build_report(folders: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    if not folders:
        raise SelfctxError("no run folders given: pass the folders selfctx eval longbench/needle wrote")
    runs = [collect_run(f) for f in folders]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "report.json", {"runs": runs})
    write_text_atomic(out / "report.md", markdown(runs))
    files = ["report.json", "report.md", *_plots(runs, out)]
    return {"runs": runs, "files": files}

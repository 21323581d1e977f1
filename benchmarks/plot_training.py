"""Loss curves of training runs: one PNG and one markdown table from `train_log.jsonl` files.

    python benchmarks/plot_training.py --out benchmarks/experts/loss_curves \
        synth-r4=benchmarks/experts/smollm2-cpu-synth/train_log-r4.jsonl ...

Each LABEL=PATH is a JSONL log written by `selfctx train` (one row per optimizer step with loss, tokens,
tokens_per_s, memory_mb). Writes OUT.png and OUT.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown_table(runs: dict[str, list[dict[str, Any]]]) -> str:
    steps = max(len(rows) for rows in runs.values())
    header = "| run | " + " | ".join(f"step {i + 1}" for i in range(steps)) + " | tokens | tok/s | peak MB |"
    lines = [header, "|" + "---|" * (steps + 4)]
    for label, rows in runs.items():
        losses = [f"{r['loss']:.3f}" for r in rows] + [""] * (steps - len(rows))
        tokens = sum(int(r["tokens"]) for r in rows)
        seconds = sum(float(r["step_s"]) for r in rows)
        peak = max(float(r.get("memory_mb") or 0) for r in rows)
        lines.append(
            f"| {label} | " + " | ".join(losses) + f" | {tokens} | {tokens / seconds:.1f} | {peak:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: dict[str, list[dict[str, Any]]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in runs.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer / LM tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="output path without suffix")
    parser.add_argument("logs", nargs="+", help="LABEL=PATH to a train_log.jsonl")
    args = parser.parse_args()
    runs = {}
    for item in args.logs:
        label, _, path = item.partition("=")
        runs[label] = read_log(Path(path))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown_table(runs))
    plot(runs, args.out.with_suffix(".png"))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

"""Paired comparison of methods scored on the same needle-as-choice items (a `harness_needle_mc.py` folder).

    python benchmarks/paired_mc.py runs/mc-4k-w64-s240 --reference experts-s400-r8

Prints, per method: accuracy ± stderr, accuracy by depth quarter (items per quarter in the header), and the
paired difference reference - method with its stderr (the items are the same, so the paired stderr is the
honest one: sd of the per-item differences / sqrt(n)), plus items gained and lost.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--reference", required=True, help="method folder name the others are paired against")
    args = parser.parse_args()
    results = {p.parent.name: json.loads(p.read_text()) for p in sorted(args.folder.glob("*/results.json"))}
    if args.reference not in results:
        raise SystemExit(
            f"error: no {args.reference}/results.json under {args.folder}: use one of {sorted(results)}"
        )
    ref = [float(i["correct"]) for i in results[args.reference]["per_item"]]
    depths = [i["depth"] for i in results[args.reference]["per_item"]]
    quarters = [min(3, int(d * 4)) for d in depths]
    counts = [quarters.count(q) for q in range(4)]
    print(
        f"| method | acc % ± se | depth quarters 1-4 % (n={'/'.join(map(str, counts))}) "
        f"| {args.reference} - method (paired) | gained / lost |"
    )
    print("|---|---:|---|---:|---:|")
    for name, r in results.items():
        items = r["per_item"]
        if [i["depth"] for i in items] != depths:
            print(f"| {name} | (not the same items: skipped) | | | |")
            continue
        correct = [float(i["correct"]) for i in items]
        acc, se = _mean_se(correct)
        hits = [sum(c for c, q in zip(correct, quarters, strict=True) if q == k) for k in range(4)]
        by_quarter = "/".join(f"{100 * h / max(1, n):.0f}" for h, n in zip(hits, counts, strict=True))
        diff, diff_se = _mean_se([a - b for a, b in zip(ref, correct, strict=True)])
        gained = sum(1 for a, b in zip(ref, correct, strict=True) if a > b)
        lost = sum(1 for a, b in zip(ref, correct, strict=True) if a < b)
        paired = "" if name == args.reference else f"{100 * diff:+.1f} ± {100 * diff_se:.1f}"
        print(
            f"| {name} | {100 * acc:.1f} ± {100 * se:.1f} | {by_quarter} | {paired} | "
            f"{'' if name == args.reference else f'{gained} / {lost}'} |"
        )


if __name__ == "__main__":
    main()

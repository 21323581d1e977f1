"""Partial recall on a numeric needle: how many of the needle's digits each method's answer puts in place.

Exact match gives 0 or 1 per item; this reads the same per-item answers (`selfctx eval needle --variant
single`, OUT/<method>/needle.jsonl) for the share of positions where the first number in the answer has the
needle's digit (a random guess of the same length scores 10%), the first digit alone, and the paired
difference of each method against a reference method on the same items.

    python benchmarks/digits_in_place.py runs/needle-single-4k --reference truncate-1024
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path


def scores(row: dict) -> dict[str, float]:
    found = re.search(r"\d+", row["pred"])
    answer, needle = (found.group(0) if found else ""), row["expected"][0]
    # answers differ in length: positions past the shorter one count as misses
    in_place = sum(a == b for a, b in zip(answer, needle, strict=False)) / len(needle)
    return {"exact": float(answer == needle), "digits": in_place, "first": float(answer[:1] == needle[:1])}


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="the --out folder of `selfctx eval needle`")
    parser.add_argument("--reference", default="", help="method folder to pair every other method with")
    args = parser.parse_args()
    items = {
        folder.name: {r["cell"]: scores(r) for r in map(json.loads, (folder / "needle.jsonl").open())}
        for folder in sorted(args.run.iterdir())
        if (folder / "needle.jsonl").is_file()
    }
    print("| method | items | exact % | digits in place % | first digit % |\n|---|---:|---:|---:|---:|")
    for name, rows in items.items():
        cells = [mean_se([r[k] for r in rows.values()]) for k in ("exact", "digits", "first")]
        shown = " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in cells)
        print(f"| {name} | {len(rows)} | {shown} |")
    reference = items.get(args.reference)
    for name, rows in items.items():
        if reference is None or name == args.reference:
            continue
        shared = sorted(set(rows) & set(reference))
        if not shared:
            print(f"{name} shares no items with {args.reference}: nothing to pair")
            continue
        mean, se = mean_se([rows[c]["digits"] - reference[c]["digits"] for c in shared])
        print(
            f"{name} - {args.reference}, digits in place: {100 * mean:+.1f} ± {100 * se:.1f} "
            f"({len(shared)} items)"
        )


if __name__ == "__main__":
    main()

"""Generation benchmarks for the kvpress runner: export selfctx's requests, collect the presses' answers.

Runs in the MAIN environment (it imports selfctx); `run_presses.py --requests` runs in kvpress's venv between
the two steps. The generated-answer needle (`selfctx.eval.needle`) and the held-out synthetic checks
(`selfctx.eval.synthetic`, e.g. kv-retrieval) build their prompts in-process, so this script runs selfctx's
own runners twice with stand-in methods:

    # 1. the requests, exactly as the runners would send them to a method (same grid = same items)
    python benchmarks/kvpress/generation_requests.py export --out runs/kvpress-kv synthetic \\
        --pool runs/pool-seed0 --exclude-from runs/synth-train --lengths 4000 --checks kv-retrieval
    python benchmarks/kvpress/generation_requests.py export --out runs/kvpress-needle needle \\
        --haystack ../shared/data/paul_graham_essays --lengths 4000
    # 2. the presses' answers (kvpress venv): OUT/<method>/rows.jsonl + settings.json
    benchmarks/kvpress/.venv/bin/python benchmarks/kvpress/run_presses.py --gguf GGUF \\
        --requests runs/kvpress-kv/requests.jsonl --out runs/kvpress-kv --ratios 4,8,16
    # 3. scored by the same runner: OUT/<benchmark>/<method>/ holds run.json and the runner's own files
    python benchmarks/kvpress/generation_requests.py collect --out runs/kvpress-kv
    selfctx eval report runs/kvpress-kv/synthetic/* runs/compare/synthetic/* --out runs/report

Export records every request the runner makes (a recording method answers "" and nothing is kept of that
pass); collect replays the grid with a method that answers each request with the press's prediction for it
(matched by the request's key), so scores, summaries and plots are written by selfctx's code.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import press_io  # noqa: E402


class _StandIn:
    """The Method protocol around a tokenizer: no input limit of its own (a press compresses any length,
    as selfctx's CompressedMethod does); `generate` records the requests or replays stored answers."""

    def __init__(self, name: str, tokenizer: Any, answers: dict[str, dict[str, Any]] | None = None) -> None:
        self.name = name
        self._tokenizer = tokenizer
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def input_limit(self, max_new_tokens: int) -> int | None:
        return None

    def memory_bytes(self, n_tokens: int) -> int:
        return 0

    def generate(self, requests: list[Any]) -> list[Any]:
        from selfctx.errors import SelfctxError
        from selfctx.eval.methods import Prediction

        out = []
        for r in requests:
            record = press_io.request_record(
                r.head,
                r.tail,
                r.max_new_tokens,
                add_special_tokens=r.add_special_tokens,
                stop_at_newline=r.stop_at_newline,
            )
            if self.answers is None:
                self.requests.append(record)
                out.append(Prediction(text="", input_tokens=0, memory_bytes=0))
                continue
            answer = self.answers.get(record["key"])
            if answer is None:
                raise SelfctxError(
                    f"{self.name} has no prediction for request {record['key']}: run run_presses.py "
                    "--requests on this export first (same grid, same tokenizer)"
                )
            info = {k: answer[k] for k in ("compressed_tokens", "new_tokens", "seconds") if k in answer}
            out.append(
                Prediction(
                    text=answer["text"],
                    input_tokens=int(answer["input_tokens"]),
                    memory_bytes=int(answer["memory_bytes"]),
                    info=info,
                )
            )
        return out


def _run(benchmark: str, grid: dict[str, Any], method: _StandIn, folder: Path) -> dict[str, Any]:
    """selfctx's runner for `benchmark` over `grid`, answering through `method`, into `folder`."""
    if benchmark == "needle":
        from selfctx.eval.needle import NeedleGrid, load_haystack, run_needle

        settings = {k: v for k, v in grid.items() if k != "haystack"}
        needle_grid = NeedleGrid(
            **{**settings, "lengths": tuple(settings["lengths"]), "depths": tuple(settings["depths"])}
        )
        return run_needle(method, load_haystack(grid["haystack"]), needle_grid, folder)
    from selfctx.eval.synthetic import run_synthetic_checks

    settings = {k: v for k, v in grid.items() if k != "pool"}
    return run_synthetic_checks(method, pool=grid["pool"], out=folder, **settings)


def export(args: argparse.Namespace) -> None:
    from selfctx.models import load_tokenizer

    if args.benchmark == "needle":
        grid: dict[str, Any] = {
            "haystack": str(args.haystack),
            "lengths": [int(v) for v in args.lengths.split(",")],
            "depths": [float(v) for v in args.depths.split(",")],
            "variant": args.variant,
            "samples": args.samples,
            "seed": args.seed,
            "max_new_tokens": args.max_new_tokens,
        }
    else:
        grid = {
            "pool": str(args.pool),
            "lengths": [int(v) for v in args.lengths.split(",")],
            "depths": [float(v) for v in args.depths.split(",")],
            "checks": [c for c in args.checks.split(",") if c],
            "samples": args.samples,
            "seed": args.seed,
            "exclude_from": [str(p) for p in args.exclude_from],
            "records": args.records,
            "max_new_tokens": args.max_new_tokens,
        }
    recorder = _StandIn("kvpress-export", load_tokenizer(args.model))
    with tempfile.TemporaryDirectory(prefix="kvpress-export-") as scratch:
        _run(args.benchmark, grid, recorder, Path(scratch) / "run")
    args.out.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(r) + "\n" for r in recorder.requests)
    (args.out / press_io.REQUESTS_FILE).write_text(lines, encoding="utf-8")
    described = {"benchmark": args.benchmark, "model": args.model, "grid": grid}
    (args.out / press_io.EXPORT_FILE).write_text(json.dumps(described, indent=1), encoding="utf-8")
    print(f"{len(recorder.requests)} requests: {args.out / press_io.REQUESTS_FILE}")


def collect(args: argparse.Namespace) -> list[Path]:
    """Every method folder of OUT whose predictions are complete, scored by selfctx's runner."""
    from selfctx.eval.run_folder import bind_run
    from selfctx.fsutil import write_json_atomic
    from selfctx.models import load_tokenizer

    described = json.loads((args.out / press_io.EXPORT_FILE).read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(described["model"])
    folders = []
    for settings_path in sorted(args.out.glob(f"*/{press_io.SETTINGS_FILE}")):
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
        rows = press_io.read_rows(settings_path.parent)
        answers = {r["key"]: r for r in rows}
        method = _StandIn(settings["method"], tokenizer, answers)
        folder = args.out / described["benchmark"] / settings["method"]
        run = {
            "name": settings["method"],
            "kind": "KVPress",
            "kv_bytes_per_token": settings["kv_bytes_per_token"],
            "model": settings["model"],
            "benchmark": described["benchmark"],
            "grid": described["grid"],
            "press": {k: settings.get(k) for k in ("press", "compression_ratio", "question_aware", "ratio")},
        }
        bind_run(folder, run)  # what made the answers; timing and versions describe a run, not its settings
        timing = {"seconds_per_item": settings["seconds_per_item"], "versions": settings.get("versions")}
        write_json_atomic(folder / "timing.json", timing)
        summary = _run(described["benchmark"], described["grid"], method, folder)
        print(f"{settings['method']}: mean score {summary['mean_score']} -> {folder}")
        folders.append(folder)
    if not folders:
        print(f"no method folder of {args.out} holds complete predictions ({press_io.SETTINGS_FILE})")
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    exporter = commands.add_parser("export", help="write OUT/requests.jsonl and OUT/export.json")
    exporter.add_argument("--out", type=Path, required=True)
    exporter.add_argument("--model", default="smollm2-135m", help="whose tokenizer measures the grid")
    benchmarks = exporter.add_subparsers(dest="benchmark", required=True)
    for name in ("needle", "synthetic"):
        sub = benchmarks.add_parser(name)
        sub.add_argument("--lengths", default="4000")
        sub.add_argument("--depths", default="0.1,0.5,0.9")
        sub.add_argument("--samples", type=int, default=1)
        sub.add_argument("--seed", type=int, default=0)
        if name == "needle":
            sub.add_argument("--haystack", type=Path, required=True)
            sub.add_argument("--variant", default="classic")
            sub.add_argument("--max-new-tokens", type=int, default=32)
        else:
            sub.add_argument("--pool", type=Path, required=True)
            sub.add_argument("--checks", default="kv-retrieval")
            sub.add_argument("--exclude-from", action="append", default=[])
            sub.add_argument("--records", type=int, default=6)
            sub.add_argument("--max-new-tokens", type=int, default=24)
    collector = commands.add_parser("collect", help="score OUT/<method>/ predictions into OUT/<benchmark>/")
    collector.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "export":
        export(args)
    else:
        collect(args)


if __name__ == "__main__":
    main()

"""The comparison of issues #4/#5/#8 at CPU scale.

One loaded model, several methods, the same needle grid and/or the held-out synthetic checks
(`--synthetic POOL`: selfctx.eval.synthetic, facts about nouns held out from training among the pool's
passages; `--exclude-from DATASET` keeps a training dataset's nouns out), then one report.

    python benchmarks/compare_methods.py --haystack ../shared/data/paul_graham_essays --out runs/compare \
        --experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
        --experts clone=runs/experts-cpu-clone/experts --untrained --truncate 1024 --full \
        --finetune runs/finetune-cpu-short/final \
        --synthetic runs/pool-seed0 --exclude-from runs/synth-train --synthetic-lengths 2000,4000

Methods: `truncate-<N>` (prompt middle-truncated to N tokens: the experts' capped native window), `full`
(full attention over the whole input), `experts-<name>` (a trained battery at a forced ratio), `untrained`
(zero-LoRA experts: memory read through the base weights) and `finetune` (a RoPE-scaled PEFT adapter from
`selfctx train --method finetune`, full attention). Every run folder is resumable (rows already written are
skipped) and `selfctx eval report` reads them.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any


def compressed_lms(args: argparse.Namespace, model: Any, tokenizer: Any) -> dict[str, Any]:
    """`experts-<name>-r<ratio>` (each --experts battery) and `untrained-r<ratio>` over one loaded model."""
    from selfctx.compress import CompressedLM

    out: dict[str, Any] = {}
    for spec in args.experts:
        name, _, folder = spec.partition("=")
        out[f"experts-{name}-r{args.ratio}"] = CompressedLM.from_pretrained(
            model, experts=folder, native_context=args.native_context, tokenizer=tokenizer
        )
    if args.untrained:
        out[f"untrained-r{args.ratio}"] = CompressedLM.from_pretrained(
            model,
            ratios=(args.ratio,),
            window=args.window,
            native_context=args.native_context,
            tokenizer=tokenizer,
            sink=getattr(args, "untrained_sink", 0),
            memory_input=getattr(args, "untrained_memory_input", "shared"),
        )
    return out


def _methods(args: argparse.Namespace, model: Any, tokenizer: Any) -> list[Any]:
    from selfctx.eval.methods import CompressedMethod, HFMethod

    out: list[Any] = []
    if args.truncate:
        out.append(HFMethod(model, tokenizer, name=f"truncate-{args.truncate}", limit=args.truncate))
    if args.full:
        out.append(HFMethod(model, tokenizer, name="full", limit=None))
    for name, lm in compressed_lms(args, model, tokenizer).items():
        out.append(CompressedMethod(lm, name=name, ratio=args.ratio))
    return out


def _finetune_method(folder: str) -> Any:
    """The fine-tune's final/ folder as a model spec: its base, its scaled RoPE config, its adapter merged."""
    from selfctx.eval.methods import HFMethod
    from selfctx.models import load_causal_lm

    tuned, tokenizer = load_causal_lm(folder, dtype="float32")
    return HFMethod(tuned, tokenizer, name="finetune-yarn", limit=None)


def _bind(folder: Path, method: Any, settings: dict[str, Any], args: argparse.Namespace) -> None:
    """The folder's run.json: what the report reads, and the settings a resume must match — with the
    batteries, window and native context every compressed method here is built from."""
    from selfctx.eval.methods import describe
    from selfctx.eval.run_folder import bind_run

    batteries = (spec.partition("=") for spec in args.experts)
    sources = {
        "experts": sorted(f"{name}={Path(where).resolve()}" for name, _, where in batteries),
        "window": args.window,
        "native_context": args.native_context,
    }
    bind_run(folder, {**describe(method), **settings, **sources})


def _run_synthetic(args: argparse.Namespace, method: Any) -> Path:
    """The held-out synthetic checks (selfctx.eval.synthetic) for one method, in OUT/synthetic/<name>."""
    from selfctx.eval.synthetic import CHECKS, run_synthetic_checks

    folder = args.out / "synthetic" / method.name
    grid = {
        "lengths": [int(v) for v in (args.synthetic_lengths or args.lengths).split(",")],
        "depths": [float(v) for v in args.synthetic_depths.split(",")],
        "checks": [c for c in args.synthetic_checks.split(",") if c] or list(CHECKS),
        "samples": args.synthetic_samples,
        "exclude_from": [str(p) for p in args.exclude_from or ()],
    }
    _bind(folder, method, {"benchmark": "synthetic", "pool": str(args.synthetic), "grid": grid}, args)
    started = time.perf_counter()
    summary = run_synthetic_checks(
        method,
        pool=args.synthetic,
        out=folder,
        lengths=grid["lengths"],
        depths=grid["depths"],
        checks=grid["checks"],
        samples=args.synthetic_samples,
        exclude_from=args.exclude_from,
    )
    checks = ", ".join(f"{c} {f['mean_score']:.2f}" for c, f in summary["by_check"].items())
    print(
        f"{method.name}: synthetic mean {summary['mean_score']:.3f} ({checks}; "
        f"{time.perf_counter() - started:.0f} s)"
    )
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--haystack", default="", help="needle haystack folder (needle grid runs if given)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--lengths", default="2000,4000")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--ratio", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--native-context", type=int, default=1024)
    parser.add_argument("--experts", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--untrained", action="store_true")
    parser.add_argument("--truncate", type=int, default=0)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--finetune", default="")
    parser.add_argument("--only", default="", help="comma-separated method names to run (default: all)")
    parser.add_argument(
        "--synthetic", default="", help="synth pool folder: also run the held-out synthetic checks on it"
    )
    parser.add_argument("--synthetic-lengths", default="", help="default: --lengths")
    parser.add_argument("--synthetic-depths", default="0.1,0.5,0.9")
    parser.add_argument("--synthetic-checks", default="", help="comma-separated (default: all five)")
    parser.add_argument("--synthetic-samples", type=int, default=1)
    parser.add_argument(
        "--exclude-from",
        action="append",
        default=[],
        help="training dataset folder whose nouns the synthetic checks must not use (repeatable)",
    )
    args = parser.parse_args()
    if not args.haystack and not args.synthetic:
        parser.error("nothing to run: pass --haystack (needle grid) and/or --synthetic POOL")

    from selfctx.eval.needle import NeedleGrid, load_haystack, run_needle
    from selfctx.eval.report import build_report
    from selfctx.models import load_causal_lm

    grid = NeedleGrid(
        lengths=tuple(int(v) for v in args.lengths.split(",")),
        depths=tuple(float(v) for v in args.depths.split(",")),
    )
    text = load_haystack(args.haystack) if args.haystack else ""
    model, tokenizer = load_causal_lm(args.model, dtype="float32")
    methods = _methods(args, model, tokenizer)
    if args.finetune:
        methods.append(_finetune_method(args.finetune))
    only = {m for m in args.only.split(",") if m}
    folders = []
    for method in methods:
        if only and method.name not in only:
            folders += [args.out / "needle" / method.name, args.out / "synthetic" / method.name]
            continue
        if args.haystack:
            folder = args.out / "needle" / method.name
            folders.append(folder)
            settings = {"benchmark": "needle", "haystack": str(args.haystack), "grid": asdict(grid)}
            _bind(folder, method, settings, args)
            started = time.perf_counter()
            summary = run_needle(method, text, grid, folder)
            print(
                f"{method.name}: needle mean {summary['mean_score']:.3f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
        if args.synthetic:
            folders.append(_run_synthetic(args, method))
    done = [f for f in folders if (f / "results.json").is_file() or (f / "synthetic.json").is_file()]
    report = build_report(done, args.out / "report")
    print(f"report: {args.out / 'report'} ({len(report.get('runs', done))} runs)")


if __name__ == "__main__":
    main()

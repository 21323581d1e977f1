"""The comparison of issues #4/#5/#8 at CPU scale.

One loaded model, several methods, the same needle grid (and the held-out synthetic checks when
`selfctx.eval.synthetic` is installed), then one report.

    python benchmarks/compare_methods.py --haystack ../shared/data/paul_graham_essays --out runs/compare \
        --experts synth=runs/experts-cpu-synth/experts --experts nosynth=runs/experts-cpu-nosynth/experts \
        --experts clone=runs/experts-cpu-clone/experts --untrained --truncate 1024 --full \
        --finetune runs/finetune-cpu-short/final

Methods: `truncate-<N>` (prompt middle-truncated to N tokens: the experts' capped native window), `full`
(full attention over the whole input), `experts-<name>` (a trained battery at a forced ratio), `untrained`
(zero-LoRA experts: memory read through the base weights) and `finetune` (a RoPE-scaled PEFT adapter from
`selfctx train --method finetune`, full attention). Every run folder is resumable (rows already written are
skipped) and `selfctx eval report` reads them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def _methods(args: argparse.Namespace, model: Any, tokenizer: Any) -> list[Any]:
    from selfctx.compress import CompressedLM
    from selfctx.eval.methods import CompressedMethod, HFMethod

    out: list[Any] = []
    if args.truncate:
        out.append(HFMethod(model, tokenizer, name=f"truncate-{args.truncate}", limit=args.truncate))
    if args.full:
        out.append(HFMethod(model, tokenizer, name="full", limit=None))
    for spec in args.experts:
        name, _, folder = spec.partition("=")
        lm = CompressedLM.from_pretrained(
            model, experts=folder, native_context=args.native_context, tokenizer=tokenizer
        )
        out.append(CompressedMethod(lm, name=f"experts-{name}-r{args.ratio}", ratio=args.ratio))
    if args.untrained:
        lm = CompressedLM.from_pretrained(
            model,
            ratios=(args.ratio,),
            window=args.window,
            native_context=args.native_context,
            tokenizer=tokenizer,
        )
        out.append(CompressedMethod(lm, name=f"untrained-r{args.ratio}", ratio=args.ratio))
    return out


def _finetune_method(folder: str, base_name: str) -> Any:
    """The fine-tuned adapter on its own copy of the base, with the scaled RoPE config it was saved with."""
    import json

    from peft import PeftModel

    from selfctx.config import load_config
    from selfctx.eval.methods import HFMethod
    from selfctx.models import load_causal_lm
    from selfctx.train.config import FinetuneConfig
    from selfctx.train.rope import apply_rope_scaling

    trained = load_config(
        FinetuneConfig, None, [], defaults=json.loads((Path(folder) / "selfctx_train.json").read_text())
    )
    model, tokenizer = load_causal_lm(base_name, dtype="float32")
    apply_rope_scaling(model, trained.rope)  # the scaling it was trained with (also in its config.json)
    tuned = PeftModel.from_pretrained(model, folder).merge_and_unload()
    return HFMethod(tuned, tokenizer, name="finetune-yarn", limit=None)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--haystack", required=True)
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
    args = parser.parse_args()

    from selfctx.commands.eval import _write_run
    from selfctx.eval.needle import NeedleGrid, load_haystack, run_needle
    from selfctx.eval.report import build_report
    from selfctx.models import load_causal_lm

    grid = NeedleGrid(
        lengths=tuple(int(v) for v in args.lengths.split(",")),
        depths=tuple(float(v) for v in args.depths.split(",")),
    )
    text = load_haystack(args.haystack)
    model, tokenizer = load_causal_lm(args.model, dtype="float32")
    methods = _methods(args, model, tokenizer)
    if args.finetune:
        methods.append(_finetune_method(args.finetune, args.model))
    only = {m for m in args.only.split(",") if m}
    folders = []
    for method in methods:
        folder = args.out / "needle" / method.name
        folders.append(folder)
        if only and method.name not in only:
            continue
        started = time.perf_counter()
        summary = run_needle(method, text, grid, folder)
        _write_run(folder, method, {"task": "needle", "grid": list(grid.lengths)})
        print(
            f"{method.name}: needle mean {summary['mean_score']:.3f} ({time.perf_counter() - started:.0f} s)"
        )
    done = [f for f in folders if (f / "results.json").is_file()]
    report = build_report(done, args.out / "report")
    print(f"report: {args.out / 'report'} ({len(report.get('runs', done))} runs)")


if __name__ == "__main__":
    main()

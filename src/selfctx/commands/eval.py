"""`selfctx eval ...`: LongBench runs and scoring, needle grids, held-out synthetic checks, and the
method-comparison report."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, get_args

import typer

from selfctx.checks import EvalBackend, MemoryInput
from selfctx.commands import options as opt
from selfctx.errors import SelfctxError

app = typer.Typer(
    help="Evaluate: LongBench v1 (official prompts and metrics), needle grids, held-out synthetic checks, "
    "method reports.",
    no_args_is_help=True,
)

BACKENDS: tuple[str, ...] = get_args(EvalBackend)
METHOD_HELP = (
    "truncate (native window), truncate-N (N tokens), full (full attention up to --max-length), "
    "compressed (CompressedLM)"
)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass(frozen=True)
class _Methods:
    """What the methods of a run are built from: the options every `eval` verb shares."""

    model: str
    methods: list[str]
    experts: list[str] | None  # DIR, or NAME=DIR per battery (NAME= alone: an untrained one)
    window: int | None
    ratio: int | None
    dtype: str
    device: str | None
    backend: str
    batch_size: int = 1
    native_context: int | None = None
    sink: int | None = None
    memory_input: MemoryInput = "shared"

    @property
    def batteries(self) -> list[tuple[str | None, str | None]]:
        """(name or None, folder or None) of each --experts; one unnamed untrained battery without any."""
        out: list[tuple[str | None, str | None]] = []
        for entry in self.experts or []:
            name, sep, folder = entry.partition("=")
            named = sep and re.fullmatch(r"[\w.-]+", name) and not Path(entry).exists()
            out.append((name, folder or None) if named else (None, entry))
        return out or [(None, None)]

    def check(self) -> _Methods:
        """Every option, checked before any model loads and before any folder is made."""
        from selfctx.checks import check_device, check_dtype, check_positive
        from selfctx.eval.methods import METHOD_KINDS, truncation_limit
        from selfctx.models import resolve_model

        names = [name for name, _ in self.batteries]
        if len(names) > 1 and (None in names or len(set(names)) != len(names)):
            raise SelfctxError(
                "several --experts need distinct names: write each as NAME=DIR (--experts s400=runs/a)"
            )
        unknown = [m for m in self.methods if m not in METHOD_KINDS and truncation_limit(m) is None]
        if unknown or not self.methods:
            raise SelfctxError(
                f"--method {', '.join(unknown) or '(none)'} is not a method: pick from "
                f"{', '.join(METHOD_KINDS)}, truncate-N"
            )
        if self.backend not in BACKENDS:
            raise SelfctxError(
                f"--backend {self.backend} is unknown: use hf (transformers) or llamacpp (GGUF models)"
            )
        if self.backend == "llamacpp" and "compressed" in self.methods:
            raise SelfctxError("--method compressed runs on the transformers backend: use --backend hf")
        check_dtype(self.dtype)
        check_device(self.device)
        check_positive(self.batch_size, "--batch-size")
        if self.sink is not None and self.sink < 0:
            raise SelfctxError(f"--sink must be 0 or more raw tokens, got {self.sink}")
        spec = resolve_model(self.model)
        if self.backend == "llamacpp":
            _ = spec.gguf_path  # raises unless llama.cpp can run the model as it is
        if "compressed" in self.methods:
            from selfctx.compress.model import check_compression_args

            for _, folder in self.batteries:
                check_compression_args(
                    folder, window=self.window, native_context=self.native_context, ratio=self.ratio
                )
        else:
            from selfctx.compress.battery import read_battery_meta

            for _, folder in self.batteries:
                if folder is not None:
                    read_battery_meta(folder, "--experts")
        return self

    def load(self) -> list:
        """The methods over one loaded model (call `check` first)."""
        from selfctx.eval.methods import LlamaCppMethod, build_method, truncation_limit
        from selfctx.models import load_causal_lm, load_tokenizer, resolve_model

        spec = resolve_model(self.model)
        if self.backend == "llamacpp":
            tokenizer = load_tokenizer(spec)
            return [
                LlamaCppMethod(
                    str(spec.gguf_path),
                    tokenizer,
                    name=f"{m}-llamacpp",
                    limit=truncation_limit(m),
                    n_ctx=None if truncation_limit(m) is not None else 16_384,
                )
                for m in self.methods
            ]
        lm, tokenizer = load_causal_lm(spec, dtype=self.dtype, device=self.device)
        built = [
            build_method(
                m,
                lm,
                tokenizer,
                experts=folder,
                window=self.window,
                ratio=self.ratio,
                batch_size=self.batch_size,
                label=name,
                native_context=self.native_context,
                sink=self.sink,
                memory_input=self.memory_input,
            )
            for m in self.methods
            for name, folder in (self.batteries if m == "compressed" else [(None, None)])
        ]
        if spec.adapter is not None:  # a fine-tune: its runs sit beside the base model's, named apart
            for method in built:
                method.name = f"finetune-{method.name}"
        return built


def _bind_run(folder: Path, method, extra: dict) -> None:
    """Bind the method's folder to everything that changes its outputs, before anything is predicted."""
    from selfctx.eval.methods import describe
    from selfctx.eval.run_folder import bind_run

    bind_run(folder, {**describe(method), **extra})


def _source_settings(method, model: str, dtype: str, backend: str) -> dict:
    """What made the method's outputs besides its description: the model as resolved (the same model named
    from another folder or by another alias is the same run), the battery for a compressed method only."""
    from selfctx.eval.methods import CompressedMethod
    from selfctx.models import EMBEDDED_ALIASES, EMBEDDED_MODEL

    path = Path(model).expanduser()
    identity = str(path.resolve()) if path.exists() else model
    if model.lower() in EMBEDDED_ALIASES:
        identity = EMBEDDED_MODEL
    settings: dict[str, str | None] = {"model_spec": identity, "dtype": dtype, "backend": backend}
    if isinstance(method, CompressedMethod):
        settings["experts"] = str(Path(method.experts).resolve()) if method.experts else None
    return settings


@app.command("longbench")
def longbench(
    out: Annotated[Path, typer.Option(help="output folder; one subfolder per method")],
    data_dir: Annotated[
        Path | None, typer.Option(help="folder of LongBench <dataset>.jsonl files (else: hub)")
    ] = None,
    datasets: Annotated[
        str, typer.Option(help="comma-separated datasets (default: the 16 English ones)")
    ] = "",
    model: opt.BaseModel = "smollm2-135m",
    method: Annotated[str, typer.Option(help=f"comma-separated: {METHOD_HELP}")] = "truncate",
    limit: Annotated[int | None, typer.Option(help="first N rows of each dataset")] = None,
    max_length: Annotated[int, typer.Option(help="middle-truncate prompts to this many tokens")] = 15_500,
    experts: opt.MethodExperts = None,
    window: opt.Window = None,
    ratio: opt.Ratio = None,
    native_context: opt.NativeContext = None,
    sink: opt.Sink = None,
    memory_input: opt.MemoryInputOption = "shared",
    dtype: opt.Dtype = "auto",
    device: opt.Device = None,
    batch_size: Annotated[int, typer.Option(help="prompts per generate call")] = 1,
    backend: opt.Backend = "hf",
) -> None:
    """Predict LongBench with each method (resumable), score it like the official eval.py, print the table."""
    from selfctx.checks import check_out_folder, check_positive
    from selfctx.eval.longbench import check_data_dir, check_datasets, run_longbench
    from selfctx.eval.scoring import ENGLISH_DATASETS

    names = check_datasets(_csv(datasets) or list(ENGLISH_DATASETS))
    check_data_dir(data_dir, names)
    check_positive(limit, "--limit")
    check_positive(max_length, "--max-length")
    check_out_folder(out)
    methods = _Methods(
        model,
        _csv(method),
        experts,
        window,
        ratio,
        dtype,
        device,
        backend,
        batch_size,
        native_context,
        sink,
        memory_input,
    ).check()
    for m in methods.load():
        folder = out / m.name
        # datasets may be added (a prediction file each); what shapes a prediction may not change
        settings = {"benchmark": "longbench", "limit": limit, "max_length": max_length}
        _bind_run(folder, m, {**settings, **_source_settings(m, model, dtype, backend)})
        report = run_longbench(
            m, names, folder, data_dir=data_dir, limit=limit, max_length=max_length, batch_size=batch_size
        )
        typer.echo((folder / "results.md").read_text())
        typer.echo(json.dumps(report["summary"]))


@app.command("score")
def score(
    pred_dir: Annotated[Path, typer.Option(help="folder of <dataset>.jsonl prediction files")],
    e: Annotated[
        bool, typer.Option("--e", help="LongBench-E: scores by length bucket 0-4k, 4-8k, 8k+")
    ] = False,
) -> None:
    """Score LongBench prediction files; writes result.json (official layout) and summary.json."""
    from selfctx.eval.scoring import score_pred_dir

    scored = score_pred_dir(pred_dir, e=e)
    typer.echo(json.dumps(scored, indent=2))


@app.command("needle")
def needle(
    haystack: Annotated[
        Path, typer.Option(help="folder of .txt files, or a synth pool (jsonl rows with text)")
    ],
    out: Annotated[Path, typer.Option(help="output folder; one subfolder per method")],
    lengths: Annotated[
        str, typer.Option(help="comma-separated context lengths in tokens")
    ] = "1000,2000,4000",
    depths: Annotated[str, typer.Option(help="comma-separated depths, 0..1")] = "0,0.25,0.5,0.75,1",
    variant: Annotated[
        str, typer.Option(help="classic, single, multi-key, multi-value, multi-query, variable-tracking")
    ] = "classic",
    samples: Annotated[int, typer.Option(help="samples per cell (different keys/values)")] = 1,
    max_new_tokens: Annotated[int, typer.Option(help="answer budget")] = 32,
    seed: Annotated[int, typer.Option()] = 0,
    model: opt.BaseModel = "smollm2-135m",
    method: Annotated[str, typer.Option(help=f"comma-separated: {METHOD_HELP}")] = "truncate",
    experts: opt.MethodExperts = None,
    window: opt.Window = None,
    ratio: opt.Ratio = None,
    native_context: opt.NativeContext = None,
    sink: opt.Sink = None,
    memory_input: opt.MemoryInputOption = "shared",
    dtype: opt.Dtype = "auto",
    device: opt.Device = None,
    backend: opt.Backend = "hf",
) -> None:
    """Needle-in-a-haystack grid (lengths x depths): results.json and heatmap.png per method."""
    from selfctx.checks import check_out_folder, parse_numbers
    from selfctx.eval.needle import NeedleGrid, load_haystack, run_needle

    grid = NeedleGrid(  # checks its values
        lengths=tuple(parse_numbers(lengths, "--lengths", int)),
        depths=tuple(parse_numbers(depths, "--depths")),
        variant=variant,
        samples=samples,
        seed=seed,
        max_new_tokens=max_new_tokens,
    )
    check_out_folder(out)
    methods = _Methods(
        model,
        _csv(method),
        experts,
        window,
        ratio,
        dtype,
        device,
        backend,
        1,
        native_context,
        sink,
        memory_input,
    ).check()
    text = load_haystack(haystack)
    for m in methods.load():
        folder = out / m.name
        settings = {"benchmark": "needle", "haystack": str(haystack.resolve()), "grid": asdict(grid)}
        _bind_run(folder, m, {**settings, **_source_settings(m, model, dtype, backend)})
        summary = run_needle(m, text, grid, folder)
        typer.echo(
            json.dumps({k: summary[k] for k in ("method", "variant", "mean_score", "score_by_length_depth")})
        )


@app.command("synthetic")
def synthetic(
    pool: Annotated[Path, typer.Option(help="synth pool folder (passages-*.jsonl): the distractor passages")],
    out: Annotated[Path, typer.Option(help="output folder; one subfolder per method")],
    lengths: Annotated[
        str, typer.Option(help="comma-separated context lengths in tokens (4k = 4096)")
    ] = "4k,8k",
    depths: Annotated[
        str, typer.Option(help="comma-separated depths of the answer's passage, 0..1")
    ] = "0.1,0.5,0.9",
    checks: Annotated[
        str, typer.Option(help="multi-hop, consistency, update-latest, update-earliest, kv-retrieval")
    ] = "",
    exclude_from: Annotated[
        list[Path] | None,
        typer.Option(help="training dataset/pool folder whose nouns the checks must not use (repeatable)"),
    ] = None,
    samples: Annotated[int, typer.Option(help="items per cell (different nouns and values)")] = 1,
    hops: Annotated[int, typer.Option(help="links of the multi-hop chain (3: A->B->C->D)")] = 3,
    records: Annotated[int, typer.Option(help="key -> value records of kv-retrieval")] = 6,
    max_new_tokens: Annotated[int, typer.Option(help="answer budget")] = 24,
    seed: Annotated[int, typer.Option()] = 0,
    model: opt.BaseModel = "smollm2-135m",
    method: Annotated[str, typer.Option(help=f"comma-separated: {METHOD_HELP}")] = "truncate",
    experts: opt.MethodExperts = None,
    window: opt.Window = None,
    ratio: opt.Ratio = None,
    native_context: opt.NativeContext = None,
    sink: opt.Sink = None,
    memory_input: opt.MemoryInputOption = "shared",
    dtype: opt.Dtype = "auto",
    device: opt.Device = None,
    backend: opt.Backend = "hf",
) -> None:
    """Held-out synthetic checks (multi-hop, consistency, updates, key-value retrieval) over lengths x depths:
    synthetic.json, synthetic.jsonl (resumable) and synthetic.png per method."""
    from selfctx.checks import check_out_folder, parse_numbers
    from selfctx.eval.synthetic import CHECKS, SyntheticGrid, load_distractors, run_synthetic_checks
    from selfctx.synth.lengths import parse_length

    grid_lengths = [parse_length(v) for v in _csv(lengths)]
    grid_depths = parse_numbers(depths, "--depths")
    check_names = _csv(checks) or list(CHECKS)
    SyntheticGrid(  # checks its values (run_synthetic_checks builds the same one)
        lengths=tuple(grid_lengths),
        depths=tuple(grid_depths),
        checks=tuple(check_names),
        samples=samples,
        seed=seed,
        hops=hops,
        records=records,
        max_new_tokens=max_new_tokens,
        exclude_from=tuple(str(p) for p in exclude_from or ()),
    )
    check_out_folder(out)
    methods = _Methods(
        model,
        _csv(method),
        experts,
        window,
        ratio,
        dtype,
        device,
        backend,
        1,
        native_context,
        sink,
        memory_input,
    ).check()
    passages = load_distractors(pool)
    for m in methods.load():
        folder = out / m.name
        grid = {
            "lengths": grid_lengths,
            "depths": grid_depths,
            "checks": check_names,
            "samples": samples,
            "seed": seed,
            "exclude_from": [str(p.resolve()) for p in exclude_from or ()],
            "hops": hops,
            "records": records,
            "max_new_tokens": max_new_tokens,
        }
        settings = {"benchmark": "synthetic", "pool": str(pool.resolve()), "grid": grid}
        _bind_run(folder, m, {**settings, **_source_settings(m, model, dtype, backend)})
        summary = run_synthetic_checks(
            m,
            pool=passages,
            out=folder,
            lengths=grid_lengths,
            depths=grid_depths,
            checks=check_names,
            samples=samples,
            seed=seed,
            exclude_from=exclude_from or (),
            hops=hops,
            records=records,
            max_new_tokens=max_new_tokens,
        )
        typer.echo(
            json.dumps(
                {
                    "method": summary["method"],
                    "mean_score": summary["mean_score"],
                    "by_check": {c: f["mean_score"] for c, f in summary["by_check"].items()},
                    "held_out": summary["held_out"],
                }
            )
        )


@app.command("report")
def report(
    runs: Annotated[
        list[Path], typer.Argument(help="run folders written by `selfctx eval longbench/needle/synthetic`")
    ],
    out: Annotated[Path, typer.Option(help="report folder")],
) -> None:
    """Compare methods: report.md, report.json, score-vs-length and score-vs-ratio plots."""
    from selfctx.eval.report import build_report

    built = build_report(runs, out)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"wrote {', '.join(built['files'])}")

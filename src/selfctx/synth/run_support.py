"""What both sources of `selfctx synth` (the model's passage pool, the user's documents) run on: the backend
behind the call cache, the token counter, throughput, and the per-task state files that make runs resume."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfctx.errors import SelfctxError
from selfctx.llm.base import LLM, Completion

if TYPE_CHECKING:
    from selfctx.synth.pipeline import SynthConfig


def make_counter(cfg: SynthConfig) -> Any:
    from selfctx.synth.tokens import RegexTokenCounter, load_token_counter

    spec = cfg.tokenizer or cfg.model
    if spec == "regex":
        return RegexTokenCounter()
    try:
        return load_token_counter(spec)
    except SelfctxError:
        raise
    except Exception as exc:  # a served model name that is no local spec
        raise SelfctxError(
            f"cannot load a tokenizer for {spec!r} ({exc}): pass --tokenizer with a local model spec "
            "(e.g. smollm2-135m or a HF directory) so lengths are counted under the target tokenizer"
        ) from None


def counter_name(counter: Any) -> str:
    return str(getattr(counter, "name", type(counter).__name__))


class Throughput:
    """Generated tokens of non-cached calls, for the summary's tokens/s."""

    def __init__(self) -> None:
        self.tokens = 0
        self.calls = 0
        self.cached = 0

    def __call__(self, completions: list[Completion]) -> None:
        for c in completions:
            self.calls += 1
            if c.cached:
                self.cached += 1
            else:
                self.tokens += c.completion_tokens


def open_llm(cfg: SynthConfig, out: Path) -> LLM:
    """The configured backend behind the run's persistent call cache (<out>/cache)."""
    from selfctx.llm.factory import make_llm

    return make_llm(
        cfg.backend,
        cfg.model,
        base_url=cfg.base_url,
        concurrency=cfg.concurrency,
        timeout=cfg.timeout,
        max_retries=cfg.max_retries,
        cache_dir=out / "cache",
        **_backend_kwargs(cfg.backend, cfg.threads),
    )


def _backend_kwargs(backend: str, threads: int | None) -> dict[str, Any]:
    return {"n_threads": threads} if threads and backend == "llamacpp" else {}


def finished_tasks(state_dir: Path, tasks: Sequence[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Summaries of the tasks whose rows and done-marker are both written, and the tasks still to run."""
    summaries: dict[str, dict[str, Any]] = {}
    todo = []
    for task in tasks:
        marker = state_dir / f"{task}.json"
        if marker.is_file() and (state_dir / f"{task}.samples.jsonl").is_file():
            summaries[task] = json.loads(marker.read_text())
        else:
            todo.append(task)
    return summaries, todo


def shortfalls(tasks: dict[str, dict[str, Any]], out: Path | None = None) -> dict[str, str]:
    """task -> one line saying how far it fell short of its quota and why, for each task that did."""
    lines = {}
    for name, t in tasks.items():
        if t["kept"] >= t["wanted"]:
            continue
        details = t.get("drop_details") or {r: n for r, n in t["dropped"].items() if n}
        top = sorted(details.items(), key=lambda kv: -kv[1])[:3]
        why = ", ".join(f"{reason} {n}" for reason, n in top) or "none recorded"
        retries = t.get("retries", 0)
        budget = f", {retries} of them retries" if retries else ""
        line = (
            f"task {name} fell short: kept {t['kept']} of {t['wanted']} after {t['attempted']} tries"
            f"{budget}; main drops: {why}"
        )
        if out is not None:  # a finished task is not rerun: its state files must go for more tries to apply
            line += f" (more tries: delete {out / 'state' / name}.* and rerun with --set retry_per_missing=N)"
        lines[name] = line
    return lines

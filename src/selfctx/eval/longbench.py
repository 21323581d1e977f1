"""LongBench v1 (16 English datasets) through any Method, following the official pred.py:

- the official prompt template and maximum generation length per dataset (package data from
  THUDM/LongBench, MIT; see data/longbench_v1.json for the commit);
- middle truncation on token ids: a prompt longer than the limit keeps its first limit/2 and last limit/2
  tokens, each half decoded separately (default limit 15,500: the 16K setting; a method may lower it);
- the chat template, except for trec, triviaqa, samsum, lcc and repobench-p;
- greedy decoding; samsum stops at a newline (as the official script adds "\\n" to the eos ids).

Differences from pred.py, on purpose: the prompt is tokenized without special tokens when its length is
measured (pred.py counts a BOS for tokenizers that add one: at most one token of difference), and the
chat template is the tokenizer's own `apply_chat_template` instead of per-model hand-written formats.

Output in `out_dir`: `<dataset>.jsonl` in LongBench's prediction format (pred, answers, all_classes,
length, plus _id, input_tokens, memory_bytes), result.json / summary.json (selfctx.eval.scoring) and
results.md. Rows already predicted (same _id) are skipped, so an interrupted run resumes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfctx.errors import SelfctxError
from selfctx.eval.cells import CellLog, input_limit
from selfctx.eval.methods import Method, Prediction, Request
from selfctx.eval.scoring import ENGLISH_DATASETS, aggregate, read_jsonl, score_pred_dir
from selfctx.fsutil import write_text_atomic
from selfctx.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DEFAULT_MAX_LENGTH = 15_500
_SPLIT = "\u0000SELFCTX-CONTEXT-END\u0000"
REQUIRED_FIELDS = ("input", "context", "answers")


@functools.lru_cache(maxsize=1)
def official_config() -> dict[str, Any]:
    """Prompts, max new tokens and the no-chat-template list (package data)."""
    text = resources.files("selfctx.eval").joinpath("data/longbench_v1.json").read_text(encoding="utf-8")
    return json.loads(text)


def prompt_template(dataset: str) -> str:
    return official_config()["prompt"][dataset]


def max_new_tokens(dataset: str) -> int:
    return int(official_config()["max_new_tokens"][dataset])


def uses_chat_template(dataset: str) -> bool:
    return dataset not in official_config()["no_chat_template"]


def check_datasets(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in ENGLISH_DATASETS]
    if unknown:
        raise SelfctxError(
            f"unknown LongBench dataset(s) {', '.join(unknown)} (--datasets): pick from "
            f"{', '.join(ENGLISH_DATASETS)}"
        )
    return list(names)


def check_data_dir(data_dir: str | Path | None, names: Sequence[str]) -> None:
    """`data_dir` holds <dataset>.jsonl for each of `names` (None: the hub, checked when read)."""
    if data_dir is None:
        return
    if not Path(data_dir).is_dir():
        raise SelfctxError(
            f"--data-dir {data_dir} is not a folder: unpack LongBench's data.zip and pass its data/ folder"
        )
    missing = [n for n in names if not (Path(data_dir) / f"{n}.jsonl").is_file()]
    if missing:
        raise SelfctxError(
            f"--data-dir {data_dir} lacks {', '.join(f'{n}.jsonl' for n in missing)}: put LongBench's files "
            "there (from its data.zip) or pick other --datasets"
        )


# ----------------------------------------------------------------------------- data
def load_rows(dataset: str, *, data_dir: str | Path | None, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of one dataset from `<data_dir>/<dataset>.jsonl` (LongBench's data.zip layout), or from the hub
    (THUDM/LongBench) when `data_dir` is None."""
    if data_dir is not None:
        path = Path(data_dir) / f"{dataset}.jsonl"
        if not path.is_file():
            raise SelfctxError(
                f"{path} does not exist: put LongBench's {dataset}.jsonl there (from its data.zip)"
            )
        rows = read_jsonl(path)
    else:
        rows = _load_from_hub(dataset)
    for number, row in enumerate(rows, 1):
        missing = [k for k in REQUIRED_FIELDS if k not in row]
        if missing:
            raise SelfctxError(
                f"{dataset} row {number} lacks {', '.join(missing)}: LongBench rows need "
                "input, context, answers (and all_classes, length, _id)"
            )
    return rows[:limit] if limit is not None else rows


def _load_from_hub(dataset: str) -> list[dict[str, Any]]:
    try:
        from datasets import load_dataset

        return [dict(r) for r in load_dataset("THUDM/LongBench", dataset, split="test")]
    except Exception as exc:  # offline, or a datasets version without script support
        raise SelfctxError(
            f"cannot load THUDM/LongBench/{dataset} from the hub ({type(exc).__name__}: {str(exc)[:120]}): "
            "download LongBench's data.zip, unpack it and pass --data-dir"
        ) from None


# ----------------------------------------------------------------------------- prompts
def middle_truncate(tokenizer: PreTrainedTokenizerBase, text: str, limit: int) -> tuple[str, int]:
    """(text, its token count): unchanged when it fits, else the first and last limit//2 tokens."""
    text, kept, _ = _middle_truncate(tokenizer, text, limit)
    return text, kept


def _middle_truncate(tokenizer: PreTrainedTokenizerBase, text: str, limit: int) -> tuple[str, int, int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return text, len(ids), len(ids)
    half = limit // 2
    head = str(tokenizer.decode(ids[:half], skip_special_tokens=True))
    tail = str(tokenizer.decode(ids[-half:], skip_special_tokens=True))
    return head + tail, 2 * half, len(ids)


@dataclass(frozen=True)
class BuiltPrompt:
    request: Request
    prompt_tokens: int  # after truncation, before the chat template
    truncated: bool
    original_tokens: int = 0  # before truncation


def split_request(
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    after_context: str,
    limit: int,
    *,
    chat: bool,
    max_new_tokens: int,
    stop_at_newline: bool = False,
) -> BuiltPrompt:
    """Middle-truncate `text` to `limit` tokens, apply the chat template if `chat`, and split the result at
    the end of the context (`after_context` is the text that follows it: question and instructions)."""
    truncated_text, n_tokens, original = _middle_truncate(tokenizer, text, limit)
    cut = (
        len(truncated_text) - len(after_context)
        if truncated_text.endswith(after_context)
        else len(truncated_text)
    )
    if chat and getattr(tokenizer, "chat_template", None):
        rendered = str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": truncated_text[:cut] + _SPLIT + truncated_text[cut:]}],
                tokenize=False,
                add_generation_prompt=True,
            )
        )
        head, tail = rendered.split(_SPLIT)
        request = Request(
            head=head,
            tail=tail,
            max_new_tokens=max_new_tokens,
            add_special_tokens=False,
            stop_at_newline=stop_at_newline,
        )
    else:
        request = Request(
            head=truncated_text[:cut],
            tail=truncated_text[cut:],
            max_new_tokens=max_new_tokens,
            stop_at_newline=stop_at_newline,
        )
    return BuiltPrompt(
        request=request, prompt_tokens=n_tokens, truncated=truncated_text != text, original_tokens=original
    )


def build_request(
    dataset: str, row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, limit: int
) -> BuiltPrompt:
    """Format with the official template, then split_request with the dataset's official settings."""
    template = prompt_template(dataset)
    fields = {"context": row["context"], "input": row["input"]}
    return split_request(
        tokenizer,
        template.format(**fields),
        template.split("{context}", 1)[1].format(**fields),
        limit,
        chat=uses_chat_template(dataset),
        max_new_tokens=max_new_tokens(dataset),
        stop_at_newline=dataset == "samsum",
    )


# ----------------------------------------------------------------------------- runner
def _row_id(row: dict[str, Any], index: int) -> str:
    return str(row.get("_id") or f"row-{index}")


def predict_dataset(
    method: Method,
    dataset: str,
    rows: Sequence[dict[str, Any]],
    out_dir: Path,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 1,
) -> Path:
    """Predict every row not yet in `<out_dir>/<dataset>.jsonl`, appending one line per row."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{dataset}.jsonl"
    log = CellLog(path, "_id")
    limit = input_limit(method, max_new_tokens(dataset), max_length)
    todo = [(i, r) for i, r in enumerate(rows) if _row_id(r, i) not in log.done]
    bar = progress_bar(desc=f"{method.name} {dataset}", total=len(rows), unit="row")
    bar.update(len(rows) - len(todo))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        built = [build_request(dataset, row, method.tokenizer, limit) for _, row in chunk]
        predictions: list[Prediction] = method.generate([b.request for b in built])
        for (index, row), b, p in zip(chunk, built, predictions, strict=True):
            record = {
                "pred": p.text,
                "answers": row["answers"],
                "all_classes": row.get("all_classes"),
                "length": row.get("length", 0),
                "_id": _row_id(row, index),
                "input_tokens": p.input_tokens,
                "prompt_tokens": b.prompt_tokens,
                "original_tokens": b.original_tokens,
                "truncated": b.truncated,
                "memory_bytes": p.memory_bytes,
            }
            if p.info:
                record["info"] = p.info
            log.add(record)
            bar.update(1)
    bar.close()
    return path


def results_markdown(result: dict[str, Any], summary: dict[str, Any], *, title: str) -> str:
    lines = [f"# {title}", "", "| dataset | score |", "|---|---:|"]
    lines += [f"| {d} | {s if s is not None else '-'} |" for d, s in result.items()]
    lines += ["", "| category | score |", "|---|---:|"]
    lines += [f"| {c} | {s} |" for c, s in summary["categories"].items()]
    lines += [
        "",
        f"Mean over {summary['datasets']} datasets: **{summary['mean_over_datasets']}**; "
        f"mean of category averages: **{summary['mean_over_categories']}**.",
        "",
    ]
    return "\n".join(lines)


def run_longbench(
    method: Method,
    datasets: Iterable[str],
    out_dir: str | Path,
    *,
    data_dir: str | Path | None,
    limit: int | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Predict, then score the folder like the official eval.py; returns {"result", "summary"} over every
    dataset in the folder (what result.json holds)."""
    names = check_datasets(list(datasets))
    folder = Path(out_dir)
    for dataset in names:
        rows = load_rows(dataset, data_dir=data_dir, limit=limit)
        predict_dataset(method, dataset, rows, folder, max_length=max_length, batch_size=batch_size)
    scored = score_pred_dir(folder)
    # the table is exactly result.json: every dataset the folder holds (earlier runs may have added some)
    result = scored["result"]
    summary = aggregate(result)
    write_text_atomic(
        folder / "results.md", results_markdown(result, summary, title=f"LongBench: {method.name}")
    )
    return {"result": result, "summary": summary}

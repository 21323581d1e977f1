"""The kvpress runner's pure-Python parts: item files in, result files out (no torch, no kvpress, no selfctx).

`run_presses.py` runs in kvpress's own venv (kvpress pins transformers < 5.3, selfctx needs >= 5.17), so it
cannot import selfctx. What it shares with our evaluations lives here, in plain Python, where the main
environment's test (tests/benchmarks/test_kvpress_roundtrip.py) checks it against selfctx's own code:

- the needle-as-4-way-choice items that `benchmarks/harness_needle_mc.py` writes (`OUT/task/items.jsonl`:
  context, question, choices, label, depth) and the prompt the task YAML builds from them;
- lm-eval's context/continuation split (`selfctx.eval.needle_mc._encode_pair`), plus where the context ends
  inside the prompt's tokens (a press compresses the context alone; the question is read raw on top);
- the per-method `OUT/<method>/results.json` the harness writes (method, ratio, acc, acc_stderr, items,
  seconds, per_item), which the runner's rows extend with the memory held and the time per item;
- one table over every method folder of OUT, the harness's rows and the presses' side by side;
- generation requests (the generated-answer needle, the synthetic checks such as kv-retrieval), exported by
  `generation_requests.py` in the main environment as selfctx's own runners build them (head = up to the
  end of the context, tail = question and instructions), and the presses' predictions for them, which the
  same script feeds back through selfctx's runners so scoring and report files are selfctx's own.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROMPT = (
    "{context}\n\nQuestion: {question}\nAnswer:"  # the harness task YAML's doc_to_text (needle_mc.PROMPT)
)
ITEM_KEYS = ("context", "question", "choices", "label", "depth")
RESULT_KEYS = ("method", "ratio", "acc", "acc_stderr", "items", "seconds", "per_item")  # the harness's keys
RESULTS_FILE = "results.json"  # per method folder, as the harness writes it
ROWS_FILE = "rows.jsonl"  # the runner's per-item rows while a method is under way (resume)
SUMMARY_JSON = "results-kvpress.json"  # every method folder of OUT in one table (the harness keeps its own)
SUMMARY_MD = "results-kvpress.md"
REQUESTS_FILE = "requests.jsonl"  # generation requests, one per grid cell (generation_requests.py export)
EXPORT_FILE = "export.json"  # what built them: the benchmark and its grid (collect replays it)
SETTINGS_FILE = "settings.json"  # per method folder once its predictions are complete: press, memory, time
REQUEST_KEYS = ("key", "head", "tail", "max_new_tokens", "add_special_tokens", "stop_at_newline")

Encode = Callable[[str], Sequence[int]]  # text -> token ids, no special tokens (lm-eval's tok_encode)


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """The items of a harness items.jsonl, in file order; refuses a row without the task's fields."""
    items = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ITEM_KEYS if k not in row]
        if missing:
            raise ValueError(f"{path}:{number} lacks {', '.join(missing)}: pass the harness's items.jsonl")
        if not 0 <= int(row["label"]) < len(row["choices"]):
            raise ValueError(f"{path}:{number}: label {row['label']} is not an index into its choices")
        items.append(row)
    if not items:
        raise ValueError(f"{path} holds no item")
    return items


def items_digest(path: str | Path) -> str:
    """sha256 of the item file's bytes: results name the exact items they were scored on."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def encode_pair(encode: Encode, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation, and the continuation's
    tokens are what the whole string adds to the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = list(encode(context + continuation))
    head = list(encode(context))
    return head, whole[len(head) :]


@dataclass(frozen=True)
class ChoiceRequest:
    """One item as token ids: `context_ids + question_ids` is the prompt's head exactly as lm-eval encodes
    it (the same ids the harness methods read); `continuations[k]` is choice k's continuation."""

    context_ids: list[int]
    question_ids: list[int]
    continuations: list[list[int]]
    label: int
    depth: float

    @property
    def head(self) -> list[int]:
        return self.context_ids + self.question_ids


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choice_request(encode: Encode, item: dict[str, Any]) -> ChoiceRequest:
    """The item's prompt split where its context ends: the context's own tokens as far as they agree with
    the prompt's (a merge across the boundary moves to the question part), so nothing is re-tokenized."""
    prompt = PROMPT.format(context=item["context"], question=item["question"])
    pairs = [encode_pair(encode, prompt, " " + str(choice)) for choice in item["choices"]]
    head = pairs[0][0]
    cut = _common_prefix(list(encode(item["context"])), head)
    if cut == 0 or cut >= len(head):
        raise ValueError("the item's context and question could not be told apart in the prompt's tokens")
    return ChoiceRequest(
        context_ids=head[:cut],
        question_ids=head[cut:],
        continuations=[c for _, c in pairs],
        label=int(item["label"]),
        depth=float(item["depth"]),
    )


def compression_ratio(ratio: int) -> float:
    """kvpress's `compression_ratio` (share of KV pairs removed) for a memory of 1/ratio of the context."""
    if ratio < 1:
        raise ValueError(f"ratio {ratio} must be at least 1")
    return 1.0 - 1.0 / ratio


def method_name(press: str, ratio: int) -> str:
    """`kvpress-<press>-r<ratio>`, beside the harness's `experts-<name>-r<ratio>` and `untrained-r<ratio>`."""
    return f"kvpress-{press}-r{ratio}"


def accuracy(per_item: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Mean correctness and lm-eval's standard error of that mean (sample standard deviation / sqrt n)."""
    n = len(per_item)
    acc = sum(bool(r["correct"]) for r in per_item) / n
    return acc, math.sqrt(acc * (1 - acc) / max(1, n - 1))


def result_record(
    method: str, ratio: int, per_item: Sequence[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A method's results.json: the harness's keys first (its summary reads them), then the memory held
    (mean bytes of KV kept when the answer is scored) and the seconds per item; `extra` adds settings."""
    if not per_item:
        raise ValueError(f"{method}: no item was scored")
    acc, stderr = accuracy(per_item)
    seconds = math.fsum(float(r["seconds"]) for r in per_item)
    memory = [float(r["memory_bytes"]) for r in per_item]
    return {
        "method": method,
        "ratio": ratio,
        "acc": acc,
        "acc_stderr": stderr,
        "items": len(per_item),
        "seconds": round(seconds, 1),
        "per_item": list(per_item),
        "seconds_per_item": round(seconds / len(per_item), 3),
        "memory_bytes": round(math.fsum(memory) / len(memory)),
        **extra,
    }


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def write_result(folder: str | Path, record: dict[str, Any]) -> Path:
    """`folder/results.json`, written whole (a stop never leaves half a file)."""
    missing = [k for k in RESULT_KEYS if k not in record]
    if missing:
        raise ValueError(f"a result lacks {', '.join(missing)}")
    path = Path(folder) / RESULTS_FILE
    _write_json(path, record)
    return path


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Per-item rows already scored (a torn last line is dropped: that item runs again)."""
    path = Path(folder) / ROWS_FILE
    rows: list[dict[str, Any]] = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def append_row(folder: str | Path, row: dict[str, Any]) -> None:
    path = Path(folder) / ROWS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


def read_results(out: str | Path) -> dict[str, dict[str, Any]]:
    """Every `OUT/<method>/results.json` with the harness's keys (the harness's methods and the presses')."""
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(out).glob(f"*/{RESULTS_FILE}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and all(k in record for k in RESULT_KEYS):
            results[str(record["method"])] = record
    return results


def _order(name: str) -> tuple[int, str]:
    for rank, prefix in enumerate(("truncate", "full", "untrained", "experts", "kvpress")):
        if name.startswith(prefix):
            return rank, name
    return 5, name


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: accuracy, memory held (MiB) and seconds per item for every method (- where a harness
    method did not record it)."""
    lines = [
        "| method | ratio | accuracy (%) | ± stderr | items | memory held (MiB) | s / item |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in sorted(results, key=_order):
        r = results[name]
        memory = f"{r['memory_bytes'] / 2**20:.2f}" if r.get("memory_bytes") is not None else "-"
        per_item = r.get("seconds_per_item")
        if per_item is None and r.get("items"):
            per_item = round(
                float(r["seconds"]) / int(r["items"]), 3
            )  # the harness's total, loading included
        lines.append(
            f"| {name} | {r['ratio']} | {100 * r['acc']:.1f} | {100 * r['acc_stderr']:.1f} | {r['items']} "
            f"| {memory} | {per_item if per_item is not None else '-'} |"
        )
    if any(r.get("seconds_per_item") is None for r in results.values()):
        lines += [
            "",
            "Rows without memory are the harness's (it records none); their s / item is its total time "
            "over the items, lm-eval's overhead included. kvpress rows: KV bytes held when the first answer "
            "token is predicted, and time per item without model loading.",
        ]
    return "\n".join(lines) + "\n"


def write_summary(out: str | Path) -> str:
    """OUT/results-kvpress.{json,md}: the one table over every method folder of OUT."""
    results = read_results(out)
    table = summary_table(results)
    _write_json(Path(out) / SUMMARY_JSON, results)
    (Path(out) / SUMMARY_MD).write_text(table, encoding="utf-8")
    return table


def request_key(head: str, tail: str, max_new_tokens: int) -> str:
    """What identifies a generation request on both sides: the texts and the budget, hashed."""
    return hashlib.sha256(json.dumps([head, tail, max_new_tokens]).encode("utf-8")).hexdigest()[:20]


def request_record(
    head: str,
    tail: str,
    max_new_tokens: int,
    *,
    add_special_tokens: bool = True,
    stop_at_newline: bool = False,
) -> dict[str, Any]:
    """One line of requests.jsonl (the fields of selfctx.eval.methods.Request, plus its key)."""
    return {
        "key": request_key(head, tail, max_new_tokens),
        "head": head,
        "tail": tail,
        "max_new_tokens": max_new_tokens,
        "add_special_tokens": add_special_tokens,
        "stop_at_newline": stop_at_newline,
    }


def read_requests(path: str | Path) -> list[dict[str, Any]]:
    requests = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in REQUEST_KEYS if k not in row]
        if missing or row["key"] != request_key(row["head"], row["tail"], row["max_new_tokens"]):
            raise ValueError(f"{path}:{number} is not a request written by generation_requests.py export")
        requests.append(row)
    if not requests:
        raise ValueError(f"{path} holds no request")
    return requests


def first_line_if(text: str, stop_at_newline: bool) -> str:
    """A "\n" stop emulated after generation, as selfctx's CompressedMethod does."""
    if stop_at_newline and text.strip("\n"):
        return text.split("\n", 1)[0]
    return text


def write_settings(folder: str | Path, settings: dict[str, Any]) -> Path:
    path = Path(folder) / SETTINGS_FILE
    _write_json(path, settings)
    return path

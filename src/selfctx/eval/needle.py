"""Needle in a haystack, plus RULER-style variants, over a grid of context lengths x depths.

Haystack: a folder of .txt files (e.g. Paul Graham's essays) or a synth pool (jsonl rows with a `text`
field anywhere under the folder), concatenated and repeated until long enough.
Placement: the haystack is cut to the requested token length minus the needles, and each needle goes in
at the sentence boundary nearest its requested depth, measured in tokens of the model's tokenizer.
Scoring: no LLM judge. `score` = share of the expected strings found in the answer (case-insensitive);
for the classic needle, `rouge_recall` = ROUGE-L recall of the needle's answer in the prediction.

Variants (RULER, Hsieh et al. 2024):
  classic           one user-given sentence (default: the San Francisco needle), a question about it
  single            one "special magic number for <key>" needle, ask for its value
  multi-key         several keys, one asked (the others are distractors)
  multi-value       one key with several values, ask for all
  multi-query       several keys, ask for all of their values
  variable-tracking a chain VAR A = 12345, VAR B = VAR A, ...; ask for every variable holding 12345
"""

from __future__ import annotations

import bisect
import json
import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfctx.errors import SelfctxError
from selfctx.eval.cells import CellLog, input_limit
from selfctx.eval.longbench import split_request
from selfctx.eval.methods import Method
from selfctx.fsutil import write_json_atomic
from selfctx.progress import progress_bar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VARIANTS = ("classic", "single", "multi-key", "multi-value", "multi-query", "variable-tracking")
CLASSIC_NEEDLE = (
    "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
)
CLASSIC_QUESTION = "What is the best thing to do in San Francisco?"
CLASSIC_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"
PROMPT = (
    "Below is a long document with some facts hidden in it. Read it and answer the question that "
    "follows.\n\n{context}\n\nQuestion: {question} Answer using only the document.\nAnswer:"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_KEY_WORDS = (
    "amber",
    "brisk",
    "cobalt",
    "dusty",
    "eager",
    "fuzzy",
    "gentle",
    "hollow",
    "ivory",
    "jolly",
    "kind",
    "lunar",
    "mellow",
    "noble",
    "olive",
    "plucky",
    "quiet",
    "rusty",
    "silver",
    "tidy",
)
_KEY_NOUNS = (
    "anchor",
    "badger",
    "canyon",
    "dolphin",
    "ember",
    "falcon",
    "glacier",
    "harbor",
    "island",
    "jungle",
    "kettle",
    "lantern",
    "meadow",
    "nectar",
    "orchard",
    "pebble",
    "quartz",
    "river",
)


# ----------------------------------------------------------------------------- haystack
def load_haystack(source: str | Path) -> str:
    """All text of a folder of .txt files, or of the `text` fields of the jsonl rows of a synth pool."""
    folder = Path(source)
    if not folder.is_dir():
        raise SelfctxError(f"haystack {folder} is not a folder: pass a folder of .txt files or a synth pool")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.rglob("*.txt"))]
    if not texts:
        for path in sorted(folder.rglob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if isinstance(row, dict) and isinstance(row.get("text"), str):
                        texts.append(row["text"])
    texts = [t.strip() for t in texts if t.strip()]
    if not texts:
        raise SelfctxError(
            f"{folder} holds no .txt file and no jsonl row with a 'text' field: nothing to fill "
            "the haystack with"
        )
    return "\n\n".join(texts)


# ----------------------------------------------------------------------------- needles
@dataclass(frozen=True)
class NeedleTask:
    needles: list[str]  # sentences to hide, in order
    depths: list[float]  # requested depth of each, 0..1
    question: str
    expected: list[str]  # strings the answer must contain
    reference: str  # the answer text for ROUGE-L recall


def _keys(rng: random.Random, n: int) -> list[str]:
    pairs = rng.sample([f"{a}-{b}" for a in _KEY_WORDS for b in _KEY_NOUNS], n)
    return pairs


def _value(rng: random.Random, taken: set[str]) -> str:
    while True:
        value = str(rng.randint(1_000_000, 9_999_999))
        if value not in taken:
            taken.add(value)
            return value


def make_task(
    variant: str,
    depth: float,
    rng: random.Random,
    *,
    n_keys: int = 4,
    n_values: int = 3,
    n_queries: int = 2,
    chain: int = 4,
    needle: str = CLASSIC_NEEDLE,
    question: str = CLASSIC_QUESTION,
    answer: str = CLASSIC_ANSWER,
) -> NeedleTask:
    """One needle task; `depth` places the needle that is asked about (others go at random depths)."""
    if variant == "classic":
        return NeedleTask([needle], [depth], question, [answer], answer)
    taken: set[str] = set()

    def magic(key: str, value: str) -> str:
        return f"One of the special magic numbers for {key} is: {value}."

    if variant == "single":
        key, value = _keys(rng, 1)[0], _value(rng, taken)
        return NeedleTask(
            [magic(key, value)], [depth], f"What is the special magic number for {key}?", [value], value
        )
    if variant in ("multi-key", "multi-query"):
        keys = _keys(rng, n_keys)
        values = [_value(rng, taken) for _ in keys]
        depths = [depth] + [rng.random() for _ in keys[1:]]
        asked = 1 if variant == "multi-key" else min(n_queries, n_keys)
        asked_names = ", ".join(keys[:asked])
        q = (
            f"What is the special magic number for {keys[0]}?"
            if asked == 1
            else f"What are all the special magic numbers for {asked_names}?"
        )
        return NeedleTask(
            [magic(k, v) for k, v in zip(keys, values, strict=True)],
            depths,
            q,
            values[:asked],
            " ".join(values[:asked]),
        )
    if variant == "multi-value":
        key = _keys(rng, 1)[0]
        values = [_value(rng, taken) for _ in range(n_values)]
        depths = [depth] + [rng.random() for _ in values[1:]]
        return NeedleTask(
            [magic(key, v) for v in values],
            depths,
            f"What are all the special magic numbers for {key}?",
            values,
            " ".join(values),
        )
    if variant == "variable-tracking":
        names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(chain)]
        value = _value(rng, taken)
        sentences = [f"VAR {names[0]} = {value}."] + [
            f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, chain)
        ]
        depths = [depth + (1 - depth) * i / chain for i in range(chain)]  # in order, from `depth` on
        return NeedleTask(
            sentences,
            depths,
            f"Find all variables that are assigned the value {value}.",
            names,
            " ".join(names),
        )
    raise SelfctxError(f"unknown needle variant {variant!r}: pick one of {', '.join(VARIANTS)}")


# ----------------------------------------------------------------------------- placement
@dataclass(frozen=True)
class Haystack:
    """The context with its needles, and where they ended up (depth measured in tokens)."""

    context: str
    placed_depths: list[float]
    body_tokens: int


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def place_needles(
    tokenizer: PreTrainedTokenizerBase, haystack: str, length: int, task: NeedleTask
) -> Haystack:
    """Cut the haystack to `length` tokens minus the needles, then insert each needle at the sentence
    boundary nearest its depth (by tokens)."""
    needle_tokens = sum(len(_encode(tokenizer, " " + n)) + 1 for n in task.needles)
    body_tokens = length - needle_tokens
    if body_tokens < 16:
        raise SelfctxError(
            f"context length {length} is too short for needles of {needle_tokens} tokens: "
            "ask for longer contexts"
        )
    # enough haystack text: repeat it until it holds body_tokens tokens (~4 chars a token, checked below)
    text = haystack
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    while len(encoded["input_ids"]) < body_tokens:
        text = text + "\n\n" + haystack
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    body = text[: offsets[body_tokens - 1][1]]
    starts = [start for start, _ in offsets[:body_tokens]]
    inner = [m.end() for m in _SENTENCE_END.finditer(body) if m.end() < len(body)]
    # end the body on a whole sentence (so depth 100% follows one) unless that loses more than 5%
    if inner and body_tokens - bisect.bisect_left(starts, inner[-1]) <= max(64, body_tokens // 20):
        body = body[: inner[-1]].rstrip()
        body_tokens = bisect.bisect_left(starts, len(body))
        inner = [b for b in inner if b < len(body)]
    boundaries = sorted({0, len(body), *inner})
    boundary_tokens = [bisect.bisect_left(starts, b) for b in boundaries]
    chosen: list[tuple[int, int, str]] = []  # (char position, token index, needle)
    for needle, depth in zip(task.needles, task.depths, strict=True):
        target = max(0.0, min(1.0, depth)) * body_tokens
        i = min(range(len(boundaries)), key=lambda j: (abs(boundary_tokens[j] - target), j))
        chosen.append((boundaries[i], boundary_tokens[i], needle))
    pieces: list[str] = []
    last = 0
    for position, _, needle in sorted(chosen, key=lambda c: c[0]):  # stable: same spot keeps task order
        pieces.append(body[last:position])
        at_end = position >= len(body)
        pieces.append((" " if at_end else "") + needle + ("" if at_end else " "))
        last = position
    pieces.append(body[last:])
    return Haystack(
        context="".join(pieces),
        placed_depths=[t / body_tokens for _, t, _ in chosen],
        body_tokens=body_tokens,
    )


# ----------------------------------------------------------------------------- scoring
def string_match(prediction: str, expected: Sequence[str]) -> float:
    """Share of the expected strings found in the prediction, case-insensitive (RULER string_match_all)."""
    low = prediction.lower()
    return sum(1 for e in expected if e.lower() in low) / len(expected) if expected else 0.0


def rouge_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of the reference in the prediction, through the same package as LongBench's scorer."""
    from selfctx.eval.metrics import rouge_l_scores

    return rouge_l_scores(prediction, reference)["r"]


# ----------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class NeedleGrid:
    lengths: tuple[int, ...]
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    variant: str = "classic"
    samples: int = 1
    seed: int = 0
    max_new_tokens: int = 32
    max_length: int = 1_000_000  # the runner's own cap; a method's input_limit may lower it
    options: dict[str, Any] = field(default_factory=dict)  # make_task keyword arguments

    def __post_init__(self) -> None:
        """A grid that cannot run is refused when it is made (before any model loads or folder is made)."""
        from selfctx.checks import check_fractions, check_positive

        if self.variant not in VARIANTS:
            raise SelfctxError(
                f"unknown needle variant {self.variant!r} (--variant): pick one of {', '.join(VARIANTS)}"
            )
        if not self.lengths:
            raise SelfctxError("--lengths is empty: give comma-separated context lengths in tokens")
        for length in self.lengths:
            check_positive(length, "--lengths")
        check_fractions(self.depths, "--depths (needle depths)")
        check_positive(self.samples, "--samples")
        check_positive(self.max_new_tokens, "--max-new-tokens")
        check_positive(self.max_length, "max_length")


def run_needle(method: Method, haystack: str, grid: NeedleGrid, out_dir: str | Path) -> dict[str, Any]:
    """Every (length, depth, sample) cell once: needle.jsonl (resumable), results.json, heatmap.png."""
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log = CellLog(folder / "needle.jsonl", "cell")
    cells = [(n, d, s) for n in grid.lengths for d in grid.depths for s in range(grid.samples)]
    limit = input_limit(method, grid.max_new_tokens, grid.max_length)
    bar = progress_bar(desc=f"{method.name} needle", total=len(cells), unit="cell")
    for length, depth, sample in cells:
        cell = f"{grid.variant}/{length}/{depth:g}/{sample}"
        if cell in log.done:
            bar.update(1)
            continue
        rng = random.Random(f"{grid.seed}/{cell}")
        task = make_task(grid.variant, depth, rng, **grid.options)
        placed = place_needles(method.tokenizer, haystack, length, task)
        after = PROMPT.split("{context}", 1)[1].format(question=task.question)
        built = split_request(
            method.tokenizer,
            PROMPT.format(context=placed.context, question=task.question),
            after,
            limit,
            chat=True,
            max_new_tokens=grid.max_new_tokens,
        )
        prediction = method.generate([built.request])[0]
        log.add(
            {
                "cell": cell,
                "length": length,
                "depth": depth,
                "sample": sample,
                "variant": grid.variant,
                "placed_depths": placed.placed_depths,
                "context_tokens": len(_encode(method.tokenizer, placed.context)),
                "prompt_tokens": built.prompt_tokens,
                "original_tokens": built.original_tokens,
                "truncated": built.truncated,
                "pred": prediction.text,
                "expected": task.expected,
                "score": string_match(prediction.text, task.expected),
                "rouge_recall": rouge_recall(prediction.text, task.reference),
                "memory_bytes": prediction.memory_bytes,
                "input_tokens": prediction.input_tokens,
            }
        )
        bar.update(1)
    bar.close()
    rows = [log.done[f"{grid.variant}/{n}/{d:g}/{s}"] for n, d, s in cells]
    summary = summarize(rows, grid, method.name)
    write_json_atomic(folder / "results.json", summary)
    heatmap(summary, folder / "heatmap.png")
    return summary


def summarize(rows: Sequence[dict[str, Any]], grid: NeedleGrid, method_name: str) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    for n in grid.lengths:
        table[str(n)] = {}
        for d in grid.depths:
            cell = [r["score"] for r in rows if r["length"] == n and r["depth"] == d]
            table[str(n)][f"{d:g}"] = round(sum(cell) / len(cell), 4)
    scores = [r["score"] for r in rows]
    return {
        "method": method_name,
        "variant": grid.variant,
        "grid": asdict(grid),
        "mean_score": round(sum(scores) / len(scores), 4) if scores else None,
        "mean_rouge_recall": round(sum(r["rouge_recall"] for r in rows) / len(rows), 4) if rows else None,
        "score_by_length_depth": table,
        "memory_bytes_by_length": {
            str(n): max(r["memory_bytes"] for r in rows if r["length"] == n) for n in grid.lengths
        },
    }


def heatmap(summary: dict[str, Any], path: Path) -> None:
    """Depth (rows) x context length (columns), green = found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summary["score_by_length_depth"]
    lengths = list(table)
    depths = list(next(iter(table.values())))
    values = [[table[n][d] for n in lengths] for d in depths]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(depths)), [f"{float(d) * 100:.0f}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"{summary['method']}: {summary['variant']} (mean {summary['mean_score']})")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)

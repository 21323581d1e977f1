"""Held-out synthetic long-context checks: facts from templates + WordNet nouns, hidden among real passages.

Each item is built like a selfctx synth training sample (the same assembler, `selfctx.synth.assemble`):
short fact passages are the "relevant" passages, distractors come from a synth passage pool, the chat
sample is filled to a token length (+-1%, measured with the method's tokenizer) and every fact passage sits
at a chosen depth. No LLM writes anything here, so answers are exact and building an item is cheap.

Checks:
  multi-hop        a chain "the code of A is the code of B", ..., "the code of D is 1234567" spread over the
                   context (in shuffled order), plus a decoy chain ending in another number; ask for A's
                   code. `hops` links (3: A->B->C->D). The cell depth is where the number is stated.
  consistency      one fact ("the X was first exhibited in Oslo") at the cell depth, asked at the end
  update-latest    the fact at the cell depth, a later passage changes it ("later moved to Lima");
                   ask where it is now (the later value)
  update-earliest  the same two passages; ask for the first value
  kv-retrieval     `records` key -> value records ("the X is filed under number 1234567") spread over the
                   context; ask for the one at the cell depth (memory-augmented retrieval)

Scoring: `score` = share of the expected strings in the answer (case-insensitive, as the needle grid),
`confused` = the answer holds a wrong value of the same item (the decoy number, the other city, another
record), `exact` = the answer's first line, normalised, equals the answer, `rouge_recall` = ROUGE-L recall
of the answer.

Held out from training: fact nouns are drawn with a seed stream of their own ("selfctx-eval-synthetic") and
never from (1) the nouns of the distractor pool and (2) every noun named in the folders passed as
`exclude_from` (a synth dataset folder: its samples' `nouns`, its pool passages' `noun`, read from every
*.jsonl under it). The excluded-noun count and the folders are written to synthetic.json.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfctx.errors import SelfctxError
from selfctx.eval.cells import CellLog, input_limit
from selfctx.eval.longbench import split_request
from selfctx.eval.methods import Method
from selfctx.eval.needle import rouge_recall, string_match
from selfctx.fsutil import write_json_atomic
from selfctx.progress import progress_bar
from selfctx.synth.assemble import PART_SEPARATOR, assemble_sample
from selfctx.synth.lengths import bucket_of
from selfctx.synth.nouns import draw_nouns
from selfctx.synth.seeds import derive_rng
from selfctx.synth.tokens import HFTokenCounter
from selfctx.synth.types import Passage, SampleDraft

if TYPE_CHECKING:
    from selfctx.synth.tokens import TokenCounter

CHECKS = ("multi-hop", "consistency", "update-latest", "update-earliest", "kv-retrieval")
SEED_STREAM = "selfctx-eval-synthetic"  # training draws nouns from other streams
ROWS_FILE = "synthetic.jsonl"
SUMMARY_FILE = "synthetic.json"
PLOT_FILE = "synthetic.png"
INSTRUCTION = "Answer the question using only the passages above. Reply with the answer only, in a few words."
CITIES = (
    "Oslo",
    "Lima",
    "Cairo",
    "Dublin",
    "Kyoto",
    "Quito",
    "Nairobi",
    "Lisbon",
    "Hanoi",
    "Perth",
    "Havana",
    "Vienna",
    "Bogota",
    "Tunis",
    "Riga",
    "Manila",
    "Zagreb",
    "Accra",
    "Seoul",
    "Prague",
    "Dakar",
    "Austin",
    "Bergen",
    "Porto",
)


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True)
class CheckItem:
    """One check's facts, where each goes (0 = first passage, 1 = last), and what the answer must say."""

    check: str
    facts: tuple[str, ...]
    fact_nouns: tuple[str, ...]  # the noun each fact is about (kept out of the distractors)
    depths: tuple[float, ...]
    question: str
    answer: str
    expected: tuple[str, ...]
    wrong: tuple[str, ...] = ()  # values of the same item that are not the answer
    roles: tuple[str, ...] = ()  # what each fact is (link, value, decoy, original, update, record, asked)


def _numbers(rng: random.Random, n: int) -> list[str]:
    return [str(v) for v in rng.sample(range(1_000_000, 10_000_000), n)]


def _spread(n: int, depth: float) -> list[float]:
    """n depths evenly spread over [0, 1], the one nearest `depth` replaced by it (returned first)."""
    if n == 1:
        return [depth]
    spots = [i / (n - 1) for i in range(n)]
    nearest = min(range(n), key=lambda i: abs(spots[i] - depth))
    return [depth] + [s for i, s in enumerate(spots) if i != nearest]


def make_item(
    check: str,
    depth: float,
    rng: random.Random,
    exclude: frozenset[str],
    *,
    hops: int = 3,
    records: int = 6,
    decoy: bool = True,
) -> CheckItem:
    """One held-out item of `check`; `depth` places the passage the answer is read from."""
    if not 0.0 <= depth <= 1.0:
        raise SelfctxError(f"depth {depth} must lie between 0 (first passage) and 1 (last passage)")
    if check == "multi-hop":
        if hops < 1:
            raise SelfctxError(f"hops must be at least 1 (got {hops}): 1 link is A->B, 3 links A->B->C->D")
        chains = 2 if decoy else 1
        nouns = draw_nouns(rng, chains * (hops + 1), exclude)
        values = _numbers(rng, chains)
        facts, roles, fact_nouns = [], [], []
        for c in range(chains):
            chain = nouns[c * (hops + 1) : (c + 1) * (hops + 1)]
            for i in range(hops):
                facts.append(
                    f"The secret code of the {chain[i]} is the same as the secret code of the {chain[i + 1]}."
                )
                roles.append("link" if c == 0 else "decoy")
                fact_nouns.append(chain[i])
            facts.append(f"The secret code of the {chain[-1]} is {values[c]}.")
            roles.append("value" if c == 0 else "decoy")
            fact_nouns.append(chain[-1])
        # the asked chain: its number at `depth`, its links spread over the context in shuffled order
        spots = _spread(hops + 1, depth)
        link_spots = spots[1:]
        rng.shuffle(link_spots)
        depths = [*link_spots, spots[0]] + [rng.random() for _ in range(len(facts) - hops - 1)]
        return CheckItem(
            check,
            tuple(facts),
            tuple(fact_nouns),
            tuple(depths),
            f"What is the secret code of the {nouns[0]}?",
            values[0],
            (values[0],),
            tuple(values[1:]),
            tuple(roles),
        )
    if check in ("consistency", "update-latest", "update-earliest"):
        noun = draw_nouns(rng, 1, exclude)[0]
        first, later = rng.sample(CITIES, 2)
        original = f"The {noun} was first exhibited in {first}."
        if check == "consistency":
            return CheckItem(
                check,
                (original,),
                (noun,),
                (depth,),
                f"In which city was the {noun} first exhibited?",
                first,
                (first,),
                (),
                ("original",),
            )
        update = f"Years later the {noun} was moved to {later}, where it has been kept ever since."
        start = min(depth, 0.8)  # room after it for the change
        latest = check == "update-latest"
        return CheckItem(
            check,
            (original, update),
            (noun, noun),
            (start, start + (1.0 - start) / 2),
            f"In which city is the {noun} kept now?"
            if latest
            else f"In which city was the {noun} first exhibited?",
            later if latest else first,
            (later if latest else first,),
            (first if latest else later,),
            ("original", "update"),
        )
    if check == "kv-retrieval":
        if records < 1:
            raise SelfctxError(f"records must be at least 1 (got {records})")
        nouns = draw_nouns(rng, records, exclude)
        values = _numbers(rng, records)
        records_text = tuple(
            f"Archive record: the {n} is filed under number {v}." for n, v in zip(nouns, values, strict=True)
        )
        return CheckItem(
            check,
            records_text,
            tuple(nouns),
            tuple(_spread(records, depth)),
            f"Under which number is the {nouns[0]} filed?",
            values[0],
            (values[0],),
            tuple(values[1:]),
            ("asked",) + ("record",) * (records - 1),
        )
    raise SelfctxError(f"unknown synthetic check {check!r}: pick from {', '.join(CHECKS)}")


def draft_of(item: CheckItem, counter: TokenCounter) -> tuple[SampleDraft, tuple[float, ...], list[int]]:
    """The item as a synth draft. Facts go to the assembler decoys last (so they never push the asked
    chain off its depths), each group latest-depth first (the assembler's collision rule moves a
    later-listed passage earlier, so order in the context follows depth); `order[k]` = the fact listed
    k-th."""
    roles = item.roles or ("",) * len(item.facts)
    order = sorted(range(len(item.facts)), key=lambda i: (roles[i] == "decoy", -item.depths[i]))
    relevant = tuple(
        Passage(
            id=f"synthetic-{item.check}-{i}",
            noun=item.fact_nouns[i],
            genre="fact",
            text=item.facts[i],
            n_tokens=counter.count(item.facts[i]),
        )
        for i in order
    )
    draft = SampleDraft(
        task=f"synthetic-{item.check}",
        relevant=relevant,
        instruction=INSTRUCTION,
        question=f"Question: {item.question}",
        answer=item.answer,
        nouns=tuple(sorted(set(item.fact_nouns))),
    )
    return draft, tuple(item.depths[i] for i in order), order


# ----------------------------------------------------------------------------- held-out nouns
def nouns_in(folder: str | Path) -> set[str]:
    """Every noun a synth dataset or pool folder names: `nouns` of sample rows, `noun` of passage rows."""
    root = Path(folder)
    if not root.exists():
        raise SelfctxError(f"{root} does not exist: pass a synth dataset or pool folder to exclude")
    files = [root] if root.is_file() else sorted(root.rglob("*.jsonl"))
    found: set[str] = set()
    for path in files:
        with path.open(encoding="utf-8") as f:
            for line in f:
                if '"noun' not in line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(row, dict):
                    continue
                if isinstance(row.get("noun"), str):
                    found.add(row["noun"].strip().lower())
                nouns = row.get("nouns")
                if isinstance(nouns, list):
                    found.update(str(n).strip().lower() for n in nouns)
    return found


def load_distractors(source: str | Path | Sequence[Passage]) -> list[Passage]:
    """Passages of a synth pool folder (or a synth output folder holding pool/), or given passages."""
    if not isinstance(source, (str, Path)):
        passages = list(source)
    else:
        from selfctx.synth.corpus import load_pool

        folder = Path(source)
        if not folder.is_dir():
            raise SelfctxError(f"pool {folder} is not a folder: pass a synth pool (passages-*.jsonl)")
        passages = load_pool(folder) or (load_pool(folder / "pool") if (folder / "pool").is_dir() else [])
    passages = [p for p in passages if p.text.strip()]
    if not passages:
        raise SelfctxError(
            f"no finished passages in {source}: pass a synth pool folder (write one with selfctx synth)"
        )
    return passages


# ----------------------------------------------------------------------------- grid
@dataclass(frozen=True)
class SyntheticGrid:
    lengths: tuple[int, ...]
    depths: tuple[float, ...] = (0.1, 0.5, 0.9)
    checks: tuple[str, ...] = CHECKS
    samples: int = 1
    seed: int = 0
    hops: int = 3
    records: int = 6
    decoy: bool = True
    max_new_tokens: int = 24
    max_length: int = 1_000_000  # the runner's own cap; a method's input_limit may lower it
    allow_repeat: bool = True  # small pools: distractors may repeat (recorded per row)
    exclude_from: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """A grid that cannot run is refused when it is made (before any model loads or folder is made)."""
        from selfctx.checks import check_fractions, check_positive

        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown or not self.checks:
            raise SelfctxError(
                f"unknown synthetic check(s) {', '.join(unknown) or '(none)'} (--checks): pick from "
                f"{', '.join(CHECKS)}"
            )
        if not self.lengths:
            raise SelfctxError("--lengths is empty: give comma-separated context lengths in tokens, like 4k")
        for length in self.lengths:
            check_positive(length, "--lengths")
        check_fractions(self.depths, "--depths (depths of the answer's passage)")
        check_positive(self.samples, "--samples")
        check_positive(self.hops, "--hops")
        check_positive(self.records, "--records")
        check_positive(self.max_new_tokens, "--max-new-tokens")
        check_positive(self.max_length, "max_length")
        for source in self.exclude_from:
            if not Path(source).exists():
                raise SelfctxError(
                    f"--exclude-from {source} does not exist: pass a synth dataset or pool folder to exclude"
                )

    def fingerprint(self) -> str:
        """What makes a row's content: a folder written under another fingerprint is not resumed."""
        keys = {k: v for k, v in asdict(self).items() if k not in ("lengths", "depths", "checks", "samples")}
        keys.pop("max_length")
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def _first_line(text: str) -> str:
    line = text.strip().split("\n", 1)[0]
    return re.sub(r"[^\w\s]", "", line).strip().lower()


def score_answer(prediction: str, item: CheckItem) -> dict[str, Any]:
    low = prediction.lower()
    return {
        "score": string_match(prediction, item.expected),
        "exact": float(_first_line(prediction) == _first_line(item.answer)),
        "confused": any(w.lower() in low for w in item.wrong),
        "rouge_recall": rouge_recall(prediction, item.answer),
    }


def run_synthetic_checks(
    method: Method,
    *,
    pool: str | Path | Sequence[Passage],
    out: str | Path,
    lengths: Sequence[int],
    depths: Sequence[float] = (0.1, 0.5, 0.9),
    checks: Sequence[str] = CHECKS,
    samples: int = 1,
    seed: int = 0,
    exclude_from: Sequence[str | Path] = (),
    hops: int = 3,
    records: int = 6,
    decoy: bool = True,
    max_new_tokens: int = 24,
    max_length: int = 1_000_000,
    allow_repeat: bool = True,
) -> dict[str, Any]:
    """Every (check, length, depth, sample) cell once through `method`: synthetic.jsonl (resumable),
    synthetic.json (summary the report reads) and synthetic.png in `out`."""
    grid = SyntheticGrid(
        lengths=tuple(int(n) for n in lengths),
        depths=tuple(float(d) for d in depths),
        checks=tuple(checks),
        samples=samples,
        seed=seed,
        hops=hops,
        records=records,
        decoy=decoy,
        max_new_tokens=max_new_tokens,
        max_length=max_length,
        allow_repeat=allow_repeat,
        exclude_from=tuple(str(p) for p in exclude_from),
    )
    return run_grid(method, load_distractors(pool), grid, out)


def run_grid(method: Method, pool: Sequence[Passage], grid: SyntheticGrid, out: str | Path) -> dict[str, Any]:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    log = CellLog(folder / ROWS_FILE, "cell")
    fingerprint = grid.fingerprint()
    stale = {r.get("fingerprint") for r in log.done.values()} - {fingerprint}
    if stale:
        raise SelfctxError(
            f"{folder} holds synthetic rows built with other settings (seed, hops, records or exclusions): "
            "pass another --out folder, or delete it to start over"
        )
    # a private copy: generation enables padding on the shared Rust backend, which would pad count_batch
    counter = HFTokenCounter(copy.deepcopy(method.tokenizer))
    # counts under THIS method's tokenizer (a pool records the writer's counts)
    texts = [p.text.strip() for p in pool]
    pool = [
        replace(p, text=t, n_tokens=n)
        for p, t, n in zip(pool, texts, counter.count_batch(texts), strict=True)
    ]
    exclude = {p.noun.strip().lower() for p in pool}
    for source in grid.exclude_from:
        exclude |= nouns_in(source)
    excluded = frozenset(exclude)
    limit = input_limit(method, grid.max_new_tokens, grid.max_length)
    cells = [
        (c, n, d, s)
        for c in grid.checks
        for n in grid.lengths
        for d in grid.depths
        for s in range(grid.samples)
    ]
    bar = progress_bar(desc=f"{method.name} synthetic", total=len(cells), unit="cell")
    for check, length, depth, sample in cells:
        cell = f"{check}/{length}/{depth:g}/{sample}"
        if cell in log.done:
            bar.update(1)
            continue
        row = run_cell(
            method, pool, grid, check, length, depth, sample, counter=counter, exclude=excluded, limit=limit
        )
        log.add({**row, "fingerprint": fingerprint})
        bar.update(1)
    bar.close()
    rows = [log.done[f"{c}/{n}/{d:g}/{s}"] for c, n, d, s in cells]
    summary = summarize(rows, grid, method.name, excluded_nouns=len(excluded))
    write_json_atomic(folder / SUMMARY_FILE, summary)
    plot(summary, folder / PLOT_FILE)
    return summary


def run_cell(
    method: Method,
    pool: Sequence[Passage],
    grid: SyntheticGrid,
    check: str,
    length: int,
    depth: float,
    sample: int,
    *,
    counter: TokenCounter,
    exclude: frozenset[str],
    limit: int,
) -> dict[str, Any]:
    """Build one item, assemble it to `length` tokens, ask the method, score the answer."""
    cell = f"{check}/{length}/{depth:g}/{sample}"
    rng = derive_rng(SEED_STREAM, grid.seed, cell)
    item = make_item(check, depth, rng, exclude, hops=grid.hops, records=grid.records, decoy=grid.decoy)
    draft, sorted_depths, order = draft_of(item, counter)
    built_sample = assemble_sample(
        draft,
        pool,
        length,
        counter,
        rng,
        depths=sorted_depths,
        allow_repeat=grid.allow_repeat,
        model=str(counter.name),
        seed=grid.seed,
        bucket=bucket_of(length),
    )
    n_passages = built_sample.n_distractors + len(item.facts)
    gold = [0] * len(item.facts)  # 1-based context position of fact i
    for slot, fact in zip(built_sample.gold_positions, order, strict=True):
        gold[fact] = slot
    user = built_sample.messages[0]["content"]
    after = PART_SEPARATOR + draft.instruction + PART_SEPARATOR + draft.question
    built = split_request(method.tokenizer, user, after, limit, chat=True, max_new_tokens=grid.max_new_tokens)
    prediction = method.generate([built.request])[0]
    return {
        "cell": cell,
        "check": check,
        "length": length,
        "depth": depth,
        "sample": sample,
        "seed": grid.seed,
        "question": item.question,
        "facts": list(item.facts),
        "roles": list(item.roles),
        "nouns": list(draft.nouns),
        "requested_depths": list(item.depths),
        "gold_positions": gold,
        "placed_depths": [(g - 1) / max(1, n_passages - 1) for g in gold],
        "n_passages": n_passages,
        "token_count": built_sample.token_count,
        "repeated_distractors": built_sample.repeated_distractors,
        "prompt_tokens": built.prompt_tokens,
        "original_tokens": built.original_tokens,
        "truncated": built.truncated,
        "pred": prediction.text,
        "answer": item.answer,
        "expected": list(item.expected),
        "wrong": list(item.wrong),
        **score_answer(prediction.text, item),
        "memory_bytes": prediction.memory_bytes,
        "input_tokens": prediction.input_tokens,
        "info": prediction.info,
    }


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def summarize(
    rows: Sequence[dict[str, Any]], grid: SyntheticGrid, method_name: str, *, excluded_nouns: int = 0
) -> dict[str, Any]:
    by_check: dict[str, Any] = {}
    for check in grid.checks:
        mine = [r for r in rows if r["check"] == check]
        by_check[check] = {
            "mean_score": _mean(r["score"] for r in mine),
            "mean_exact": _mean(r["exact"] for r in mine),
            "confused_rate": _mean(float(r["confused"]) for r in mine),
            "mean_rouge_recall": _mean(r["rouge_recall"] for r in mine),
            "score_by_length": {
                str(n): _mean(r["score"] for r in mine if r["length"] == n) for n in grid.lengths
            },
            "score_by_length_depth": {
                str(n): {
                    f"{d:g}": _mean(r["score"] for r in mine if r["length"] == n and r["depth"] == d)
                    for d in grid.depths
                }
                for n in grid.lengths
            },
        }
    return {
        "method": method_name,
        "grid": asdict(grid),
        "held_out": {
            "seed_stream": SEED_STREAM,
            "seed": grid.seed,
            "excluded_nouns": excluded_nouns,
            "exclude_from": list(grid.exclude_from),
        },
        "mean_score": _mean(r["score"] for r in rows),
        "mean_exact": _mean(r["exact"] for r in rows),
        "by_check": by_check,
        "score_by_length": {
            str(n): _mean(r["score"] for r in rows if r["length"] == n) for n in grid.lengths
        },
        "memory_bytes_by_length": {
            str(n): max(r["memory_bytes"] for r in rows if r["length"] == n) for n in grid.lengths
        },
    }


def plot(summary: dict[str, Any], path: Path) -> None:
    """Score x100 against context length, one line per check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for check, figures in summary["by_check"].items():
        xs = [int(n) for n, v in figures["score_by_length"].items() if v is not None]
        ax.plot(xs, [100 * figures["score_by_length"][str(x)] for x in xs], marker="o", label=check)
    ax.set_xscale("log", base=2)
    ax.set_ylim(-5, 105)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("score x100")
    ax.set_title(f"{summary['method']}: synthetic checks (mean {summary['mean_score']})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


__all__ = [
    "CHECKS",
    "CheckItem",
    "SyntheticGrid",
    "load_distractors",
    "make_item",
    "nouns_in",
    "run_grid",
    "run_synthetic_checks",
    "score_answer",
]

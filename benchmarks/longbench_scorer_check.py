"""Check `selfctx eval score` against THUDM/LongBench's own metric functions, row by row.

For each of the 16 English datasets this writes prediction files (<dataset>.jsonl: pred, answers,
all_classes, length) whose predictions and answers are cut from real English text (the needle haystack) in
the shapes each metric meets — exact and partial answers, case and punctuation changes, extra lines,
sentences split at ".", empty and dot-only predictions, class names inside text, numbers, "Paragraph N",
code lines behind comments and backticks — then scores every row with selfctx's metrics and with the
official `metrics.py`, and every dataset with `selfctx eval score`'s aggregation and the official
`eval.py` `scorer` / `scorer_e`. Any row or dataset that differs is printed.

The official files are not part of selfctx: pass a checkout of https://github.com/THUDM/LongBench (its
LongBench/ folder, holding metrics.py and eval.py). They import jieba, fuzzywuzzy and rouge:

    pip install jieba fuzzywuzzy rouge==1.0.1
    python benchmarks/longbench_scorer_check.py --official PATH/LongBench \\
        --text ../shared/data/paul_graham_essays --rows 400
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

TREC_CLASSES = [
    "Abbreviation",
    "Expression abbreviated",
    "Animal",
    "Organ of body",
    "Color",
    "Invention, book and other creative piece",
    "Other entity",
    "Food",
    "Sport",
    "Description of something",
    "Definition of something",
    "Manner of an action",
    "Reason",
    "Group or organization of persons",
    "Individual",
    "Title of a person",
    "City",
    "Country",
    "Mountain",
    "Other location",
    "State",
    "Date",
    "Distance, linear measure",
    "Lasting time of something",
    "Number of something",
    "Other number",
    "Percent, fraction",
    "Size, area and volume",
    "Temperature",
    "Weight",
]
CODE_LINES = [
    "return a + b",
    "x = foo(bar, 3)",
    "for (int i = 0; i < n; i++) {",
    "self.items.append(item)",
    "if err != nil { return err }",
    "public static void main(String[] args) {",
    "print(f'{name}: {value}')",
    "const total = items.reduce((s, x) => s + x, 0);",
]


def sentences(text_dir: Path) -> list[str]:
    texts = [p.read_text(encoding="utf-8", errors="ignore") for p in sorted(text_dir.glob("*.txt"))]
    found = re.split(r"(?<=[.!?])\s+", " ".join(" ".join(texts).split()))
    return [s for s in found if 3 <= len(s.split()) <= 40]


def vary(rng: random.Random, text: str) -> str:
    """A prediction made from a reference: the shapes real model outputs take."""
    words = text.split()
    kind = rng.randrange(10)
    if kind == 0:
        return text
    if kind == 1:
        return text.upper() if rng.random() < 0.5 else text.lower()
    if kind == 2:
        return " ".join(words[: max(1, len(words) // 2)])
    if kind == 3:
        return f"The answer is {text.rstrip('.')}, I think."
    if kind == 4:
        return "\n\n" + text + "\nExplanation: " + " ".join(rng.sample(words, len(words)))
    if kind == 5:
        return ""
    if kind == 6:
        return rng.choice(["...", ".", " . . ", "\n"])
    if kind == 7:
        return " ".join(rng.sample(words, len(words)))
    if kind == 8:
        return text.replace(" ", ", ", 2).replace(".", "!")
    return " ".join(w for w in words if rng.random() < 0.7) + "."


def rows_for(dataset: str, rng: random.Random, pool: list[str], n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        all_classes = None
        if dataset in ("gov_report", "qmsum", "multi_news", "samsum"):
            answers = [" ".join(rng.sample(pool, rng.randint(1, 6)))]
            pred = (
                " ".join(vary(rng, s) for s in rng.sample(answers[0].split(". "), 1))
                + " "
                + vary(rng, rng.choice(pool))
            )
            pred = pred if rng.random() < 0.8 else vary(rng, answers[0])
        elif dataset in ("trec", "lsht"):
            all_classes = TREC_CLASSES
            answers = [rng.choice(TREC_CLASSES)]
            named = rng.sample(TREC_CLASSES, rng.randint(0, 3)) + ([answers[0]] if rng.random() < 0.5 else [])
            pred = "\n".join(rng.sample(named, len(named))) if rng.random() < 0.5 else " or ".join(named)
            pred = ("\n" if rng.random() < 0.3 else "") + pred
        elif dataset == "passage_count":
            answers = [str(rng.randint(1, 30))]
            pred = rng.choice(
                [answers[0], f"There are {rng.randint(1, 30)} unique paragraphs.", f"{answers[0]} or 12", ""]
            )
        elif dataset == "passage_retrieval_en":
            answers = [f"Paragraph {rng.randint(1, 30)}"]
            other = f"Paragraph {rng.randint(1, 30)}"
            pred = rng.choice([answers[0], other, "The answer is Paragraph 3, 13.", ""])
        elif dataset in ("lcc", "repobench-p"):
            answers = [rng.choice(CODE_LINES)]
            lines = [rng.choice(["# comment", "```python", "// note", ""])] if rng.random() < 0.5 else []
            lines.append(vary(rng, rng.choice([answers[0], rng.choice(CODE_LINES)])))
            pred = "\n".join(lines + [rng.choice(CODE_LINES)])
        else:  # the QA datasets (qa_f1), triviaqa included
            sentence = rng.choice(pool).split()
            start = rng.randrange(len(sentence))
            answers = [" ".join(sentence[start : start + rng.randint(1, 6)])]
            if rng.random() < 0.3:
                answers.append(" ".join(rng.choice(pool).split()[:3]))
            pred = vary(rng, rng.choice(answers) if rng.random() < 0.8 else rng.choice(pool))
        length = rng.randint(500, 12000)
        rows.append({"pred": pred, "answers": answers, "all_classes": all_classes, "length": length})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--official", type=Path, required=True, help="THUDM/LongBench's LongBench/ folder")
    parser.add_argument("--text", type=Path, required=True, help="a folder of .txt files to cut texts from")
    parser.add_argument("--rows", type=int, default=400, help="rows per dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("metrics.py", "eval.py"):
        if not (args.official / name).is_file():
            parser.error(f"{args.official} has no {name}: pass the LongBench/ folder of a checkout")
    pool = sentences(args.text)
    if len(pool) < 50:
        parser.error(f"{args.text} yields {len(pool)} sentences: pass a folder of English .txt files")

    sys.path.insert(0, str(args.official))
    official = importlib.import_module("eval")  # the official eval.py (its main is guarded)
    from selfctx.eval.scoring import ENGLISH_DATASETS, read_jsonl, score_pred_dir, score_rows

    rng = random.Random(args.seed)
    bad_rows = 0
    bad_sets = 0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for dataset in ENGLISH_DATASETS:
            rows = rows_for(dataset, rng, pool, args.rows)
            with (folder / f"{dataset}.jsonl").open("w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        ours = score_pred_dir(folder)["result"]
        ours_e = score_pred_dir(folder, e=True)["result"]
        print(f"{'dataset':22} {'rows':>5} {'row diffs':>9} {'selfctx':>8} {'official':>8} {'E equal':>7}")
        for dataset in ENGLISH_DATASETS:
            rows = read_jsonl(folder / f"{dataset}.jsonl")
            mine = score_rows(dataset, rows)
            metric = official.dataset2metric[dataset]
            diffs = 0
            for row, value in zip(rows, mine, strict=True):
                pred = row["pred"]
                if dataset in ("trec", "triviaqa", "samsum", "lsht"):
                    pred = pred.lstrip("\n").split("\n")[0]
                theirs = 0.0
                for truth in row["answers"]:
                    theirs = max(theirs, metric(pred, truth, all_classes=row["all_classes"]))
                if value != theirs:
                    diffs += 1
                    if diffs <= 3:
                        print(f"  {dataset}: {row['pred']!r} / {row['answers']}: {value} vs {theirs}")
            preds = [r["pred"] for r in rows]
            answers = [r["answers"] for r in rows]
            classes = rows[-1]["all_classes"]
            total = official.scorer(dataset, preds, answers, classes)
            total_e = official.scorer_e(dataset, preds, answers, [r["length"] for r in rows], classes)
            e_equal = all(ours_e[dataset][k] == total_e[k] for k in total_e)
            bad_rows += diffs
            bad_sets += (ours[dataset] != total) + (not e_equal)
            figures = f"{ours[dataset]:8.2f} {total:8.2f} {str(e_equal):>7}"
            print(f"{dataset:22} {len(rows):5d} {diffs:9d} {figures}")
    print(f"rows differing: {bad_rows}; dataset scores differing: {bad_sets}")
    return 1 if bad_rows or bad_sets else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""LongBench v1 metrics, written from the behaviour of THUDM/LongBench `metrics.py` / `eval.py` (MIT).

Every function takes (prediction, ground_truth, all_classes) and returns a score in [0, 1]; the dataset
score is the mean over rows of the max over reference answers, x100, rounded to two decimals
(see selfctx.eval.scoring). Official quirks are reproduced on purpose, so numbers stay comparable with
published tables; each is named where it happens.
"""

from __future__ import annotations

import difflib
import functools
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

Metric = Callable[[str, str, Sequence[str]], float]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NUMBER = re.compile(r"\d+")
_PARAGRAPH = re.compile(r"Paragraph (\d+)")

# Datasets whose prediction the official scorer cuts to its first line (after stripping leading newlines).
FIRST_LINE_DATASETS = frozenset({"trec", "triviaqa", "samsum", "lsht"})


def normalize_answer(text: str) -> str:
    """SQuAD-style normalization in the official order: lowercase, drop ASCII punctuation, replace the
    articles a/an/the (whole words) by spaces, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction_tokens: Sequence[str], truth_tokens: Sequence[str]) -> float:
    """Bag-of-tokens F1 (multiset overlap)."""
    overlap = sum((Counter(prediction_tokens) & Counter(truth_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(prediction_tokens)
    recall = overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, ground_truth: str, all_classes: Sequence[str] = ()) -> float:
    """QA F1 over whitespace tokens of the normalized answers."""
    return token_f1(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


@functools.lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])


def rouge_l_scores(prediction: str, ground_truth: str) -> dict[str, float]:
    """ROUGE-L {"f", "p", "r"} exactly as the official scorer gets it: the `rouge` package (pltrdy, 1.0.1),
    `Rouge().get_scores([pred], [ref], avg=True)["rouge-l"]`, all zero where it raises (an empty or
    all-dot hypothesis, texts too long for its recursive LCS).

    Its quirks are the official numbers' quirks: texts are split into sentences at ".", words at spaces,
    case and punctuation are kept ("cat," != "cat"), lengths count distinct words, and the union-LCS is
    summed over reference sentences; F = 2PR / (P + R + 1e-8)."""
    try:
        scores = _rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]
    except Exception:  # the official `except: return 0.0`
        return {"f": 0.0, "p": 0.0, "r": 0.0}
    return {key: float(scores[key]) for key in ("f", "p", "r")}


def rouge_l(prediction: str, ground_truth: str, all_classes: Sequence[str] = ()) -> float:
    """ROUGE-L F as the official `rouge_score` computes it (see rouge_l_scores)."""
    return rouge_l_scores(prediction, ground_truth)["f"]


def classification(prediction: str, ground_truth: str, all_classes: Sequence[str] = ()) -> float:
    """Class names found (as substrings) in the prediction; 1/k when the truth is among the k matches.

    Official rules kept: a matched class that is a proper substring of the ground truth is dropped (so
    "location" does not compete with "other location"), but the drop loop removes items from the list it
    iterates over, which skips the element right after each removal. The official difflib fallback never
    runs (its guard compares a list with 0), so a prediction naming no class scores 0.
    """
    matches = [name for name in all_classes if name in prediction]
    index = 0
    while index < len(matches):  # the official `for ... : list.remove(...)` walk, skip included
        term = matches[index]
        if term in ground_truth and term != ground_truth:
            matches.remove(term)
        index += 1
    if ground_truth in matches:
        return 1.0 / len(matches)
    return 0.0


def _number_share(prediction: str, target: str) -> float:
    numbers = _NUMBER.findall(prediction)
    if not numbers:
        return 0.0
    return sum(1 for n in numbers if n == target) / len(numbers)


def count(prediction: str, ground_truth: str, all_classes: Sequence[str] = ()) -> float:
    """Share of the numbers in the prediction that equal the true count ("3 or 4" scores 0.5)."""
    return _number_share(prediction, str(ground_truth))


def retrieval(prediction: str, ground_truth: str, all_classes: Sequence[str] = ()) -> float:
    """Share of the numbers in the prediction equal to the paragraph number in "Paragraph N"."""
    found = _PARAGRAPH.findall(ground_truth)
    if not found:
        raise ValueError(f"retrieval ground truth {ground_truth!r} has no 'Paragraph N'")
    return _number_share(prediction, found[0])


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's `fuzz.ratio` on its pure-difflib path (what the official numbers used), without the
    dependency: 100 for equal strings (even empty ones), 0 when one is empty, else difflib's ratio x100
    through Python's round (half to even)."""
    if a == b:
        return 100
    if not a or not b:
        return 0
    return int(round(100 * difflib.SequenceMatcher(None, a, b).ratio()))


def code_similarity(prediction: str, ground_truth: str, all_classes: Sequence[str] = ()) -> float:
    """fuzz_ratio (difflib, rounded to an integer percent) between the truth and the first predicted line
    that holds no backtick, '#' or '//' (after stripping leading newlines); "" when every line does."""
    first_code_line = ""
    for line in prediction.lstrip("\n").split("\n"):
        if "`" not in line and "#" not in line and "//" not in line:
            first_code_line = line
            break
    return fuzz_ratio(first_code_line, ground_truth) / 100


DATASET_METRIC: dict[str, Metric] = {
    "narrativeqa": qa_f1,
    "qasper": qa_f1,
    "multifieldqa_en": qa_f1,
    "hotpotqa": qa_f1,
    "2wikimqa": qa_f1,
    "musique": qa_f1,
    "gov_report": rouge_l,
    "qmsum": rouge_l,
    "multi_news": rouge_l,
    "trec": classification,
    "triviaqa": qa_f1,
    "samsum": rouge_l,
    "passage_count": count,
    "passage_retrieval_en": retrieval,
    "lcc": code_similarity,
    "repobench-p": code_similarity,
}


def postprocess(dataset: str, prediction: str) -> str:
    """The scorer-side post-processing: first line only for trec, triviaqa, samsum (and lsht)."""
    if dataset in FIRST_LINE_DATASETS:
        return prediction.lstrip("\n").split("\n")[0]
    return prediction


def score_row(
    dataset: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None
) -> float:
    """One row's score in [0, 1]: post-process, then the max over reference answers."""
    metric = DATASET_METRIC[dataset]
    prediction = postprocess(dataset, prediction)
    return max((metric(prediction, truth, all_classes or ()) for truth in answers), default=0.0)

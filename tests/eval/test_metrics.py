"""LongBench metrics against hand-worked values, including the official quirks."""

from __future__ import annotations

import pytest

from selfctx.eval import metrics as m


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Cat's  hat, a BIG one!", "cats hat big one"),  # lower, punctuation, articles, spaces
        ("A banana", "banana"),  # 'an' inside a word stays
        ("the-end", "theend"),  # punctuation goes first, so 'the' is no longer a word
        ("An apple. THE end", "apple end"),
        ("  ", ""),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert m.normalize_answer(text) == expected


def test_qa_f1_hand_worked() -> None:
    # tokens [paris, france] vs [paris]: P=1/2, R=1 -> F1 = 2/3
    assert m.qa_f1("Paris, France.", "paris") == pytest.approx(2 / 3)
    # 'a' dropped; [b, b] vs [b, b, c]: overlap 2, P=1, R=2/3 -> 0.8
    assert m.qa_f1("a b b", "b b c") == pytest.approx(0.8)
    assert m.qa_f1("The", "the") == 0.0  # nothing left after normalization
    assert m.qa_f1("", "x") == 0.0
    assert m.qa_f1("Yes!", "yes") == 1.0


def test_classification_official_rules() -> None:
    classes = ["location", "other location", "person"]
    # 'location' is a proper substring of the truth: dropped, so the match is unique.
    assert m.classification("other location", "other location", classes) == 1.0
    # two classes named, truth among them -> 1/2
    assert m.classification("person or location", "person", classes) == 0.5
    assert m.classification("person or location", "other location", classes) == 0.0
    # no class named -> 0 (the official difflib fallback is dead code)
    assert m.classification("a mountain", "location", classes) == 0.0


def test_classification_keeps_the_official_skip_after_removal() -> None:
    # matches [a, ab, abc]; removing 'a' shifts 'ab' under the iterator, which then skips it:
    # matches end as [ab, abc] and the score is 1/2 (a clean filter would give 1.0).
    assert m.classification("abc", "abc", ["a", "ab", "abc"]) == 0.5


def test_count_and_retrieval() -> None:
    assert m.count("There are 3 or 4 paragraphs", "3") == 0.5
    assert m.count("17", "17") == 1.0
    assert m.count("none", "3") == 0.0
    assert m.retrieval("Paragraph 12", "Paragraph 12") == 1.0
    assert m.retrieval("Paragraph 1 and Paragraph 12", "Paragraph 12") == 0.5
    assert m.retrieval("Paragraph 2", "Paragraph 12") == 0.0  # whole numbers, not substrings
    with pytest.raises(ValueError):
        m.retrieval("Paragraph 2", "the second one")


def test_code_similarity_first_code_line() -> None:
    # leading newlines stripped, comment line skipped, exact match -> 1
    assert m.code_similarity("\n\n# set x\nx = 1\ny = 2", "x = 1") == 1.0
    # backtick line skipped; difflib: 'return a+b' (10) vs 'return a + b' (12), 10 matching chars
    # -> 2*10/22 = 90.9 -> fuzz rounds to 91 -> 0.91
    assert m.code_similarity("```python\nreturn a+b", "return a + b") == 0.91
    # every line is a comment: the prediction becomes "" and scores 0
    assert m.code_similarity("// todo\n# later", "x = 1") == 0.0


def test_rouge_l_hand_worked_as_the_official_rouge_package_scores() -> None:
    # hyp 3 distinct words, ref "the cat sat on the mat" 5 distinct words (the package counts distinct
    # words), LCS 3: P = 1, R = 3/5, F = 2PR/(P+R+1e-8) = 0.75 (rouge-score would give 2/3: 6 ref tokens)
    assert m.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(0.75)
    # case and punctuation are kept: only "sat" matches of "The", "Cat,", "sat" -> P = R = F = 1/3
    # (rouge-score lowercases and splits at punctuation: 1.0)
    assert m.rouge_l("The Cat, sat.", "the cat sat") == pytest.approx(1 / 3)
    # sentences split at ".": the union LCS over the reference's two sentences
    # hyp "b a . c" -> sentences ["b a", "c"]; ref "a b . c d" -> ["a b", "c d"]; LCS unions 1 + 1 = 2
    # distinct words: hyp {b, a, c} = 3, ref {a, b, c, d} = 4 -> P = 2/3, R = 1/2, F = 4/7
    assert m.rouge_l("b a . c", "a b . c d") == pytest.approx(4 / 7)
    # the package raises on an empty hypothesis (also one of dots only): the official scorer gives 0
    assert m.rouge_l("", "the cat") == 0.0 and m.rouge_l("...", "the cat") == 0.0


def test_fuzz_ratio_is_fuzzywuzzys_difflib_path() -> None:
    assert m.fuzz_ratio("", "") == 100 and m.fuzz_ratio("", "x") == 0
    # difflib: 'return a+b' (10) vs 'return a + b' (12), 10 matching -> 2*10/22 = 90.9 -> 91
    assert m.fuzz_ratio("return a+b", "return a + b") == 91
    assert m.fuzz_ratio("ab", "ac") == 50 and m.fuzz_ratio("a", "ab") == 67  # 66.67 -> 67
    # Python's round takes halves to even: 2*1/16 = 12.5 -> 12, 2*3/16 = 37.5 -> 38
    assert m.fuzz_ratio("a", "abcdefghijklmno") == 12
    assert m.fuzz_ratio("abc", "abcdefghijklm") == 38


def test_first_line_postprocessing_only_where_official() -> None:
    assert m.postprocess("triviaqa", "\n\nParis\nQuestion: next") == "Paris"
    assert m.postprocess("samsum", "A met B.\nDialogue: ...") == "A met B."
    assert m.postprocess("hotpotqa", "Paris\nmore") == "Paris\nmore"
    # trec: the second line's class would otherwise split the credit
    classes = ["Location", "Person"]
    assert m.score_row("trec", "Location\nPerson", ["Location"], classes) == 1.0
    assert m.score_row("hotpotqa", "paris\nrome", ["Paris"], None) == pytest.approx(2 / 3)


def test_score_row_takes_the_max_over_answers() -> None:
    assert m.score_row("hotpotqa", "New York", ["York", "New York City", "new york"], None) == 1.0
    assert m.score_row("passage_count", "5", ["4"], None) == 0.0
    assert set(m.DATASET_METRIC) == {
        "narrativeqa",
        "qasper",
        "multifieldqa_en",
        "hotpotqa",
        "2wikimqa",
        "musique",
        "gov_report",
        "qmsum",
        "multi_news",
        "trec",
        "triviaqa",
        "samsum",
        "passage_count",
        "passage_retrieval_en",
        "lcc",
        "repobench-p",
    }

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.synth.chunking import chunk_documents, chunk_text, read_documents
from selfctx.synth.tokens import HFTokenCounter, RegexTokenCounter, TokenCounter


def words(text: str) -> list[str]:
    return text.split()


def make_doc(rng: random.Random, n_paragraphs: int = 12) -> str:
    vocab = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "stone",
        "3.14",
        "don't",
        "café",
        "(note)",
        '"quoted."',
    ]
    paragraphs = []
    for _ in range(n_paragraphs):
        sentences = [
            " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 25))) + "."
            for _ in range(rng.randint(1, 8))
        ]
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def counters() -> list[TokenCounter]:
    from selfctx.tiny import tiny_tokenizer

    return [RegexTokenCounter(), HFTokenCounter(tiny_tokenizer(), name="bytes")]


@pytest.mark.parametrize("counter", counters(), ids=["regex", "bytes"])
def test_chunks_fit_are_measured_and_lose_no_text(counter: TokenCounter) -> None:
    rng = random.Random(0)
    for max_tokens in (40, 120, 400):
        text = make_doc(rng)
        chunks = chunk_text(text, counter, max_tokens)
        assert all(0 < n <= max_tokens for _, n in chunks)
        assert all(counter.count(c) == n for c, n in chunks)  # n_tokens is the measured count
        assert [w for c, _ in chunks for w in words(c)] == words(text)  # nothing lost, nothing reordered


def test_paragraph_boundaries_are_preferred() -> None:
    counter = RegexTokenCounter()
    paragraphs = [f"Paragraph {i} has a few words in it. And a second sentence." for i in range(10)]
    chunks = chunk_text("\n\n".join(paragraphs), counter, max_tokens=40)
    for chunk, _ in chunks:
        assert chunk.startswith("Paragraph") and chunk.endswith("sentence.")  # whole paragraphs only
    assert len(chunks) < len(paragraphs)  # small paragraphs are packed together


def test_long_paragraphs_split_at_sentences_then_words_then_characters() -> None:
    counter = RegexTokenCounter()
    paragraph = " ".join(f"Sentence number {i} ends here." for i in range(30))
    chunks = chunk_text(paragraph, counter, max_tokens=12)
    assert all(re.fullmatch(r"(Sentence number \d+ ends here\.\s?)+", c) for c, _ in chunks)
    long_sentence = " ".join(["word"] * 50) + "."
    assert all(n <= 7 for _, n in chunk_text(long_sentence, counter, 7))
    from selfctx.tiny import tiny_tokenizer

    bytes_counter = HFTokenCounter(tiny_tokenizer())
    giant = "x" * 100
    assert [len(c) for c, _ in chunk_text(giant, bytes_counter, 30)] == [30, 30, 30, 10]
    with pytest.raises(SelfctxError):
        chunk_text("a", counter, 0)


def test_read_documents_txt_md_jsonl(tmp_path: Path) -> None:
    (tmp_path / "b.md").write_text("# Title\n\nBody text.")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("Plain text.")
    (tmp_path / "docs.jsonl").write_text(
        json.dumps({"id": "x1", "text": "First."}) + "\n\n" + json.dumps({"content": "Second."}) + "\n"
    )
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    (tmp_path / "empty.txt").write_text("  \n")
    docs = list(read_documents(tmp_path))
    assert [(d.id, d.text) for d in docs] == [
        ("b.md", "# Title\n\nBody text."),
        ("x1", "First."),
        ("docs.jsonl:3", "Second."),
        ("sub/a.txt", "Plain text."),
    ]
    chunks = chunk_documents(docs, RegexTokenCounter(), 100)
    assert [(c.doc_id, c.index) for c in chunks] == [
        ("b.md", 0),
        ("x1", 0),
        ("docs.jsonl:3", 0),
        ("sub/a.txt", 0),
    ]


def test_read_documents_errors_say_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(SelfctxError, match="does not exist"):
        list(read_documents(tmp_path / "missing"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(SelfctxError, match=r"no \.txt, \.md or \.jsonl"):
        list(read_documents(tmp_path))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(SelfctxError, match=r"bad\.jsonl:2 is not valid JSON"):
        list(read_documents(tmp_path))
    (tmp_path / "bad.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(SelfctxError, match="has no string field text / content / body"):
        list(read_documents(tmp_path))
    assert [d.text for d in read_documents(tmp_path / "bad.jsonl", text_field="title")] == ["no text"]


@pytest.mark.slow
def test_chunks_fit_the_real_tokenizer() -> None:
    from selfctx.synth.tokens import load_token_counter

    counter = load_token_counter("smollm2-135m")
    text = make_doc(random.Random(3), n_paragraphs=60)
    chunks = chunk_text(text, counter, 300)
    assert all(n <= 300 for _, n in chunks) and sum(n for _, n in chunks) > 1500
    assert all(counter.count(c) == n for c, n in chunks)
    assert [w for c, _ in chunks for w in words(c)] == words(text)

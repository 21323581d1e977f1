"""Split users' own documents (txt / md / jsonl) into chunks that fit the model's window (for --from-docs).

    docs = list(read_documents("my_docs/"))                   # sorted, recursive; jsonl: one doc per line
    chunks = chunk_documents(docs, counter, max_tokens=3000)  # Chunk(doc_id, index, text, n_tokens)

Boundaries are preferred in this order: paragraphs (blank lines), sentences, words, and only for a single
"word" longer than the window, characters. Every chunk's n_tokens is its measured count under the target
tokenizer and never exceeds max_tokens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from selfctx.errors import SelfctxError
from selfctx.synth.tokens import TokenCounter

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".jsonl")
JSONL_TEXT_FIELDS = ("text", "content", "body")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_BREAK = re.compile(r"(?:(?<=[.!?…])|(?<=[.!?…][\"')\]”’]))\s+")  # closing quotes stay


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    index: int
    text: str
    n_tokens: int


def read_documents(path: str | Path, *, text_field: str | None = None) -> Iterator[Document]:
    """Documents under `path` (a file or a folder, searched recursively, in sorted order).

    .txt/.md files are one document each; .jsonl files hold one document per line, its text in
    `text_field` (default: the first of text / content / body present) and its id in "id" if present.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise SelfctxError(
            f"documents folder {path} does not exist: pass a folder of .txt, .md or .jsonl files"
        )
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    usable = [p for p in files if p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")]
    if not usable:
        raise SelfctxError(
            f"{path} holds no .txt, .md or .jsonl file ({len(files)} other files): "
            "put your documents there in one of those formats"
        )
    for file in usable:
        name = file.relative_to(root).as_posix() if root.is_dir() else file.name
        raw = file.read_text(encoding="utf-8", errors="replace")
        if file.suffix.lower() != ".jsonl":
            if raw.strip():
                yield Document(id=name, text=raw, source=name)
            continue
        for line_no, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SelfctxError(
                    f"{file}:{line_no} is not valid JSON ({exc.msg}): fix or remove that line"
                ) from None
            if not isinstance(record, dict):
                raise SelfctxError(f"{file}:{line_no} is not a JSON object: write one object per line")
            fields = (text_field,) if text_field else JSONL_TEXT_FIELDS
            key = next((f for f in fields if isinstance(record.get(f), str)), None)
            if key is None:
                raise SelfctxError(
                    f"{file}:{line_no} has no string field {' / '.join(fields)}: name the text field "
                    "(--text-field) or add one"
                )
            if record[key].strip():
                doc_id = str(record.get("id", f"{name}:{line_no}"))
                yield Document(id=doc_id, text=record[key], source=f"{name}:{line_no}")


def _pack(
    units: Sequence[str], joiner: str, counter: TokenCounter, max_tokens: int
) -> Iterator[tuple[str, int] | str]:
    """Greedily join units with `joiner` into pieces <= max_tokens; yield a unit alone when it is too big.

    Counts are additive because each unit after the first is counted WITH its joiner in front
    (a boundary before whitespace does not merge tokens in byte-level BPE). The caller re-measures.
    """
    alone = counter.count_batch(list(units))
    joined = counter.count_batch([joiner + u for u in units])
    current: list[str] = []
    total = 0
    for unit, n_alone, n_joined in zip(units, alone, joined, strict=True):
        if n_alone > max_tokens:
            if current:
                yield joiner.join(current), total
                current, total = [], 0
            yield unit  # too big for one chunk: the caller splits it finer
            continue
        add = n_joined if current else n_alone
        if current and total + add > max_tokens:
            yield joiner.join(current), total
            current, total, add = [], 0, n_alone
        current.append(unit)
        total += add
    if current:
        yield joiner.join(current), total


def _split_chars(text: str, counter: TokenCounter, max_tokens: int) -> Iterator[str]:
    """Last resort for one enormous 'word': the longest prefixes that fit, by binary search."""
    while text:
        low, high = 1, len(text)
        while low < high:
            mid = (low + high + 1) // 2
            if counter.count(text[:mid]) <= max_tokens:
                low = mid
            else:
                high = mid - 1
        yield text[:low]
        text = text[low:]


def chunk_text(text: str, counter: TokenCounter, max_tokens: int) -> list[tuple[str, int]]:
    """Split text into (chunk, n_tokens) with n_tokens <= max_tokens, at the coarsest boundaries possible."""
    if max_tokens < 1:
        raise SelfctxError(f"chunk size {max_tokens} must be at least 1 token: choose a larger window")
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    out: list[tuple[str, int]] = []
    levels: list[tuple[re.Pattern[str] | None, str]] = [
        (_SENTENCE_BREAK, " "),
        (re.compile(r"\s+"), " "),
        (None, ""),
    ]

    def emit(units: Sequence[str], joiner: str, level: int) -> None:
        for piece in _pack(units, joiner, counter, max_tokens):
            if isinstance(piece, tuple):
                out.append(piece)
                continue
            pattern, finer_joiner = levels[level]
            if pattern is None:
                out.extend((c, counter.count(c)) for c in _split_chars(piece, counter, max_tokens))
            else:
                emit([u for u in pattern.split(piece) if u], finer_joiner, level + 1)

    emit(paragraphs, "\n\n", 0)
    # Measure each chunk for real: the additive plan is exact for byte-level BPE, but never trust it blindly.
    measured = counter.count_batch([c for c, _ in out])
    result = []
    for (chunk, _planned), n in zip(out, measured, strict=True):
        if n <= max_tokens:
            result.append((chunk, n))
        else:  # a tokenizer that merged across a joiner: split this chunk again, by characters at worst
            result.extend(chunk_text(chunk[: len(chunk) // 2], counter, max_tokens))
            result.extend(chunk_text(chunk[len(chunk) // 2 :], counter, max_tokens))
    return result


def chunk_documents(docs: Iterable[Document], counter: TokenCounter, max_tokens: int) -> list[Chunk]:
    """Chunks of every document, in document order."""
    chunks = []
    for doc in docs:
        for index, (text, n) in enumerate(chunk_text(doc.text, counter, max_tokens)):
            chunks.append(Chunk(doc_id=doc.id, index=index, text=text, n_tokens=n))
    return chunks

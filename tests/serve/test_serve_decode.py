"""Unit tests: the streaming batched decoder, context splitting, the memory store."""

from __future__ import annotations

from pathlib import Path

from selfctx.compress import CompressedLM
from selfctx.compress.decode import DecodeRow, decode_rows
from selfctx.fsutil import current_umask
from selfctx.serve.context import ChatMessage, split_chat, split_text
from selfctx.serve.memory_store import MemoryStore, memory_footprint

from .conftest import document


def _suffix_ids(lm: CompressedLM, question: str) -> list[int]:
    assert lm.tokenizer is not None
    return list(lm.tokenizer(lm.split_chat("", question)[1], add_special_tokens=False)["input_ids"])


def test_batched_rows_equal_rows_alone_and_lm_generate(lm: CompressedLM) -> None:
    memory = lm.compress(document("d"), budget=128)
    assert memory.info.ratio > 1
    questions = ["Who?", "What is the longest word here, please?", "x"]
    batch = [DecodeRow(_suffix_ids(lm, q), max_tokens=6 + i) for i, q in enumerate(questions)]
    decode_rows(lm, memory, batch)
    for i, q in enumerate(questions):
        alone = DecodeRow(_suffix_ids(lm, q), max_tokens=6 + i)
        decode_rows(lm, memory, [alone])
        assert alone.token_ids == batch[i].token_ids
        assert len(batch[i].token_ids) == 6 + i and batch[i].finish_reason == "length"
        reference = lm.generate(memory=memory, prompt=q, max_new_tokens=6 + i)
        assert batch[i].text == reference.text


def test_lm_generate_batch_equals_one_prompt_at_a_time(lm: CompressedLM) -> None:
    memory = lm.compress(document("b"), budget=128)
    questions = ["Who?", "A much longer question about the document, if you please?"]
    batch = lm.generate(memory=memory, prompt=questions, max_new_tokens=7)
    for i, q in enumerate(questions):
        alone = lm.generate(memory=memory, prompt=q, max_new_tokens=7)
        assert batch.texts[i] == alone.text
        assert batch.completion_tokens[i] == alone.completion_tokens[0]


def test_streamed_deltas_add_up_and_stop_strings_cut(lm: CompressedLM) -> None:
    memory = lm.compress(document("s"), budget=128)
    free = DecodeRow(_suffix_ids(lm, "Go"), max_tokens=12, temperature=0.9, seed=7)
    decode_rows(lm, memory, [free])
    assert len(free.text) >= 4
    stop = free.text[2:4]
    pieces: list[str] = []
    cut = DecodeRow(
        _suffix_ids(lm, "Go"), max_tokens=12, temperature=0.9, seed=7, stop=(stop,), on_text=pieces.append
    )
    decode_rows(lm, memory, [cut])
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert "".join(pieces) == cut.text
    again = DecodeRow(_suffix_ids(lm, "Go"), max_tokens=12, temperature=0.9, seed=7)
    decode_rows(lm, memory, [again])
    assert again.text == free.text  # seeded sampling is reproducible


def test_chat_split_rule() -> None:
    doc, q = "A long document.\n\nWith paragraphs.", "Who wrote it?"
    assert split_chat([ChatMessage("system", doc), ChatMessage("user", q)]).context == doc
    one = split_chat([ChatMessage("user", f"{doc}\n\n{q}")])
    assert (one.context, one.question) == (doc, q)
    plain = split_chat([ChatMessage("user", q)])
    assert (plain.context, plain.question) == ("", q)
    turns = split_chat(
        [
            ChatMessage("system", "S"),
            ChatMessage("user", "U1"),
            ChatMessage("assistant", "A1"),
            ChatMessage("user", q),
        ]
    )
    assert turns.context == "S\n\nU1\n\nassistant: A1" and turns.question == q
    text = split_text(f"{doc}\n\nQ:")
    assert text.context + text.question == f"{doc}\n\nQ:" and text.question == "\n\nQ:"


def test_store_evicts_least_recent_by_bytes_and_persists(lm: CompressedLM, tmp_path: Path) -> None:
    memories = [lm.compress(document(t), budget=128) for t in "abc"]
    size = memory_footprint(memories[0])
    store = MemoryStore(budget_bytes=int(size * 2.5))
    for key, memory in zip("abc", memories, strict=True):
        store.put(key, memory)
        if key == "b":
            assert store.get("a") is not None  # touch a: b becomes the least recent
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.stats.evictions == 1 and store.stats.bytes_in_ram <= store.budget_bytes

    on_disk = MemoryStore(budget_bytes=0, folder=tmp_path)
    on_disk.put("k", memories[0])
    other = MemoryStore(budget_bytes=10 * size, folder=tmp_path)  # "another process"
    found = other.get("k")
    assert found is not None and found[1] == "disk"
    assert found[0].tail_ids.tolist() == memories[0].tail_ids.tolist()
    assert other.get("k") is not None and other.stats.hits_ram == 1
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no staging folders left behind
    # others may read what the store keeps, as with any folder the process creates (mkdtemp's 0700 is gone)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o777 & ~current_umask()

"""The learnability probe: the passkey sits where only memory can carry it; the four readings run."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from selfctx.bench.probe import ProbeTask, _battery_settings, evaluate
from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.errors import SelfctxError
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

FILLER = [f"Essay {i}: the river bends past the old mill; the market opens on Fridays." for i in range(60)]
WINDOW, SINK = 128, 1


def _find(haystack: tuple[int, ...], needle: list[int]) -> int:
    return next(i for i in range(len(haystack)) if list(haystack[i : i + len(needle)]) == needle)


@pytest.mark.parametrize("gap", [0, 2])
def test_the_passkey_sits_in_the_first_compressed_window_gap_windows_before_a_raw_tail(gap: int) -> None:
    tokenizer = tiny_tokenizer()
    task = ProbeTask(tokenizer, FILLER, WINDOW, SINK, gap=gap)
    rng = random.Random(0)
    for _ in range(10):
        item = task.item(rng)
        key = tokenizer.decode(list(item.answer))
        at = _find(item.context, tokenizer(f"The passkey is {key}.", add_special_tokens=False)["input_ids"])
        assert at >= SINK and at + 20 <= SINK + WINDOW  # wholly inside window 1
        tail = len(item.context) - SINK - WINDOW * (1 + gap)
        assert 0 < tail < WINDOW  # the question stays raw: nothing after the gap is compressed


def test_evaluate_reads_right_wrong_none_and_full_for_an_untrained_expert() -> None:
    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    model = tiny_llama(seed=0, vocab_size=TINY_TOKENIZER_VOCAB)
    battery = ExpertBattery.create(model, (4,), memory_input="span_last")
    lm = CompressedLM(model, tokenizer, battery, window=WINDOW, native_context=4 * WINDOW, sink=SINK)
    task = ProbeTask(tokenizer, FILLER, WINDOW, SINK, gap=1)
    items = [task.item(random.Random(i)) for i in range(3)]
    summary = evaluate(lm, 4, items)
    paired = summary.pop("right_minus_wrong")
    assert set(summary) == {"right", "wrong", "none", "full"}
    for reading in summary.values():
        assert math.isfinite(reading["nll"]) and reading["nll"] > 0 and 0 <= reading["exact"] <= 1
    assert paired["nll"] == pytest.approx(summary["right"]["nll"] - summary["wrong"]["nll"])
    # the readings differ: "full" reads the whole item raw, "none" only the sink and the tail
    assert summary["full"]["nll"] != summary["none"]["nll"]


def test_a_battery_without_the_asked_ratio_is_refused_before_any_model_loads(tmp_path: Path) -> None:
    meta = {"ratios": [4], "mechanism": {"window": 64, "sink": 1}}
    (tmp_path / "battery.json").write_text(json.dumps(meta))
    assert _battery_settings(tmp_path, 4) == {"window": 64, "sink": 1}
    with pytest.raises(SelfctxError, match="no x8 expert"):
        _battery_settings(tmp_path, 8)
    with pytest.raises(SelfctxError, match=r"no battery\.json"):
        _battery_settings(tmp_path / "missing", 4)


def test_recall_items_end_where_the_answer_starts_and_hide_its_value_in_the_context() -> None:
    from selfctx.bench.probe import recall_items

    tokenizer = tiny_tokenizer()
    items = recall_items(tokenizer, FILLER, 4, 300, 600)
    assert len(items) == 4
    for item in items:
        value = tokenizer.decode(list(item.answer))
        assert value.isdigit()  # the value's own tokens only: no closing special token or newline
        assert 300 <= len(item.context) + len(item.answer) <= 600
        assert value in tokenizer.decode(list(item.context))  # the fact is in what the memory reads
        assert tokenizer.decode(list(item.context)).endswith("assistant\n")  # the question came before

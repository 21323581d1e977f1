"""The raw sink kept at position 0 and the per-span memory-token inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.compress.battery import longest_supported, memory_entries_for, route
from selfctx.compress.engine import memory_inputs
from selfctx.tiny import tiny_llama

WINDOW = 16


def make_lm(sink: int, memory_input: str = "span_last", seed: int = 0) -> CompressedLM:
    model = tiny_llama(seed=seed)
    battery = ExpertBattery.create(model, (4, 8), memory_input=memory_input)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in battery.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return CompressedLM(model, None, battery, window=WINDOW, native_context=1024, sink=sink)


def ids_of(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (2, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("sink", [1, 3])
def test_the_sink_and_one_window_read_exactly_like_the_base_model(sink):
    lm = make_lm(sink)
    ids = ids_of(sink + WINDOW - 1)
    with torch.no_grad():
        ours, base = lm.logits(ids, 4), lm.model(ids).logits
    assert torch.allclose(ours, base, atol=1e-5), (ours - base).abs().max()
    ids = ids_of(sink + WINDOW + 5)  # one full window after the sink: its tokens still read everything raw
    with torch.no_grad():
        ours, base = lm.logits(ids, 4), lm.model(ids).logits
    assert torch.allclose(ours[:, : sink + WINDOW], base[:, : sink + WINDOW], atol=1e-5)
    assert (ours[:, sink + WINDOW :] - base[:, sink + WINDOW :]).abs().max() > 1e-3  # later ones read memory


@pytest.mark.parametrize("n", [5, 40, 67])
def test_memory_holds_the_raw_sink_then_n_over_r_per_window(n):
    lm = make_lm(sink=2)
    memory = lm.compress(ids_of(n)[0].tolist(), ratio=4)
    assert (
        memory.num_entries
        == memory_entries_for(n, WINDOW, 4, sink=2)
        == min(2, n) + (max(0, n - 2) // WINDOW) * (WINDOW // 4)
    )
    assert memory.tail_ids.numel() == max(0, n - 2) % WINDOW
    with torch.no_grad():  # the sink's keys/values are the base model's own for those tokens
        base = lm.model(ids_of(n)[:1, :2], use_cache=True).past_key_values
    first = base.layers[0].keys if hasattr(base, "layers") else base[0][0]
    cos, sin = lm.parts.rope(first, torch.arange(min(2, n))[None])
    from selfctx.compress.engine import apply_rope

    rotated = apply_rope(memory.layers[0].keys[:, :, : min(2, n)], cos, sin)
    assert torch.allclose(rotated, first[:, :, : min(2, n)], atol=1e-5)


def test_the_router_counts_the_sink():
    # 1024 native, window 256, budget 128: 4096 tokens need x8 (x4 would hold 1024 entries)
    assert route(4096, 128, 1024, 256, (4, 8), sink=0).ratio == 8
    fits = longest_supported(128, 1024, 256, (8,), sink=1)
    assert route(fits, 128, 1024, 256, (8,), sink=1).memory_entries + 256 + 128 <= 1024
    with pytest.raises(Exception, match="does not fit"):
        route(fits + 256, 128, 1024, 256, (8,), sink=1)


def test_span_last_memory_tokens_start_distinct_and_tied_to_their_span():
    model = tiny_llama(seed=0)
    shared = ExpertBattery.create(model, (4,), memory_input="shared").adapter_for(4)
    span = ExpertBattery.create(model, (4,), memory_input="span_last").adapter_for(4)
    raw = model.model.embed_tokens(ids_of(2 * WINDOW)[:1]).view(1, 2, WINDOW, -1)  # (B, G, W, D)
    with torch.no_grad():
        same = memory_inputs(shared, raw, WINDOW // 4)
        own = memory_inputs(span, raw, WINDOW // 4)
    assert torch.equal(same[0, 0, 0], same[0, 0, 1])  # one shared embedding: identical slots
    assert torch.equal(own[0, 1, 2], raw[0, 1, 11])  # slot 2 of window 2 starts as token 11 of that window
    assert float(span.memory_embedding.abs().sum()) == 0.0  # the learned offset starts at zero


def test_saved_battery_keeps_memory_input_and_sink(tmp_path: Path):
    lm = make_lm(sink=1)
    lm.battery.config = dataclasses.replace(lm.config, native_context=1024)  # what training gives it
    lm.battery.save(tmp_path / "experts")
    loaded = CompressedLM.from_pretrained(lm.model, tmp_path / "experts")
    assert loaded.sink == 1 and loaded.window == WINDOW
    assert loaded.battery.adapter_for(4).config.memory_input == "span_last"
    ids = ids_of(3 * WINDOW + 4)
    with torch.no_grad():
        assert torch.equal(lm.logits(ids, 8), loaded.logits(ids, 8))


def test_a_memory_made_with_another_sink_is_refused():
    from selfctx.errors import SelfctxError

    lm = make_lm(sink=1)
    memory = lm.compress(ids_of(3 * WINDOW)[0].tolist(), ratio=4)
    assert memory.info.sink == 1
    other = CompressedLM(lm.model, None, lm.battery, window=WINDOW, native_context=1024, sink=0)
    with pytest.raises(SelfctxError, match="sink"):
        other.check_memory(memory)
    lm.check_memory(memory)

"""The compressor's contract on a tiny random Llama: (a)-(f) of the compression issue, plus router and API."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import DynamicCache

from selfctx.compress import CompressedLM, ExpertBattery, Memory
from selfctx.compress.battery import longest_supported, route
from selfctx.compress.engine import apply_rope
from selfctx.errors import SelfctxError
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

WINDOW = 16


def randomize(battery: ExpertBattery, seed: int) -> None:
    """Give every adapter non-zero weights so experts differ from the base and from each other."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in battery.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def make_lm(ratios=(2, 4, 8), seed=0, lora_on="memory", kind="lora", native=1024, **kw) -> CompressedLM:
    model = tiny_llama(seed=seed, **kw)
    battery = ExpertBattery.create(model, ratios, kind=kind, lora_on=lora_on)
    return CompressedLM(model, None, battery, window=WINDOW, native_context=native)


def ids_of(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (batch, n), generator=torch.Generator().manual_seed(seed))


# (a) -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_input_shorter_than_a_window_matches_the_base_model(dtype, tol):
    lm = make_lm(dtype=dtype)
    randomize(lm.battery, 1)  # even trained experts must not touch ordinary tokens
    lm.battery.to(dtype)
    ids = ids_of(2, WINDOW - 1)
    ours = lm.logits(ids, ratio=4).float()
    base = lm.model(ids).logits.float()
    assert torch.allclose(ours, base, atol=tol, rtol=0), (ours - base).abs().max()


# (b) -----------------------------------------------------------------------------------------------
def test_swapping_memory_only_experts_leaves_first_window_unchanged():
    lm = make_lm(ratios=(4, 8))
    randomize(lm.battery, 2)
    ids = ids_of(1, 3 * WINDOW + 5)
    with torch.no_grad():
        with_r4 = lm.logits(ids, ratio=4)
        with_r8 = lm.logits(ids, ratio=8)
    assert torch.equal(with_r4[:, :WINDOW], with_r8[:, :WINDOW])
    # ...while later windows, which read the experts' memory, do differ
    assert (with_r4[:, WINDOW:] - with_r8[:, WINDOW:]).abs().max() > 1e-3


def test_lora_everywhere_switch_changes_ordinary_tokens():
    lm = make_lm(ratios=(4,), lora_on="all")
    randomize(lm.battery, 3)
    ids = ids_of(1, WINDOW - 2)
    with torch.no_grad():
        assert (lm.logits(ids, 4) - lm.model(ids).logits).abs().max() > 1e-3


# (c) -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_tokens,ratio", [(16, 2), (100, 4), (257, 8), (513, 2)])
def test_memory_stays_within_n_over_r_plus_window(n_tokens, ratio):
    lm = make_lm(ratios=(2, 4, 8))
    memory = lm.compress(ids_of(1, n_tokens)[0].tolist(), ratio=ratio)
    for layer in memory.layers:
        assert layer.keys.shape[2] == layer.values.shape[2] == (n_tokens // WINDOW) * (WINDOW // ratio)
    assert memory.kv_entries <= n_tokens / ratio + WINDOW
    assert memory.tail_ids.numel() == n_tokens % WINDOW


# (d) -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "mha_clone"])
def test_gradients_reach_only_the_chosen_expert(kind):
    lm = make_lm(ratios=(4, 8), kind=kind)
    randomize(lm.battery, 10)  # with LoRA B = 0 (its init) lora_A's gradient is exactly zero
    trainable = lm.trainable_parameters(4)
    ids = ids_of(1, 3 * WINDOW + 3)
    out = lm.forward_train(ids, ids.clone(), ratio=4, checkpointing=True)
    out.loss.backward()
    chosen = {id(p) for p in trainable}
    for name, p in lm.named_parameters():
        if id(p) in chosen:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient"
    adapter = lm.battery.adapter_for(4)
    assert adapter.memory_embedding.grad.abs().sum() > 0
    if kind == "lora":  # the other expert exists and stays untouched
        assert all(p.grad is None for p in lm.battery.adapter_for(8).parameters())


def test_training_loss_matches_logits_path():
    lm = make_lm(ratios=(4,))
    randomize(lm.battery, 4)
    ids = ids_of(2, 2 * WINDOW + 7)
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        loss = lm.forward_train(ids, labels, ratio=4, checkpointing=False).loss
        logits = lm.logits(ids, 4)
    targets = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1)
    expected = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert torch.allclose(loss, expected, atol=1e-5)


# (e) -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["lora", "mha_clone"])
def test_battery_save_load_roundtrip(tmp_path, kind):
    lm = make_lm(ratios=(2, 8), kind=kind)
    randomize(lm.battery, 5)
    lm.battery.save(tmp_path / "experts")
    loaded = ExpertBattery.load(tmp_path / "experts", lm.model)
    lm2 = CompressedLM(lm.model, None, loaded, window=WINDOW, native_context=1024)
    ids = ids_of(1, 3 * WINDOW + 1)
    with torch.no_grad():
        for ratio in (2, 8):
            assert torch.equal(lm.logits(ids, ratio), lm2.logits(ids, ratio))
    counts = loaded.parameter_counts()
    assert all(v > 0 for v in counts.values())


@pytest.mark.parametrize(
    ("base", "front_matter"),
    [
        ("smollm2-135m", "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n"),
        ("SmolLM2", "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n"),  # an alias the loader takes
        ("meta-llama/Llama-2-7b-hf", "base_model: meta-llama/Llama-2-7b-hf\n"),
        ("runs/base/model.gguf", None),
        ("/abs/folder", None),
    ],
)
def test_the_model_card_names_a_hub_base_model_only_when_it_is_one(base, front_matter):
    from selfctx.compress.battery import ExpertBattery

    lm = make_lm(ratios=(2,))
    card = ExpertBattery.create(lm.model, (2,), rank=2, base_model=base).model_card()
    header = card.split("---\n")[1]
    assert (front_matter in header) if front_matter else ("base_model" not in header)
    assert f"# selfctx memory experts for {base}" in card  # the body names the spec the user loads it with


def test_a_saved_battery_names_itself_and_old_layouts_still_load(tmp_path):
    from safetensors import safe_open

    lm = make_lm(ratios=(2, 8))
    randomize(lm.battery, 5)
    folder = tmp_path / "experts"
    lm.battery.save(folder)
    # not posing as a PEFT adapter: no adapter_config.json anywhere, a model card and named weights instead
    assert not list(folder.rglob("adapter_config.json"))
    card = (folder / "README.md").read_text()
    assert "library_name: selfctx" in card and "not a PEFT adapter" in card and "x2, x8" in card
    assert "base_model:" not in card  # an unrecorded base: nothing the Hub could link to
    with safe_open(str(folder / "expert-r8" / "expert.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "selfctx-memory-expert" and meta["ratio"] == "8" and meta["kind"] == "lora"
    # a battery written before the rename (adapter_config.json + adapter_model.safetensors) loads the same
    for sub in ("expert-r2", "expert-r8"):
        (folder / sub / "expert_config.json").rename(folder / sub / "adapter_config.json")
        (folder / sub / "expert.safetensors").rename(folder / sub / "adapter_model.safetensors")
    loaded = ExpertBattery.load(folder, lm.model)
    ids = ids_of(1, 2 * WINDOW + 1)
    again = CompressedLM(lm.model, None, loaded, window=WINDOW)
    with torch.no_grad():
        assert torch.equal(lm.logits(ids, 8), again.logits(ids, 8))
    (folder / "expert-r2" / "adapter_model.safetensors").unlink()
    with pytest.raises(SelfctxError, match="expert-r2 has no expert_config.json"):
        ExpertBattery.load(folder, lm.model)


def test_loading_experts_for_another_model_is_a_clear_error(tmp_path):
    lm = make_lm(ratios=(4,))
    lm.battery.save(tmp_path / "experts")
    other = tiny_llama(hidden_size=32, heads=2, kv_heads=1)
    with pytest.raises(SelfctxError, match="hidden size"):
        ExpertBattery.load(tmp_path / "experts", other)


def test_memory_save_load_gives_identical_generation(tmp_path):
    lm = text_lm()
    randomize(lm.battery, 6)
    context = "The quick brown fox jumps over the lazy dog. " * 3
    memory = lm.compress(context, ratio=4)
    memory.save(tmp_path / "mem")
    again = Memory.load(tmp_path / "mem")
    first = lm.generate(memory=memory, prompt="What jumps?", max_new_tokens=8)
    second = lm.generate(memory=again, prompt="What jumps?", max_new_tokens=8)
    assert first.texts == second.texts
    assert first.memory_bytes == again.nbytes > 0
    assert second.memory_reused and second.expert == "lora-r4"


# (f) -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["full-coverage", "segmentation", "step-expansion"])
def test_grouping_windows_does_not_change_the_result(pattern):
    lm = make_lm(ratios=(4,))
    lm.config = dataclasses.replace(lm.config, pattern=pattern)
    randomize(lm.battery, 7)
    ids = ids_of(2, 5 * WINDOW + 3)
    with torch.no_grad():
        one = lm.logits(ids, 4, group_windows=1)
        for group in (2, 3, 5):
            assert torch.allclose(one, lm.logits(ids, 4, group_windows=group), atol=1e-5)


def test_inference_buffers_equal_the_autograd_path():
    """Without autograd a group reuses one key/value buffer per layer; with it, pieces are concatenated."""
    lm = make_lm(ratios=(4,))
    randomize(lm.battery, 3)
    ids = ids_of(2, 5 * WINDOW + 3)
    with torch.no_grad():
        buffered = lm.logits(ids, 4, group_windows=5)
    with torch.enable_grad():
        concatenated = lm.logits(ids, 4, group_windows=5).detach()
    assert torch.allclose(buffered, concatenated, atol=1e-5)


def _merged_copy(lm: CompressedLM, ratio: int):
    """A plain HF model whose attention weights include the expert's LoRA (valid for lora_on='all')."""
    import copy

    merged = copy.deepcopy(lm.model)
    adapter = lm.battery.adapter_for(ratio)
    with torch.no_grad():
        for layer, lora in zip(merged.model.layers, adapter.layers, strict=True):
            for name, pair in lora.items():
                linear = getattr(layer.self_attn, name)
                linear.weight += pair["lora_B"].weight @ pair["lora_A"].weight * adapter.scale
    return merged


def test_windows_match_hf_forward_with_memory_as_past_key_values():
    """Reference: HF's own forward, one window at a time, memory fed as a rotated past-KV cache."""
    ratio = 4
    lm = make_lm(ratios=(ratio,), lora_on="all")
    randomize(lm.battery, 8)
    reference = _merged_copy(lm, ratio)
    adapter = lm.battery.adapter_for(ratio)
    ids = ids_of(1, 3 * WINDOW)
    n = WINDOW // ratio
    layers = len(reference.model.layers)
    memory_k = [torch.zeros(1, 2, 0, 16) for _ in range(layers)]
    memory_v = [torch.zeros(1, 2, 0, 16) for _ in range(layers)]
    expected = []
    with torch.no_grad():
        for w in range(3):
            m = memory_k[0].shape[2]
            cache = DynamicCache()
            cos, sin = reference.model.rotary_emb(memory_k[0], torch.arange(m)[None])
            for layer in range(layers):
                cache.update(apply_rope(memory_k[layer], cos, sin), memory_v[layer], layer)
            raw = reference.model.embed_tokens(ids[:, w * WINDOW : (w + 1) * WINDOW])
            embeds = torch.cat([raw, adapter.memory_embedding.expand(1, n, -1)], dim=1)
            positions = torch.arange(m, m + WINDOW + n)[None]
            out = reference(
                inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True
            )
            expected.append(out.logits[:, :WINDOW])
            cos_new, sin_new = reference.model.rotary_emb(raw, positions[:, WINDOW:])
            for layer in range(layers):
                k_rot = cache.layers[layer].keys[:, :, -n:]
                k_pre = apply_rope(k_rot, cos_new, -sin_new)  # undo the rotation: keep keys pre-RoPE
                memory_k[layer] = torch.cat([memory_k[layer], k_pre], dim=2)
                memory_v[layer] = torch.cat([memory_v[layer], cache.layers[layer].values[:, :, -n:]], dim=2)
        ours = lm.logits(ids, ratio, group_windows=3)
    assert torch.allclose(ours, torch.cat(expected, dim=1), atol=1e-4), (
        (ours - torch.cat(expected, 1)).abs().max()
    )


# router --------------------------------------------------------------------------------------------
def test_router_picks_smallest_ratio_that_fits():
    ratios = (2, 4, 8, 16)
    assert route(500, 100, 1024, 256, ratios).ratio == 1  # fits natively: nothing compressed
    # 3000 tokens = 11 full windows of 256; room for memory = 1024 - 256 - 100 = 668 slots:
    # x4 needs 11 * 64 = 704 (too many), x8 needs 11 * 32 = 352
    r = route(3000, 100, 1024, 256, ratios)
    assert (r.ratio, r.memory_entries) == (8, 352)
    assert r.requested_ratio == pytest.approx(11 * 256 / 668)
    # 6000 tokens = 23 full windows: x8 needs 736 > 668, x16 needs 368
    assert route(6000, 100, 1024, 256, ratios).ratio == 16


def test_router_error_names_the_longest_supported_input():
    longest = longest_supported(100, 1024, 256, (2, 4))
    assert route(longest, 100, 1024, 256, (2, 4)).ratio == 4
    with pytest.raises(SelfctxError, match=f"at most {longest} tokens"):
        route(longest + 1, 100, 1024, 256, (2, 4))


# text API ------------------------------------------------------------------------------------------
def text_lm(native: int = 512) -> CompressedLM:
    model = tiny_llama(vocab_size=TINY_TOKENIZER_VOCAB)
    battery = ExpertBattery.create(model, (2, 4, 8))
    return CompressedLM(model, tiny_tokenizer(), battery, window=WINDOW, native_context=native)


def test_batched_prompts_over_one_memory_equal_one_by_one():
    lm = text_lm()
    randomize(lm.battery, 9)
    memory = lm.compress("Some long context about foxes and dogs. " * 4, ratio=4)
    prompts = ["Who?", "What did the fox do exactly?", "Why"]
    batched = lm.generate(memory=memory, prompt=prompts, max_new_tokens=6)
    single = [lm.generate(memory=memory, prompt=p, max_new_tokens=6).text for p in prompts]
    assert batched.texts == single
    assert batched.ratio == 4 and batched.achieved_ratio > 1


def test_generate_with_short_context_equals_hf_generate():
    lm = text_lm()
    tok = lm.tokenizer
    head, tail = lm.split_chat("a short context", "question?")
    ids = tok(head + tail, add_special_tokens=False, return_tensors="pt")["input_ids"]
    expected = lm.model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=None)[0, ids.shape[1] :]
    ours = lm.generate(context="a short context", prompt="question?", max_new_tokens=6)
    assert ours.ratio == 1 and ours.expert is None
    got = tok(ours.text, add_special_tokens=False)["input_ids"]
    assert got == expected.tolist()[: len(got)]


def test_generate_routes_long_context_to_an_expert():
    lm = text_lm(native=160)
    result = lm.generate(context="x" * 600, prompt="Count?", max_new_tokens=4)
    assert result.ratio in (4, 8) and result.expert == f"lora-r{result.ratio}"
    assert result.memory_entries == (result.context_tokens // WINDOW) * (WINDOW // result.ratio)

"""One CompressorConfig: what a battery is built from, what battery.json saves and what inference reads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from selfctx.compress import CompressedLM, CompressorConfig, ExpertBattery
from selfctx.config import load_config
from selfctx.errors import SelfctxError
from selfctx.tiny import tiny_llama
from selfctx.train.experts import ExpertsConfig

LEGACY = Path(__file__).parents[2] / "benchmarks" / "experts" / "smollm2-cpu-synth"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ratios": (4, 6)}, "window 1024 is not divisible by ratio 6"),
        ({"window": 64, "native_context": 64, "ratios": (4,)}, r"native context \(native_context\) 64"),
        ({"sink": -1}, "sink must be >= 0"),
        ({"ratios": (1,)}, "ratios must be integers >= 2"),
        ({"targets": ("gate_proj",)}, "unknown LoRA target 'gate_proj'"),
    ],
)
def test_a_config_that_cannot_work_is_refused_with_what_to_change(settings, message):
    with pytest.raises(SelfctxError, match=message):
        CompressorConfig(**settings)


def test_override_keeps_the_settings_left_unset():
    trained = CompressorConfig(ratios=(8,), window=64, native_context=1024, sink=1)
    assert trained.override(window=None, sink=None) == trained
    assert trained.override(window=128, sink=0) == dataclasses.replace(trained, window=128, sink=0)
    with pytest.raises(SelfctxError, match="not divisible by ratio 8"):
        trained.override(window=60)


def test_a_battery_saved_before_the_config_existed_loads_as_it_was_used():
    meta = json.loads((LEGACY / "battery.json").read_text())
    adapter = json.loads((LEGACY / "expert-r4" / "adapter_config.json").read_text())
    assert "compressor" not in meta and "sink" not in meta["mechanism"] and "memory_input" not in adapter
    config = CompressorConfig.from_battery_json(meta, adapter)
    assert (config.window, config.native_context, config.ratios) == (256, 1024, (4, 8))
    # what those versions did without saying so: no sink, one shared memory embedding, 8192-token groups
    assert (config.sink, config.memory_input, config.group_tokens) == (0, "shared", 8192)


def test_the_trained_config_round_trips_and_is_what_inference_uses(tmp_path: Path):
    model = tiny_llama(seed=0)
    trained = CompressorConfig(
        ratios=(8, 4), window=32, native_context=256, sink=1, memory_input="span_last", group_tokens=512
    )
    ExpertBattery.create(model, config=trained).save(tmp_path / "experts")
    meta = json.loads((tmp_path / "experts" / "battery.json").read_text())
    assert meta["mechanism"] == {"window": 32, "native_context": 256, "pattern": "full-coverage", "sink": 1}
    loaded = ExpertBattery.load(tmp_path / "experts", model)
    assert loaded.config == dataclasses.replace(trained, ratios=(4, 8))
    # a CompressedLM built on the loaded battery reads through the trained mechanism unless told otherwise
    lm = CompressedLM(model, None, loaded)
    assert (lm.window, lm.native_context, lm.sink, lm.group_tokens) == (32, 256, 1, 512)
    assert CompressedLM(model, None, loaded, window=64, sink=0).config.window == 64


def test_untrained_experts_keep_the_library_defaults_not_trainings():
    lm = CompressedLM.from_pretrained(tiny_llama(seed=0, max_position_embeddings=2048))
    assert (lm.window, lm.sink, lm.native_context) == (1024, 0, 2048)
    assert lm.battery.adapter_for(8).config.memory_input == "shared"


def test_training_settings_are_a_compressor_config_with_their_own_defaults():
    cfg = load_config(ExpertsConfig, None, ["experts.ratios=[8, 4]"])
    assert isinstance(cfg.experts, CompressorConfig)
    assert (cfg.experts.window, cfg.experts.sink, cfg.experts.memory_input) == (256, 1, "span_last")
    assert cfg.experts.ratios == (8, 4)  # the training order is kept
    with pytest.raises(SelfctxError, match=r"^experts: window 256 is not divisible by ratio 3"):
        load_config(ExpertsConfig, None, ["experts.ratios=[3]"])

"""Extend a model's window with a RoPE scaling that transformers implements (`config.rope_parameters`).

We only write the parameters into the config (the format transformers 5.x reads: rope_type, factor,
rope_theta, original_max_position_embeddings, ...) and rebuild the model's rotary-embedding modules from it,
so the frequencies come from transformers' own ROPE_INIT_FUNCTIONS and a plain `from_pretrained` of the
saved config reproduces them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from selfctx.errors import SelfctxError
from selfctx.models import set_rope_parameters
from selfctx.train.config import RopeConfig


def rope_parameters_for(config: Any, rope: RopeConfig) -> tuple[dict[str, Any], int]:
    """The `rope_parameters` dict and the new max_position_embeddings for `rope` applied to `config`."""
    current = dict(getattr(config, "rope_parameters", None) or {})
    if current.get("rope_type", "default") != "default":
        raise SelfctxError(
            f"the model already uses rope_type={current['rope_type']}: scale a model with plain RoPE, or set "
            "rope.type=none"
        )
    original = rope.original_max_position_embeddings or int(config.max_position_embeddings)
    if rope.factor is not None:
        factor = float(rope.factor)
    elif rope.target_length is not None:
        factor = rope.target_length / original
    else:
        raise SelfctxError("rope scaling needs rope.factor or rope.target_length: set one of them")
    if factor < 1.0:
        raise SelfctxError(
            f"rope factor {factor:g} < 1 would shrink the window: raise rope.target_length/factor"
        )
    target = rope.target_length or round(original * factor)
    params: dict[str, Any] = {"rope_type": rope.type, "factor": factor}
    if "rope_theta" in current:
        params["rope_theta"] = current["rope_theta"]
    elif hasattr(config, "rope_theta"):
        params["rope_theta"] = config.rope_theta
    if rope.type in ("yarn", "llama3"):
        params["original_max_position_embeddings"] = original
    if rope.type == "llama3":
        params["low_freq_factor"] = rope.low_freq_factor
        params["high_freq_factor"] = rope.high_freq_factor
    # Dynamic NTK rescales only past max_position_embeddings, so that must stay the native window.
    max_positions = original if rope.type == "dynamic" else target
    return params, max_positions


def apply_rope_scaling(model: nn.Module, rope: RopeConfig) -> dict[str, Any] | None:
    """Write the scaling into model.config and rebuild the rotary modules; returns the parameters set."""
    if rope.type == "none":
        return None
    params, max_positions = rope_parameters_for(model.config, rope)
    set_rope_parameters(model, params, max_positions)
    return params

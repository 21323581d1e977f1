"""Tiny random Llama models built in code (no download): used by the tests and the `cpu-smoke` presets."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama_config(
    *,
    vocab_size: int = 256,
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = 1024,
    rope_theta: float = 10000.0,
) -> LlamaConfig:
    """A Llama config small enough that a forward pass takes milliseconds on CPU (GQA like SmolLM2)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_llama(
    seed: int = 0, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa", **config_kwargs: int
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama in eval mode; the same seed gives the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(**config_kwargs)  # type: ignore[arg-type]
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model.to(dtype)
    return model.eval()

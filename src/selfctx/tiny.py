"""Tiny random Llama models built in code (no download): used by the tests and the `cpu-smoke` presets."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

TINY = "tiny"  # the model name that builds a tiny random Llama in memory (its runs save it beside them)


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
    initializer_range: float = 0.02,
) -> LlamaConfig:
    """A Llama config small enough that a forward pass takes milliseconds on CPU (GQA like SmolLM2)."""
    from transformers import LlamaConfig

    return LlamaConfig(  # type: ignore[call-arg]  # rope_theta: accepted, not in the stubs
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        initializer_range=initializer_range,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )


def tiny_llama(
    seed: int = 0, dtype: torch.dtype | None = None, attn_implementation: str = "sdpa", **config_kwargs: float
) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama in eval mode; the same seed gives the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    config = tiny_llama_config(**config_kwargs)  # type: ignore[arg-type]
    config._attn_implementation = attn_implementation
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model.to(dtype)  # type: ignore[arg-type]
    return model.eval()


TINY_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>")
TINY_TOKENIZER_VOCAB = len(TINY_SPECIAL_TOKENS) + 256  # build the tiny model with vocab_size=this for text
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level tokenizer (every byte one token, no merges) with ChatML specials, built in code.

    Pairs with `tiny_llama(vocab_size=TINY_TOKENIZER_VOCAB)` so text-level code paths (chat templates,
    padding,
    batched generation, servers) can be tested without any download.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate((*TINY_SPECIAL_TOKENS, *byte_chars))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token=None,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer

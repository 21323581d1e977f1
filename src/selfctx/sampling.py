"""Choosing the next token and knowing when to stop: the one rule every decoder here follows (CompressedLM and
the server through `compress.decode`, the transformers backend through its logits processor)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the CLI and the llm backends load without torch until they sample
    import torch

# The nucleus almost always lies in the top few hundred tokens: a top-k costs far less than sorting the whole
# vocabulary, and where its mass falls short of top_p the full sort keeps sampling exact.
_NUCLEUS_SHORTCUT = 512


def eos_token_ids(tokenizer: Any, generation_config: Any) -> set[int]:
    """Every id that ends a generation: the tokenizer's EOS and the model's generation_config ones."""
    ids: set[int] = set()
    for source in (
        getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None,
        getattr(generation_config, "eos_token_id", None),
    ):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source if i is not None)
    return ids


def nucleus_choice(probs: torch.Tensor, top_p: float, generator: torch.Generator | None) -> int:
    """Draw one token id from probabilities (V,) restricted to the smallest set holding top_p of the mass
    (the most likely token is always kept)."""
    import torch

    if top_p >= 1.0:  # the whole distribution: nothing to sort
        return int(torch.multinomial(probs, 1, generator=generator))
    p, ids = torch.topk(probs, min(_NUCLEUS_SHORTCUT, probs.shape[-1]))
    if float(p.sum()) < top_p:
        p, ids = torch.sort(probs, descending=True)
    keep = torch.cumsum(p, dim=0) - p < top_p
    choice = torch.multinomial(p[keep], 1, generator=generator)
    return int(ids[keep][choice])


def sample_token(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling. logits (V,) -> token id."""
    import torch

    if temperature <= 0:
        return int(logits.argmax())
    return nucleus_choice(torch.softmax(logits.float() / temperature, dim=-1), top_p, generator)

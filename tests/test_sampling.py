"""The one sampling rule of every decoder: EOS collection, greedy, the nucleus (with its top-k shortcut)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from selfctx.sampling import eos_token_ids, nucleus_choice, sample_token


def test_eos_ids_come_from_the_tokenizer_and_the_generation_config() -> None:
    tokenizer = SimpleNamespace(eos_token_id=2)
    assert eos_token_ids(tokenizer, SimpleNamespace(eos_token_id=[7, None, 2])) == {2, 7}
    assert eos_token_ids(None, SimpleNamespace(eos_token_id=5)) == {5}
    assert eos_token_ids(SimpleNamespace(eos_token_id=None), SimpleNamespace()) == set()


def test_greedy_and_a_tiny_nucleus_take_the_most_likely_token() -> None:
    logits = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    best = int(logits.argmax())
    assert sample_token(logits, 0.0, 1.0, None) == best
    for seed in range(20):
        gen = torch.Generator().manual_seed(seed)
        assert sample_token(logits, 1.0, 1e-6, gen) == best


def test_draws_stay_inside_the_nucleus_whether_or_not_the_shortcut_holds_it() -> None:
    # 2000 tokens: 3 likely ones hold 0.9 of the mass, the rest share 0.1 evenly.
    probs = torch.full((2000,), 0.1 / 1997)
    probs[[11, 500, 1999]] = torch.tensor([0.5, 0.3, 0.1])
    inside = {11, 500, 1999}
    for seed in range(50):
        assert nucleus_choice(probs, 0.85, torch.Generator().manual_seed(seed)) in inside
    # top_p above what the 512-token shortcut holds (0.9 + 509 * 0.1/1997 < 0.95): the full sort is used and
    # tokens outside the top 512 can be drawn.
    drawn = {nucleus_choice(probs, 0.99, torch.Generator().manual_seed(seed)) for seed in range(1000)}
    assert inside <= drawn
    assert len(drawn - inside) > 20  # ~9% of 1000 draws fall in the tail
    # Seeded draws are reproducible.
    again = {nucleus_choice(probs, 0.99, torch.Generator().manual_seed(seed)) for seed in range(1000)}
    assert again == drawn

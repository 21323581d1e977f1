"""The WordNet 3.0 noun list shipped as package data, and deterministic noun draws from it."""

from __future__ import annotations

import functools
import random
from importlib import resources

_DATA = "data/wordnet_nouns.txt"


@functools.lru_cache(maxsize=1)
def load_nouns() -> tuple[str, ...]:
    """All 119,034 WordNet noun lemmas, underscores turned into spaces (as a writer would spell them)."""
    text = resources.files("selfctx.synth").joinpath(_DATA).read_text(encoding="utf-8")
    return tuple(line.strip().replace("_", " ") for line in text.splitlines() if line.strip())


@functools.lru_cache(maxsize=1)
def writable_nouns() -> tuple[str, ...]:
    """Nouns a small model can write a passage about: alphabetic lemmas of at least 3 letters.

    Drops entries like ".22" or "'hood" that make a weak writer produce noise.
    """
    return tuple(n for n in load_nouns() if len(n) >= 3 and n.replace(" ", "").replace("-", "").isalpha())


def draw_nouns(rng: random.Random, k: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    """k distinct nouns (case-insensitively distinct from each other and from `exclude`)."""
    pool = writable_nouns()
    seen = {e.lower() for e in exclude}
    out: list[str] = []
    while len(out) < k:
        noun = pool[rng.randrange(len(pool))]
        if noun.lower() not in seen:
            seen.add(noun.lower())
            out.append(noun)
    return out

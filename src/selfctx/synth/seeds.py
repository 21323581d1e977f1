"""Per-sample seeds: every random choice for one item derives from (run seed, stage, index, ...).

A fixed shuffle seed for every sample would give all samples one ordering pattern, and a seed that depends on
the order work finishes would make output depend on batching or worker count; hashing the item's identity
avoids both.
"""

from __future__ import annotations

import hashlib
import random


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' string forms (stable across processes, unlike hash())."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:15], 16)


def derive_rng(*parts: object) -> random.Random:
    return random.Random(derive_seed(*parts))

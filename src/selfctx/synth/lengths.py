"""Sample lengths: parse "16k", name length buckets, and draw per-sample targets.

Units are binary: k = 1024 tokens, m = 1024**2 tokens ("16k" = 16,384; "10m" = 10,485,760). Buckets are
half-open token ranges [lo, hi): a 16,384-token sample is in "16k-32k". A sample promised to a bucket is
assembled so that its measured count is within +-1% of its target AND inside the bucket
(see `tolerance_window`).

    spec = LengthSpec.parse(length="16k")          # or bucket="8k-16k", or uniform="1k-8k"
    target = spec.sample_target(random.Random(7))
    bucket = bucket_of(target)
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Literal

from selfctx.errors import SelfctxError

K = 1024
M = 1024 * 1024

# Relative tolerance of a sample's measured token count around its target.
TOLERANCE = 0.01

# Smallest target drawn for the "0-8k" bucket: a sample needs room for at least one passage and a prompt.
MIN_BUCKET_TARGET = 1 * K

BUCKETS: dict[str, tuple[int, int]] = {
    "0-8k": (0, 8 * K),
    "8k-16k": (8 * K, 16 * K),
    "16k-32k": (16 * K, 32 * K),
    "32k-64k": (32 * K, 64 * K),
    "64k-128k": (64 * K, 128 * K),
    "128k-256k": (128 * K, 256 * K),
    "256k-512k": (256 * K, 512 * K),
    "512k-1m": (512 * K, 1 * M),
    "1m-2m": (1 * M, 2 * M),
    "2m-4m": (2 * M, 4 * M),
    "4m-10m": (4 * M, 10 * M),  # 10m = 10 * 1024**2 = 10,485,760 tokens (exclusive)
}

_LENGTH = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([km]?)\s*$", re.IGNORECASE)


def parse_length(text: str | int) -> int:
    """'16k' -> 16384, '1.5m' -> 1572864, '16000' -> 16000. k = 1024, m = 1024**2."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        match = _LENGTH.match(str(text).replace("_", "").replace(",", ""))
        if not match:
            raise SelfctxError(
                f"length {text!r} is not a token count: write a number with an optional k or m suffix, "
                "like 16k, 1.5m or 16000"
            )
        number, unit = match.groups()
        value = int(float(number) * {"": 1, "k": K, "m": M}[unit.lower()])
    if value <= 0:
        raise SelfctxError(f"length {text!r} must be a positive number of tokens, like 16k")
    return value


def format_length(n_tokens: int) -> str:
    """16384 -> '16k', 10485760 -> '10m', 1500 -> '1500' (the inverse of parse_length where exact)."""
    if n_tokens and n_tokens % M == 0:
        return f"{n_tokens // M}m"
    if n_tokens and n_tokens % K == 0:
        return f"{n_tokens // K}k"
    return str(n_tokens)


def bucket_of(n_tokens: int) -> str:
    """The name of the bucket [lo, hi) that holds n_tokens."""
    for name, (lo, hi) in BUCKETS.items():
        if lo <= n_tokens < hi:
            return name
    largest = max(hi for _, hi in BUCKETS.values())
    raise SelfctxError(
        f"{n_tokens:,} tokens is outside every length bucket (0 to {largest - 1:,} tokens): "
        "choose a shorter length"
    )


def parse_bucket(text: str) -> str:
    """Normalise a bucket name typed by a user ('8K-16K', '8k–16k') to a key of BUCKETS."""
    name = str(text).strip().lower().replace("–", "-").replace(" ", "")
    if name in BUCKETS:
        return name
    raise SelfctxError(f"unknown length bucket {text!r}: choose one of {', '.join(BUCKETS)}")


def tolerance_window(target: int, bucket: str | None = None) -> tuple[int, int]:
    """Inclusive (min, max) token counts allowed for a sample: +-1% of target, clipped to its bucket."""
    slack = math.floor(target * TOLERANCE)
    lo, hi = target - slack, target + slack
    if bucket is not None and bucket in BUCKETS:
        b_lo, b_hi = BUCKETS[bucket]
        lo, hi = max(lo, b_lo), min(hi, b_hi - 1)
        if lo > hi:
            raise ValueError(f"target {target:,} tokens is not inside bucket {bucket}")
    return lo, hi


@dataclass(frozen=True)
class LengthSpec:
    """Exactly one of: a fixed target, a bucket (targets uniform inside it), or a uniform range.

    `lo`/`hi` are inclusive bounds of the targets this spec draws.
    """

    kind: Literal["target", "bucket", "uniform"]
    lo: int
    hi: int
    bucket: str | None = None

    @staticmethod
    def parse(
        length: str | int | None = None, bucket: str | None = None, uniform: str | None = None
    ) -> LengthSpec:
        given = [
            name
            for name, value in (("--length", length), ("--bucket", bucket), ("--uniform", uniform))
            if value not in (None, "")
        ]
        if len(given) != 1:
            raise SelfctxError(
                f"give exactly one of --length, --bucket or --uniform (got {', '.join(given) or 'none'}): "
                "e.g. --length 16k, --bucket 8k-16k or --uniform 1k-8k"
            )
        if length not in (None, ""):
            target = parse_length(length)
            bucket_of(target)  # fail early if beyond the largest bucket
            return LengthSpec("target", target, target)
        if bucket not in (None, ""):
            name = parse_bucket(bucket)
            b_lo, b_hi = BUCKETS[name]
            # Draw only targets whose whole +-1% window stays inside the bucket.
            lo = max(math.ceil(b_lo / (1 - TOLERANCE)), MIN_BUCKET_TARGET)
            hi = math.floor((b_hi - 1) / (1 + TOLERANCE))
            return LengthSpec("bucket", lo, hi, bucket=name)
        parts = re.split(r"\s*(?:-|–|\.\.|:)\s*", str(uniform).strip())
        if len(parts) != 2:
            raise SelfctxError(f"uniform range {uniform!r} is not LO-HI: write it like 1k-8k")
        lo, hi = parse_length(parts[0]), parse_length(parts[1])
        if lo > hi:
            raise SelfctxError(f"uniform range {uniform!r} has LO > HI: write it like 1k-8k")
        bucket_of(hi)
        return LengthSpec("uniform", lo, hi)

    def sample_target(self, rng: random.Random, at_least: int = 0) -> int:
        """A target token count for one sample (fixed targets ignore rng); a range draws from its part at or
        above `at_least` (a sample's own minimum), or takes its top when the whole range lies below it."""
        if self.kind == "target":
            return self.lo
        return rng.randint(min(max(self.lo, at_least), self.hi), self.hi)

    def bucket_for(self, target: int) -> str:
        """The bucket a sample with this target is promised to (the spec's own bucket when it has one)."""
        return self.bucket if self.bucket is not None else bucket_of(target)

    def describe(self) -> str:
        if self.kind == "target":
            return f"length {format_length(self.lo)} ({self.lo:,} tokens)"
        if self.kind == "bucket":
            return f"bucket {self.bucket} (targets {self.lo:,}-{self.hi:,} tokens)"
        return f"uniform {format_length(self.lo)}-{format_length(self.hi)} ({self.lo:,}-{self.hi:,} tokens)"

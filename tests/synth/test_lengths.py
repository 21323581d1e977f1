from __future__ import annotations

import random

import pytest

from selfctx.errors import SelfctxError
from selfctx.synth.lengths import (
    BUCKETS,
    LengthSpec,
    bucket_of,
    format_length,
    parse_bucket,
    parse_length,
    tolerance_window,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16k", 16384),
        ("16K", 16384),
        ("1m", 1048576),
        ("10m", 10 * 1024**2),
        ("1.5k", 1536),
        ("16000", 16000),
        ("16_000", 16000),
        (4096, 4096),
    ],
)
def test_parse_length(text: str | int, expected: int) -> None:
    assert parse_length(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "16g", "-5k", "0", "k"])
def test_parse_length_rejects_garbage(text: str) -> None:
    with pytest.raises(SelfctxError, match="16k"):
        parse_length(text)


def test_buckets_are_contiguous_and_half_open() -> None:
    spans = list(BUCKETS.values())
    assert spans[0][0] == 0 and spans[-1][1] == 10 * 1024**2
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert bucket_of(0) == "0-8k" and bucket_of(8191) == "0-8k" and bucket_of(8192) == "8k-16k"
    assert bucket_of(16384) == "16k-32k" and bucket_of(10 * 1024**2 - 1) == "4m-10m"
    with pytest.raises(SelfctxError, match="outside every length bucket"):
        bucket_of(10 * 1024**2)
    assert parse_bucket("8K–16K") == "8k-16k"
    with pytest.raises(SelfctxError, match="choose one of"):
        parse_bucket("8k-17k")
    assert (
        format_length(16384) == "16k"
        and format_length(10 * 1024**2) == "10m"
        and format_length(1500) == "1500"
    )


def test_tolerance_window_is_one_percent_clipped_to_the_bucket() -> None:
    assert tolerance_window(10_000) == (9_900, 10_100)
    assert tolerance_window(10_000, "8k-16k") == (9_900, 10_100)
    # A fixed 16k length lives in 16k-32k: the window never dips below the bucket edge.
    assert tolerance_window(16384, "16k-32k") == (16384, 16547)
    with pytest.raises(ValueError):
        tolerance_window(5_000, "16k-32k")


def test_length_spec_kinds_and_sampling() -> None:
    rng = random.Random(0)
    fixed = LengthSpec.parse(length="16k")
    assert fixed.sample_target(rng) == 16384 and fixed.bucket_for(16384) == "16k-32k"
    spec = LengthSpec.parse(bucket="8k-16k")
    for _ in range(200):
        target = spec.sample_target(rng)
        lo, hi = tolerance_window(target, spec.bucket_for(target))
        assert BUCKETS["8k-16k"][0] <= lo and hi < BUCKETS["8k-16k"][1]
        assert (lo, hi) == tolerance_window(target)  # the whole +-1% window fits the bucket
    uniform = LengthSpec.parse(uniform="1k-8k")
    targets = [uniform.sample_target(rng) for _ in range(500)]
    assert min(targets) >= 1024 and max(targets) <= 8192 and len(set(targets)) > 400
    assert "bucket 8k-16k" in spec.describe() and "uniform 1k-8k" in uniform.describe()


def test_a_range_draws_targets_at_or_above_a_samples_minimum() -> None:
    rng = random.Random(0)
    uniform = LengthSpec.parse(uniform="1k-8k")
    targets = [uniform.sample_target(rng, at_least=3000) for _ in range(300)]
    assert min(targets) >= 3000 and max(targets) <= 8192 and len(set(targets)) > 250
    assert uniform.sample_target(rng, at_least=20_000) == 8192  # above the range: its top (assembly says why)
    assert LengthSpec.parse(length="2k").sample_target(rng, at_least=5000) == 2048  # a fixed length stays


def test_every_bucket_can_be_drawn_from() -> None:
    rng = random.Random(1)
    for name in BUCKETS:
        spec = LengthSpec.parse(bucket=name)
        target = spec.sample_target(rng)
        assert bucket_of(target) == name
        tolerance_window(target, name)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"length": "16k", "bucket": "8k-16k"}, {"uniform": "8k-1k"}, {"uniform": "1k"}, {"length": "20m"}],
)
def test_length_spec_rejects_bad_combinations(kwargs: dict[str, str]) -> None:
    with pytest.raises(SelfctxError):
        LengthSpec.parse(**kwargs)

from __future__ import annotations

import io
import json
import random
import re
import time

import pytest

from selfctx.errors import SelfctxError
from selfctx.synth.assemble import assemble_sample, fill_gold, passage_header, stream_sample, truncate_to_fit
from selfctx.synth.lengths import BUCKETS, LengthSpec, bucket_of, tolerance_window
from selfctx.synth.tokens import HFTokenCounter, RegexTokenCounter, TokenCounter, chat_overhead
from selfctx.synth.types import Passage, SampleDraft
from selfctx.synth.writer import sample_row

_VOCAB = (
    "river stone cloud light paper window garden silver engine theory 1984 protein harbor violin glacier "
)
_VOCAB += "café naïve Zürich x86-64 don't it's O'Brien $42.50 3.14 e-mail #tag (aside) [note] “quoted” 100%"
WORDS = _VOCAB.split()
_HEADER = re.compile(r"(?:^|\n\n)Passage (\d+):\n")


def make_text(rng: random.Random) -> str:
    """Varied text: punctuation, digits, unicode, quotes, internal paragraph breaks, odd endings."""
    sentences = []
    for _ in range(rng.randint(2, 14)):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 22))]
        end = rng.choice([".", ".", ".", "!", "?", '."', ".)", ":", "..."])
        sentences.append(" ".join(words).capitalize() + end)
        if rng.random() < 0.15:
            sentences.append("\n\n")
    text = " ".join(sentences).replace(" \n\n ", "\n\n")
    if rng.random() < 0.1:  # a few unstripped texts: the assembler must strip and recount them
        return rng.choice(["  ", "\n"]) + text + rng.choice(["", " ", "\n\n"])
    return text


def make_pool(counter: TokenCounter, n: int = 400, seed: int = 0) -> list[Passage]:
    rng = random.Random(seed)
    texts = [make_text(rng) for _ in range(n)]
    counts = counter.count_batch([t.strip() for t in texts])
    return [
        Passage(f"p{i}", f"noun{i % (n // 2)}", "essay", t, c)
        for i, (t, c) in enumerate(zip(texts, counts, strict=True))
    ]


def make_draft(pool: list[Passage], k: int = 2) -> SampleDraft:
    relevant = tuple(pool[:k])
    return SampleDraft(
        task="multi_doc_qa",
        relevant=relevant,
        instruction="Answer the question based on the passages "
        + ", ".join(f"{{gold[{i}]}}" for i in range(k))
        + ".",
        question="What links {gold[0]} to the rest? Use a dict like {'a': 1}.",
        answer="Passage {gold[0]} does.",
        nouns=tuple(p.noun for p in relevant),
    )


def bpe_counter() -> HFTokenCounter:
    """A real byte-level BPE (GPT-2 regex pre-tokenizer, merges trained here) with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from selfctx.tiny import TINY_CHAT_TEMPLATE

    rng = random.Random(42)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [make_text(rng) for _ in range(300)] + [passage_header(i) for i in range(1, 300)]
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return HFTokenCounter(tokenizer, name="test-bpe")


@pytest.fixture(scope="module", params=["regex", "bpe"])
def counter(request: pytest.FixtureRequest) -> TokenCounter:
    return RegexTokenCounter() if request.param == "regex" else bpe_counter()


@pytest.fixture(scope="module")
def pool(counter: TokenCounter) -> list[Passage]:
    return make_pool(counter)


def split_context(user: str) -> list[str]:
    """Passage texts of a user turn, in order (the instruction and question follow the last one)."""
    context = user.rsplit("\n\nAnswer the question", 1)[0]
    parts = _HEADER.split(context)
    indices = [int(x) for x in parts[1::2]]
    assert indices == list(range(1, len(indices) + 1))
    return parts[2::2]


def test_fill_lands_within_one_percent_for_many_targets_in_every_reachable_bucket(
    counter: TokenCounter, pool: list[Passage]
) -> None:
    draft = make_draft(pool, k=3)
    capacity = sum(p.n_tokens for p in pool)
    reachable = [name for name, (lo, hi) in BUCKETS.items() if hi <= capacity * 0.9]
    assert reachable[:3] == ["0-8k", "8k-16k", "16k-32k"]
    rng = random.Random(5)
    for i in range(8 * len(reachable)):
        spec = LengthSpec.parse(bucket=reachable[i % len(reachable)])
        target = spec.sample_target(rng)
        sample = assemble_sample(
            draft, pool, target, counter, random.Random(i), model="m", seed=i, bucket=spec.bucket_for(target)
        )
        lo, hi = tolerance_window(target, sample.bucket)
        assert lo <= sample.token_count <= hi, (target, sample.token_count)
        assert abs(sample.token_count - target) <= 0.01 * target
        assert bucket_of(sample.token_count) == sample.bucket == spec.bucket
        assert counter.count_chat(sample.messages) == sample.token_count  # recorded = measured


def test_per_piece_sums_equal_the_measured_count_exactly(counter: TokenCounter, pool: list[Passage]) -> None:
    """The additivity the 10M-token streaming path relies on: planned (sum of pieces) == re-tokenized."""
    draft = make_draft(pool, k=2)
    for target in (3_000, 17_000, 30_000):
        buffer = io.StringIO()
        streamed = stream_sample(
            draft,
            pool,
            target,
            counter,
            random.Random(target),
            buffer,
            model="m",
            seed=1,
            bucket=bucket_of(target),
        )
        row = json.loads(buffer.getvalue())
        assert streamed.metadata["n_distractors"] > 10
        assert counter.count_chat(row["messages"]) == streamed.metadata["token_count"] == row["token_count"]
        overhead = chat_overhead(counter)
        pieces = [
            passage_header(i) + t for i, t in enumerate(split_context(row["messages"][0]["content"]), 1)
        ]
        assert sum(counter.count_batch(pieces)) + overhead < row["token_count"]  # plus prompt and answer


def test_stream_matches_assemble_for_the_same_rng(counter: TokenCounter, pool: list[Passage]) -> None:
    draft = make_draft(pool)
    sample = assemble_sample(
        draft, pool, 12_000, counter, random.Random(3), model="m", seed=3, bucket="8k-16k"
    )
    buffer = io.StringIO()
    streamed = stream_sample(
        draft, pool, 12_000, counter, random.Random(3), buffer, model="m", seed=3, bucket="8k-16k"
    )
    row = json.loads(buffer.getvalue())
    assert row["messages"] == list(sample.messages)
    expected = sample.to_json()
    expected["extra"]["token_count_method"] = "additive"
    assert row == json.loads(json.dumps(sample_row(expected)))
    text_buffer = io.StringIO()
    stream_sample(
        draft,
        pool,
        12_000,
        counter,
        random.Random(3),
        text_buffer,
        model="m",
        seed=3,
        bucket="8k-16k",
        fmt="text",
    )
    assert text_buffer.getvalue() == sample.messages[0]["content"]
    assert streamed.chars_written == len(buffer.getvalue())


def test_context_structure_gold_positions_and_noun_exclusion(pool: list[Passage]) -> None:
    counter = RegexTokenCounter()
    pool = make_pool(counter)
    draft = make_draft(pool, k=3)
    by_text = {p.text.strip(): p for p in pool}
    for seed in range(10):
        sample = assemble_sample(
            draft, pool, 9_000, counter, random.Random(seed), model="m", seed=seed, bucket="8k-16k"
        )
        texts = split_context(sample.messages[0]["content"])
        assert len(texts) == sample.n_distractors + 3
        for i, gold in enumerate(sample.gold_positions):
            assert texts[gold - 1] == draft.relevant[i].text.strip()  # relevant passages whole, in place
        for position, text in enumerate(texts, start=1):
            if position in sample.gold_positions:
                continue
            passage = by_text.get(text) or next(p for t, p in by_text.items() if t.startswith(text))
            assert passage.noun not in draft.nouns
        gold = sample.gold_positions
        assert f"passages {gold[0]}, {gold[1]}, {gold[2]}." in sample.messages[0]["content"]
        assert "{'a': 1}" in sample.messages[0]["content"]  # other braces survive placeholder filling
        assert sample.messages[1]["content"] == f"Passage {gold[0]} does."
        assert (
            sample.nouns == draft.nouns and sample.task == "multi_doc_qa" and not sample.repeated_distractors
        )


def test_positions_are_random_per_rng_and_reproducible() -> None:
    counter = RegexTokenCounter()
    pool = make_pool(counter)
    draft = make_draft(pool, k=1)

    def build(seed: int):
        return assemble_sample(
            draft, pool, 6_000, counter, random.Random(seed), model="m", seed=seed, bucket="0-8k"
        )

    assert build(1) == build(1)
    golds = {build(s).gold_positions[0] for s in range(20)}
    assert len(golds) > 10  # no fixed ordering pattern shared by all samples
    assert len({build(s).messages[0]["content"] for s in range(5)}) == 5


def test_depths_place_relevant_passages() -> None:
    counter = RegexTokenCounter()
    pool = make_pool(counter)
    draft = make_draft(pool, k=3)
    sample = assemble_sample(
        draft,
        pool,
        8_000,
        counter,
        random.Random(0),
        depths=[0.0, 0.5, 1.0],
        model="m",
        seed=0,
        bucket="0-8k",
    )
    n = sample.n_distractors + 3
    assert sample.gold_positions == (1, round(0.5 * (n - 1)) + 1, n)
    # Collisions move to the nearest free slot.
    same = assemble_sample(
        draft,
        pool,
        8_000,
        counter,
        random.Random(0),
        depths=[1.0, 1.0, 1.0],
        model="m",
        seed=0,
        bucket="0-8k",
    )
    n = same.n_distractors + 3
    assert sorted(same.gold_positions) == [n - 2, n - 1, n]
    with pytest.raises(SelfctxError, match="one depth per passage"):
        assemble_sample(
            draft, pool, 8_000, counter, random.Random(0), depths=[0.5], model="m", seed=0, bucket="0-8k"
        )
    with pytest.raises(SelfctxError, match="between 0.0"):
        assemble_sample(
            draft,
            pool,
            8_000,
            counter,
            random.Random(0),
            depths=[0.1, 0.2, 1.5],
            model="m",
            seed=0,
            bucket="0-8k",
        )


def test_impossible_targets_fail_at_once_with_numbers() -> None:
    counter = RegexTokenCounter()
    pool = make_pool(counter, n=60)
    draft = make_draft(pool, k=2)
    start = time.perf_counter()
    with pytest.raises(
        SelfctxError, match=r"smaller than the relevant passages \+ prompt \(\d[\d,]* tokens\)"
    ):
        assemble_sample(draft, pool, 20, counter, random.Random(0), model="m", seed=0, bucket="0-8k")
    with pytest.raises(SelfctxError, match=r"pool holds [\d,]+ tokens of usable distractors.*--allow-repeat"):
        assemble_sample(draft, pool, 60_000, counter, random.Random(0), model="m", seed=0, bucket="32k-64k")
    lonely = [Passage("a", "cat", "g", "A cat sat.", 4), Passage("b", "cat", "g", "Another cat.", 3)]
    with pytest.raises(SelfctxError, match="no passage in the pool can be a distractor"):
        assemble_sample(
            SampleDraft("qa", (lonely[0],), "", "Q?", "A.", ("cat",)),
            lonely,
            2_000,
            counter,
            random.Random(0),
            allow_repeat=True,
            model="m",
            seed=0,
            bucket="0-8k",
        )
    assert time.perf_counter() - start < 2.0


def test_allow_repeat_reuses_the_pool_and_says_so() -> None:
    counter = RegexTokenCounter()
    pool = make_pool(counter, n=60)
    draft = make_draft(pool, k=2)
    capacity = sum(p.n_tokens for p in pool)
    target = int(capacity * 2.5)
    sample = assemble_sample(
        draft,
        pool,
        target,
        counter,
        random.Random(0),
        allow_repeat=True,
        model="m",
        seed=0,
        bucket=bucket_of(target),
    )
    assert sample.repeated_distractors
    assert abs(sample.token_count - target) <= 0.01 * target
    assert sample.n_distractors > len(pool)


def test_truncate_to_fit_prefers_sentence_boundaries() -> None:
    counter = RegexTokenCounter()
    text = "One two three. Four five six seven. Eight nine ten eleven twelve."
    assert truncate_to_fit(text, counter, 5, 9) == ("One two three. Four five six seven.", 9)
    assert truncate_to_fit(text, counter, 2, 3) == ("One two", 2)  # no sentence fits: a word boundary
    assert truncate_to_fit(text, counter, 100, 200) is None
    assert fill_gold("see {gold[1]} and {x}", [4, 9]) == "see 9 and {x}"


@pytest.mark.slow
def test_real_tokenizer_additivity_and_one_percent() -> None:
    """SmolLM2's tokenizer: the chat overhead is constant, piece sums equal the measured count exactly."""
    from selfctx.synth.tokens import load_token_counter

    counter = load_token_counter("smollm2-135m")
    overhead = chat_overhead(counter)
    for messages in (
        [{"role": "user", "content": "Passage 1:\nx"}, {"role": "assistant", "content": "y"}],
        [
            {"role": "user", "content": "Passage 1:\nLong text é 3.14.\n\nQ?"},
            {"role": "assistant", "content": "A 1"},
        ],
    ):
        assert counter.count_chat(messages) == overhead + sum(counter.count(m["content"]) for m in messages)
    pool = make_pool(counter, n=600, seed=7)
    draft = make_draft(pool, k=3)
    rng = random.Random(11)
    for i in range(12):
        spec = LengthSpec.parse(bucket=["0-8k", "8k-16k", "16k-32k", "32k-64k"][i % 4])
        target = spec.sample_target(rng)
        buffer = io.StringIO()
        streamed = stream_sample(
            draft,
            pool,
            target,
            counter,
            random.Random(i),
            buffer,
            model="m",
            seed=i,
            bucket=spec.bucket_for(target),
        )
        row = json.loads(buffer.getvalue())
        assert counter.count_chat(row["messages"]) == streamed.metadata["token_count"]  # additivity, exact
        assert abs(streamed.metadata["token_count"] - target) <= 0.01 * target
        sample = assemble_sample(
            draft, pool, target, counter, random.Random(i), model="m", seed=i, bucket=spec.bucket_for(target)
        )
        assert sample.token_count == streamed.metadata["token_count"]


class MergingCounter(RegexTokenCounter):
    """Like a tokenizer that is NOT additive across passage boundaries: the whole sample counts one extra
    token per passage header, which the additive plan cannot see. assemble_sample must measure and correct."""

    name = "merging"

    def count_chat(self, messages) -> int:  # type: ignore[no-untyped-def]
        extra = sum(m["content"].count("\n\nPassage ") for m in messages)
        return super().count_chat(messages) + extra


def test_measured_count_is_corrected_when_pieces_are_not_additive() -> None:
    counter = MergingCounter()
    pool = make_pool(RegexTokenCounter(), n=300, seed=3)
    draft = make_draft(pool, k=2)
    for seed, target in enumerate((6_000, 9_000, 20_000)):
        sample = assemble_sample(draft, pool, target, counter, random.Random(seed), model="m", seed=seed,
                                 bucket=bucket_of(target))  # fmt: skip
        assert sample.n_distractors > 20  # the hidden excess (one per header) exceeds the 1% window
        assert counter.count_chat(sample.messages) == sample.token_count
        assert abs(sample.token_count - target) <= 0.01 * target


def test_small_targets_with_narrow_windows_still_fill() -> None:
    counter = RegexTokenCounter()
    pool = make_pool(counter, n=200, seed=9)
    short = SampleDraft("qa", (pool[0],), "Answer {gold[0]}.", "Q?", "A {gold[0]}.", (pool[0].noun,))
    minimum = assemble_sample(short, pool, 10_000, counter, random.Random(0), depths=[0.0], model="m", seed=0,
                              bucket="8k-16k")  # fmt: skip
    assert minimum.token_count
    for target in range(pool[0].n_tokens + 30, pool[0].n_tokens + 400, 7):
        try:
            sample = assemble_sample(short, pool, target, counter, random.Random(target), model="m", seed=0,
                                     bucket=bucket_of(target))  # fmt: skip
        except SelfctxError as exc:  # only "too small" is acceptable here, and it must say so
            assert "smaller than the relevant passages" in str(exc)
            continue
        lo, hi = tolerance_window(target, bucket_of(target))
        assert lo <= sample.token_count <= hi

"""Built-in retrieval-dense tasks. Kind `recall`: code words and their numbers spread over a long context,
then a question about one of them, answer-only loss. Kind `repeat` (reconstruction): a stretch of a passage,
then the same stretch as the answer, so every compressed token is a target.

Without a path it needs no files and no model, so the `cpu-smoke` preset and the tests can train experts
anywhere: the context is nothing but records. With a path (a passage pool of `selfctx synth`, .txt or .jsonl
with a `text` field) one to three facts are hidden at random depths among the model's own passages, in varied
phrasings — retrieval-dense samples on the model's own text, the quickest signal for a memory to learn from.
Answering needs what the compressed memory of earlier windows holds, which is exactly what the experts learn.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from selfctx.train.examples import Example, tokenize_chat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_WORDS = (
    "amber",
    "basil",
    "cedar",
    "delta",
    "ember",
    "falcon",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lumen",
    "marble",
    "nectar",
    "onyx",
    "pepper",
    "quartz",
    "raven",
    "sable",
    "thistle",
    "umber",
    "violet",
    "willow",
    "xenon",
    "yarrow",
    "zephyr",
)
DEFAULT_SAMPLES = 64


def recall_messages(rng: random.Random, target_chars: int) -> list[dict[str, str]]:
    """One conversation: records until the context reaches ~target_chars, a question, its answer."""
    records: list[tuple[str, str]] = []
    used: set[str] = set()
    text_len = 0
    while text_len < target_chars:
        key = f"{rng.choice(_WORDS)}-{rng.randrange(100)}"
        if key in used:
            continue
        used.add(key)
        value = str(rng.randrange(1000, 10000))
        records.append((key, value))
        text_len += len(key) + len(value) + 20
    key, value = records[rng.randrange(len(records))]
    context = " ".join(f"The number of {k} is {v}." for k, v in records)
    return [
        {"role": "user", "content": f"{context}\n\nWhat is the number of {key}?"},
        {"role": "assistant", "content": value},
    ]


# (statement, question) phrasings of a hidden fact; {k} is the key, {v} the value
_FACTS = (
    ("The access code for the {k} is {v}.", "What is the access code for the {k}?"),
    ("Remember this: the secret number of the {k} is {v}.", "What is the secret number of the {k}?"),
    ("The {k} was assigned the serial number {v}.", "Which serial number was the {k} assigned?"),
    ("Note for later: the passkey of the {k} is {v}.", "What is the passkey of the {k}?"),
    ("In the ledger, the {k} is listed under the number {v}.", "Under which number is the {k} listed?"),
)


# (statement, question) phrasings of a fact whose value is a phrase: a short span of another passage, so
# answering means writing several words back from memory, not one number
_PHRASE_FACTS = (
    ("The motto engraved on the {k} reads: {v}.", "What does the motto engraved on the {k} read?"),
    ('Remember this: the password phrase of the {k} is "{v}".', "What is the password phrase of the {k}?"),
    ("The last line written in the {k} log was: {v}.", "What was the last line written in the {k} log?"),
)
FactValues = Literal["numbers", "phrases", "mixed"]


_PLACES = ("vault", "archive", "station", "project", "device")
_KEYS = tuple(f"{word} {place}" for word in _WORDS for place in _PLACES)


def _number(rng: random.Random) -> str:
    digits = rng.randint(4, 7)
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _phrase(rng: random.Random, passages: list[str]) -> str:
    """4-10 consecutive words of a random passage of the pool, without trailing punctuation."""
    words: list[str] = []
    for _ in range(8):  # a passage with a few words at least
        words = passages[rng.randrange(len(passages))].split()
        if len(words) >= 4:
            break
    words = words or ["(blank)"]
    size = min(len(words), rng.randint(4, 10))
    start = rng.randrange(len(words) - size + 1)
    return " ".join(words[start : start + size]).rstrip(".,;:!?\"'")


def filler_messages(
    rng: random.Random,
    target_chars: int,
    passages: list[str],
    n_facts: int | None = None,
    values: FactValues = "numbers",
) -> list[dict[str, str]]:
    """Passages up to ~target_chars with facts at random boundaries: 1-3 and a question about one of them, or
    (dense) `n_facts` and a question about each, in turns of their own, in random order. `values`: numbers
    (4-7 digits), phrases (a few words of a pool passage), or mixed (each fact one or the other)."""
    pieces: list[str] = []
    size = 0
    while size < target_chars:
        text = passages[rng.randrange(len(passages))][
            : max(1, target_chars - size)
        ]  # the last one cut to fit
        pieces.append(text)
        size += len(text) + 2
    dense = n_facts is not None
    count = min(n_facts, len(_KEYS)) if n_facts is not None else rng.randint(1, 3)
    statement, question = _FACTS[rng.randrange(len(_FACTS))]
    if dense:  # distinct word-and-place keys
        facts = [(key, _number(rng)) for key in rng.sample(_KEYS, count)]
    else:  # the original draws, in their original order: runs and held-out items stay what they were
        facts = [(f"{k} {rng.choice(_PLACES)}", _number(rng)) for k in rng.sample(_WORDS, count)]
    # numbers draw nothing more, so their samples stay what they were before phrases existed
    templates = {key: (statement, question) for key, _ in facts}
    if values != "numbers":
        for i, (key, _) in enumerate(facts):
            if values == "phrases" or rng.random() < 0.5:
                facts[i] = (key, _phrase(rng, passages))
                templates[key] = _PHRASE_FACTS[rng.randrange(len(_PHRASE_FACTS))]
    for key, value in facts:
        pieces.insert(rng.randint(0, len(pieces)), templates[key][0].format(k=key, v=value))
    asked = rng.sample(facts, count) if dense else [facts[rng.randrange(count)]]
    context = "\n\n".join(pieces)
    messages: list[dict[str, str]] = []
    for i, (key, value) in enumerate(asked):
        prompt = templates[key][1].format(k=key)
        messages.append({"role": "user", "content": f"{context}\n\n{prompt}" if i == 0 else prompt})
        messages.append({"role": "assistant", "content": value})
    return messages


def recall_examples(
    tokenizer: PreTrainedTokenizerBase,
    n_samples: int,
    min_tokens: int,
    max_tokens: int,
    seed: int,
    passages: list[str] | None = None,
    facts_per_1k: float | None = None,
    values: FactValues = "numbers",
    length_unit: Literal["tokens", "chars"] = "tokens",
) -> list[Example]:
    """`n_samples` tokenized conversations of min_tokens..max_tokens tokens (lengths drawn uniformly); with
    `passages`, facts hidden among them (`facts_per_1k`: that many per 1,000 drawn tokens, each asked;
    `values`: what the facts hold), else records only. `length_unit="chars"`: the drawn length is a
    character count and a sample is kept as soon as its tokens fall within the range (the legacy lengths,
    ~1/4 of the draw with a real tokenizer)."""
    if length_unit not in ("tokens", "chars"):
        raise ValueError(f"length_unit={length_unit!r}: use tokens or chars")
    rng = random.Random(f"recall-{seed}")
    out: list[Example] = []
    attempts = 0
    chars_per_token = 1.0  # learned from the samples made so far: the next first guess lands near its target
    legacy = length_unit == "chars"
    while len(out) < n_samples and attempts < 20 * n_samples:
        attempts += 1
        target = rng.randint(min_tokens, max_tokens)
        sample_seed = rng.random()
        n_facts = None if facts_per_1k is None else max(1, round(facts_per_1k * target / 1000))
        chars = target if legacy else max(16, int(target * chars_per_token))
        best: Example | None = None
        for _ in range(3 if legacy else 4):
            sample_rng = random.Random(sample_seed)
            messages = (
                filler_messages(sample_rng, chars, passages, n_facts, values)
                if passages
                else recall_messages(sample_rng, chars)
            )
            example = tokenize_chat(tokenizer, messages)
            assert example is not None
            n = len(example.input_ids)
            in_range = min_tokens <= n <= max_tokens
            if in_range and (best is None or abs(n - target) < abs(len(best.input_ids) - target)):
                best = example
            if in_range and (legacy or abs(n - target) <= max(8, target // 50)):
                break  # within 2% of the drawn length (legacy: anywhere in the range)
            chars_per_token = chars / max(1, n)
            chars = max(16, int(chars * target / max(1, n)))
        if best is not None:
            out.append(Example(best.input_ids, best.labels, "recall"))
    return out


_REPEAT = "Repeat the text above word for word."


def repeat_examples(
    tokenizer: PreTrainedTokenizerBase,
    n_samples: int,
    min_tokens: int,
    max_tokens: int,
    seed: int,
    passages: list[str],
) -> list[Example]:
    """`n_samples` reconstruction conversations of min_tokens..max_tokens tokens (lengths drawn uniformly):
    a stretch of a passage, the instruction to repeat it, the stretch again as the answer. The stretch is
    about half the sample, so its start lies in windows that are compressed when the answer is written."""
    rng = random.Random(f"repeat-{seed}")
    # one stream of all passages (a pool's passages are a few hundred tokens; a stretch may span several)
    stream: list[int] = []
    for passage in passages:
        stream.extend(tokenizer(passage + "\n\n", add_special_tokens=False)["input_ids"])
    out: list[Example] = []
    attempts = 0
    while len(out) < n_samples and attempts < 4 * n_samples:
        attempts += 1
        target = rng.randint(min_tokens, max_tokens)
        span = max(8, target // 2 - 16)  # the chat header and the instruction take the rest
        if len(stream) <= span:
            continue
        start = rng.randrange(len(stream) - span)
        text = str(tokenizer.decode(stream[start : start + span])).strip()
        messages = [
            {"role": "user", "content": f"{text}\n\n{_REPEAT}"},
            {"role": "assistant", "content": text},
        ]
        example = tokenize_chat(tokenizer, messages)
        if example is not None and min_tokens <= len(example.input_ids) <= max_tokens:
            out.append(Example(example.input_ids, example.labels, "repeat"))
    return out

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from selfctx.errors import SelfctxError
from selfctx.tiny import tiny_tokenizer
from selfctx.train.config import DataConfig, DataSource
from selfctx.train.data import DataMix, MixBatches, build_mix
from selfctx.train.examples import IGNORE_INDEX, Example, pack_text, tokenize_chat


def test_answer_only_labels_cover_exactly_the_assistant_turn() -> None:
    tok = tiny_tokenizer()
    messages = [
        {"role": "user", "content": "Which colour is the sky?"},
        {"role": "assistant", "content": "Blue."},
    ]
    example = tokenize_chat(tok, messages)
    assert example is not None
    labelled = [t for t in example.labels if t != IGNORE_INDEX]
    assert tok.decode(labelled) == "Blue.<|im_end|>\n"
    assert tok.decode(list(example.input_ids)) == tok.apply_chat_template(messages, tokenize=False)


def test_multi_turn_labels_every_assistant_turn_and_no_user_text() -> None:
    tok = tiny_tokenizer()
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "first"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "second"},
    ]
    example = tokenize_chat(tok, messages)
    assert example is not None
    text = tok.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert text == "first<|im_end|>\nsecond<|im_end|>\n"


def test_pack_text_cuts_full_sequences_and_keeps_long_enough_tail() -> None:
    out = pack_text(list(range(25)), length=10, min_tokens=5, source="t")
    assert [len(e.input_ids) for e in out] == [10, 10, 5]
    assert pack_text(list(range(23)), length=10, min_tokens=5, source="t")[-1].input_ids[-1] == 19


def _examples(name: str, n: int) -> list[Example]:
    return [Example((i, i + 1), (i, i + 1), name) for i in range(n)]


def test_mix_is_deterministic_weighted_and_walks_each_source_in_epochs() -> None:
    a, b = _examples("a", 5), _examples("b", 50)
    mix = DataMix([a, b], [3.0, 1.0], seed=7)
    stream = [mix.example(i) for i in range(8000)]
    again = DataMix([a, b], [3.0, 1.0], seed=7)
    assert [again.example(i) for i in range(7999, -1, -1)][::-1] == stream  # order of access is irrelevant
    share = Counter(e.source for e in stream)["a"] / len(stream)
    assert 0.72 < share < 0.78
    first_epoch = [e for e in stream if e.source == "a"][:5]
    assert sorted(e.input_ids for e in first_epoch) == sorted(e.input_ids for e in a)  # without replacement
    other_seed = DataMix([a, b], [3.0, 1.0], seed=8)
    assert [other_seed.example(i) for i in range(50)] != stream[:50]


def test_batches_split_the_same_global_batch_for_any_accum_world() -> None:
    mix = DataMix([_examples("a", 40)], [1.0], seed=0)
    single = MixBatches(mix, micro_batch_size=1, grad_accum_steps=4, pad_id=0).micro_batches(3, 0, 1, "cpu")
    split = [MixBatches(mix, 1, 2, 0).micro_batches(3, r, 2, "cpu") for r in range(2)]
    flat_single = sorted(int(b["input_ids"][0, 0]) for b in single)
    flat_split = sorted(int(b["input_ids"][0, 0]) for rank in split for b in rank)
    assert flat_single == flat_split


def test_sources_are_read_and_filtered(synth_dir: Path, text_dir: Path) -> None:
    tok = tiny_tokenizer()
    cfg = DataConfig(
        sources=[DataSource("synth", str(synth_dir)), DataSource("text", str(text_dir), 0.5)], max_tokens=512
    )
    mix = build_mix(cfg, tok, seed=0)
    assert len(mix.sources[0]) == 12 and all(len(e.input_ids) == 512 for e in mix.sources[1][:-1])
    assert all(e.n_targets > 0 for e in mix.sources[0])
    short = DataConfig(sources=[DataSource("synth", str(synth_dir))], max_tokens=100)
    with pytest.raises(SelfctxError, match="no sample"):
        build_mix(short, tok, seed=0)


def test_missing_synth_folder_is_a_clear_error(tmp_path: Path) -> None:
    cfg = DataConfig(sources=[DataSource("synth", str(tmp_path / "nope"))])
    with pytest.raises(SelfctxError, match="selfctx synth"):
        build_mix(cfg, tiny_tokenizer(), seed=0)


def test_shipped_finetune_config_and_preset_load_with_yarn() -> None:
    from importlib import resources

    from selfctx.config import load_config
    from selfctx.train.config import FinetuneConfig

    config = Path(__file__).resolve().parents[2] / "configs" / "train-7b-yarn.yaml"
    first = config.read_text().splitlines()[0]
    assert first.startswith("# ") and "selfctx train --method finetune --config" in first
    preset = resources.files("selfctx.train") / "presets" / "finetune-smollm2-cpu.yaml"
    with resources.as_file(preset) as preset_path:
        for path in (config, preset_path):
            cfg = load_config(FinetuneConfig, path)
            assert cfg.rope.type == "yarn" and cfg.data.sources


def test_length_ramp_serves_short_samples_first_and_reaches_every_length() -> None:
    lengths = [16, 32, 64, 128, 256]
    source = [Example(tuple(range(n)), tuple(range(n)), "s") for n in lengths for _ in range(4)]
    mix = DataMix([source], [1.0], seed=0, ramp_samples=100, ramp_start=32)
    served = [len(mix.example(i).input_ids) for i in range(200)]
    assert all(n <= mix.length_limit(i) for i, n in enumerate(served))
    assert max(served[:10]) <= 32 + (256 - 32) * 10 // 100
    assert 256 in served[100:] and 16 in served[100:]  # past the ramp: the plain mix again
    again = DataMix([source], [1.0], seed=0, ramp_samples=100, ramp_start=32)
    assert [again.example(i).input_ids for i in range(200)] == [mix.example(i).input_ids for i in range(200)]
    only_long = [Example(tuple(range(300)), tuple(range(300)), "text")]
    cut = DataMix([only_long], [1.0], seed=0, ramp_samples=10, ramp_start=50).example(0)
    assert len(cut.input_ids) == len(cut.labels) == 50  # nothing fits: plain text is cut to the limit
    answer = [Example(tuple(range(300)), (IGNORE_INDEX,) * 299 + (7,), "chat")]
    whole = DataMix([answer], [1.0], seed=0, ramp_samples=10, ramp_start=50).example(0)
    assert len(whole.input_ids) == 300 and whole.labels[-1] == 7  # an answer is never cut off


def test_recall_with_passages_hides_a_fact_among_them_and_asks_for_it() -> None:
    from selfctx.train.recall import recall_examples

    tok = tiny_tokenizer()
    passages = [f"Passage {i} talks about rivers and hills in some detail." * 3 for i in range(10)]
    examples = recall_examples(tok, 8, 300, 900, seed=0, passages=passages)
    assert len(examples) == 8
    for example in examples:
        text = tok.decode(list(example.input_ids))
        answer = tok.decode([t for t in example.labels if t != IGNORE_INDEX]).replace("<|im_end|>\n", "")
        assert answer.isdigit() and f" {answer}." in text  # the value is stated in the context
        assert "Passage" in text and 300 <= len(example.input_ids) <= 900


def test_dense_recall_hides_facts_in_proportion_to_length_and_asks_each_in_its_own_turn() -> None:
    from selfctx.train.recall import recall_examples

    tok = tiny_tokenizer()
    passages = [f"Passage {i} talks about rivers and hills in some detail." * 3 for i in range(10)]
    examples = recall_examples(tok, 6, 400, 1200, seed=0, passages=passages, facts_per_1k=5)
    assert len(examples) == 6
    for example in examples:
        text = tok.decode(list(example.input_ids))
        context, *turns = text.split("<|im_start|>assistant\n")
        answers = [turn.split("<|im_end|>")[0] for turn in turns]
        n = len(example.input_ids)
        assert abs(len(answers) - 5 * n / 1000) <= 2.5  # ~5 facts per 1K tokens (the target, not the result)
        assert len(set(answers)) == len(answers) and all(a.isdigit() and f" {a}." in context for a in answers)
        labelled = tok.decode([t for t in example.labels if t != IGNORE_INDEX])
        assert labelled.replace("<|im_end|>\n", "") == "".join(answers)  # every answer a target, nothing else
    with pytest.raises(ValueError, match="facts_per_1k"):
        DataSource(kind="recall", facts_per_1k=2)  # no passages to hide them among
    with pytest.raises(ValueError, match="facts_per_1k"):
        DataSource(kind="text", path="p", facts_per_1k=2)


def test_phrase_facts_are_spans_of_other_passages_written_back_word_for_word() -> None:
    from selfctx.train.recall import recall_examples

    tok = tiny_tokenizer()
    passages = [" ".join(f"p{i}w{j}" for j in range(30)) + "." for i in range(10)]
    kinds = []
    for values in ("phrases", "mixed"):
        examples = recall_examples(
            tok, 6, 400, 1200, seed=0, passages=passages, facts_per_1k=4, values=values
        )
        assert len(examples) == 6
        for example in examples:
            text = tok.decode(list(example.input_ids))
            context, *turns = text.split("<|im_start|>assistant\n")
            for answer in (turn.split("<|im_end|>")[0] for turn in turns):
                if answer.isdigit():
                    kinds.append("number")
                    continue
                kinds.append("phrase")
                words = answer.split()
                assert 4 <= len(words) <= 10 and answer in context  # stated in the context ...
                assert any(answer in p for p in passages)  # ... as a span of one passage
        if values == "phrases":
            assert set(kinds) == {"phrase"}
    assert set(kinds) == {"phrase", "number"}  # mixed holds both
    with pytest.raises(ValueError, match="fact_values"):
        DataSource(kind="recall", fact_values="phrases")  # no passages to take phrases from


def test_repeat_samples_ask_for_the_stretch_they_hold_with_every_answer_token_a_target() -> None:
    from selfctx.train.recall import repeat_examples

    tok = tiny_tokenizer()
    passages = [f"Passage {i} talks about rivers, hills and the old mill. " * 20 for i in range(5)]
    examples = repeat_examples(tok, 6, 200, 600, 0, passages)
    assert len(examples) == 6
    for example in examples:
        labelled = [t for t in example.labels if t != IGNORE_INDEX]
        answer = tok.decode(labelled).replace("<|im_end|>\n", "")
        text = tok.decode(list(example.input_ids))
        stretch = text.split("<|im_start|>user\n", 1)[1].split("\n\nRepeat the text above word for word.")[0]
        assert answer == stretch and len(labelled) > len(example.input_ids) // 3  # about half is target
        assert 200 <= len(example.input_ids) <= 600
    with pytest.raises(ValueError, match="needs a path"):
        DataSource(kind="repeat")


def _merging_tokenizer(passages: list[str]):  # type: ignore[no-untyped-def]
    """A BPE tokenizer trained in code on `passages`: several characters a token, like a real model's (the
    byte-level test tokenizer has one a token, which hides any confusion of characters with tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from selfctx.tiny import TINY_CHAT_TEMPLATE, TINY_SPECIAL_TOKENS

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(passages, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="<|im_end|>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def test_recall_samples_are_as_long_in_tokens_as_drawn_and_the_legacy_unit_counts_characters() -> None:
    from selfctx.train.recall import recall_examples

    passages = [
        f"Passage {i} talks about the rivers and the hills of the valley in some detail." * 4
        for i in range(20)
    ]
    tok = _merging_tokenizer(passages)
    chars_per_token = len(passages[0]) / len(tok(passages[0])["input_ids"])
    assert chars_per_token > 2.5  # the point of this tokenizer
    made = recall_examples(tok, 16, 200, 2000, seed=0, passages=passages)
    lengths = sorted(len(e.input_ids) for e in made)
    assert len(made) == 16 and lengths[-1] > 1600 and lengths[8] > 700  # uniform over 200..2000 tokens
    legacy = recall_examples(tok, 16, 200, 2000, seed=0, passages=passages, length_unit="chars")
    assert max(len(e.input_ids) for e in legacy) < 800  # drawn in characters: a fraction of it in tokens
    with pytest.raises(ValueError, match="length_unit"):
        DataSource(kind="text", path="p", length_unit="chars")

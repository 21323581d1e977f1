"""lm-evaluation-harness adapter and the likelihood scoring under it (tiny model, byte tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfctx.compress import likelihood
from selfctx.compress.battery import ExpertBattery
from selfctx.compress.model import CompressedLM
from selfctx.errors import SelfctxError
from selfctx.tiny import TINY_TOKENIZER_VOCAB, tiny_llama, tiny_tokenizer

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402

from selfctx.eval.harness import SelfctxLM  # noqa: E402

WINDOW = 16
CONTEXT = "The lighthouse keeper wrote every storm into a green ledger by the stairs. " * 5  # ~380 bytes


def randomized_lm(native: int = 128) -> CompressedLM:
    """Tiny model whose experts have non-zero LoRA weights, so memory tokens differ from the base."""
    model = tiny_llama(vocab_size=TINY_TOKENIZER_VOCAB, initializer_range=0.2)  # varied, not degenerate
    battery = ExpertBattery.create(model, (2, 4, 8))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in battery.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return CompressedLM(model, tiny_tokenizer(), battery, window=WINDOW, native_context=native)


def ll_requests(pairs: list[tuple[str, str]]) -> list[Instance]:
    return [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)
    ]


def full_attention_logprob(
    lm: CompressedLM, context: list[int], continuation: list[int]
) -> tuple[float, bool]:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(ids).logits[0].float(), dim=-1)
    rows = logprobs[len(context) - 1 : -1]
    targets = torch.tensor(continuation)
    picked = rows.gather(-1, targets[:, None])[:, 0]
    return float(picked.sum()), bool((rows.argmax(-1) == targets).all())


def test_short_context_is_scored_by_plain_full_attention() -> None:
    lm = randomized_lm(native=512)
    harness = SelfctxLM(lm=lm)
    context, continuation = "Question: where is the ledger? Answer:", " by the stairs"
    ((score, greedy),) = harness.loglikelihood(ll_requests([(context, continuation)]), disable_tqdm=True)
    ctx_ids, cont_ids = harness._encode_pair(context, continuation)
    expected, expected_greedy = full_attention_logprob(lm, ctx_ids, cont_ids)
    assert score == pytest.approx(expected, abs=1e-4)
    assert greedy == expected_greedy
    assert score < 0


def test_long_context_scores_its_own_greedy_continuation_as_greedy() -> None:
    lm = randomized_lm(native=128)  # 380 bytes cannot fit: the router must pick an expert
    context = SelfctxLM(lm=lm).tok_encode(CONTEXT)
    ratio = lm.route_for(len(context), 7).ratio
    assert ratio > 1
    memory = lm.compress(context[:-1], ratio=ratio, chat=False)
    greedy = lm.continue_ids(memory, context[-1:], max_new_tokens=6)  # the decoding path
    last_changed = greedy[:-1] + [5 + (greedy[-1] - 5 + 1) % 256]
    continuations = [greedy, last_changed, greedy[:2]]
    results = likelihood.score_continuations(lm, context, continuations, ratio=ratio)  # the scoring path
    assert [is_greedy for _, is_greedy in results] == [True, False, True]
    assert results[0][0] > results[1][0]  # same prefix, and only the greedy last token is the argmax


def test_one_compression_serves_every_continuation_of_a_context() -> None:
    lm = randomized_lm(native=128)
    ratios: list[int] = []
    original = lm.compress

    def spy(ids, **kw):
        ratios.append(kw["ratio"])
        return original(ids, **kw)

    lm.compress = spy
    pairs = [(CONTEXT, " green"), ("Short:", " yes"), (CONTEXT, " by the stairs")]
    SelfctxLM(lm=lm, answer_budget=48).loglikelihood(ll_requests(pairs), disable_tqdm=True)
    assert len(ratios) == 2 and ratios[0] > 1 and ratios[1] == 1  # the short context fits natively


def test_batches_and_interleaved_contexts_give_the_one_at_a_time_scores() -> None:
    lm = randomized_lm(native=128)
    pairs = [
        (CONTEXT, " green"),
        ("A short one:", " yes"),
        (CONTEXT, " a much longer continuation"),
        (CONTEXT, "x"),
        ("A short one:", " no, not at all"),
    ]
    batched = SelfctxLM(lm=lm, batch_size=8, answer_budget=48).loglikelihood(
        ll_requests(pairs), disable_tqdm=True
    )
    alone = [
        SelfctxLM(lm=lm, batch_size=1, answer_budget=48).loglikelihood(ll_requests([p]), disable_tqdm=True)[0]
        for p in pairs
    ]
    for (score, greedy), (score_alone, greedy_alone) in zip(batched, alone, strict=True):
        assert score == pytest.approx(score_alone, abs=1e-4)
        assert greedy == greedy_alone
    assert len({round(s, 3) for s, _ in batched}) == len(pairs)  # distinct requests, distinct scores


@pytest.mark.parametrize("ratio,chunk", [(4, 512), (4, 5), (8, 7)])
def test_rolling_loglikelihood_equals_the_compressed_readout(monkeypatch, ratio: int, chunk: int) -> None:
    lm = randomized_lm(native=512)
    monkeypatch.setattr(likelihood, "_LOGIT_CHUNK", chunk)  # small chunks cross window and tail boundaries
    harness = SelfctxLM(lm=lm, ratio=ratio)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(CONTEXT,), idx=0)
    (total,) = harness.loglikelihood_rolling([request], disable_tqdm=True)
    ids = torch.tensor([[harness.prefix_token_id, *harness.tok_encode(CONTEXT)]])
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.logits(ids, ratio)[0].float(), dim=-1)
    expected = logprobs[:-1].gather(-1, ids[0, 1:, None])[:, 0].sum()
    assert total == pytest.approx(float(expected), abs=1e-3)


def test_rolling_loglikelihood_without_compression_is_full_attention() -> None:
    lm = randomized_lm(native=1024)  # fits natively: the router picks ratio 1
    text = CONTEXT[:200]
    ids = [1, *tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]]
    expected, _ = full_attention_logprob(lm, ids[:1], ids[1:])
    assert likelihood.sequence_logprob(lm, ids) == pytest.approx(expected, abs=1e-3)


def test_generate_until_cuts_at_the_first_stop_string() -> None:
    harness = SelfctxLM(lm=randomized_lm(native=128), answer_budget=32)

    def generate(until: list[str]) -> str:
        args = (CONTEXT, {"until": until, "max_gen_toks": 12})
        request = Instance(request_type="generate_until", doc={}, arguments=args, idx=0)
        return str(harness.generate_until([request], disable_tqdm=True)[0])

    text = generate([])
    assert len(text) >= 6
    stop = text[4:6]
    assert generate([stop, "\u2603never"]) == text[: text.index(stop)]


def test_bad_arguments_are_refused_with_a_clear_error() -> None:
    lm = randomized_lm()
    with pytest.raises(SelfctxError, match="ratio 3 has no expert"):
        SelfctxLM(lm=lm, ratio=3)
    with pytest.raises(SelfctxError, match="empty continuation"):
        likelihood.score_continuations(lm, [1, 2, 3], [[]])
    with pytest.raises(SelfctxError, match="at least one context token"):
        likelihood.score_continuations(lm, [], [[4]])
    with pytest.raises(SelfctxError, match="past the native context 128"):
        likelihood.sequence_logprob(lm, list(range(5, 205)), ratio=1)  # 200 raw tokens in a 128 window
    with pytest.raises(SelfctxError, match="past the native context 128"):
        likelihood.sequence_logprob(lm, [5] * 600, ratio=2)  # x2 memory of 600 tokens alone is ~296 entries


def test_registered_with_lm_eval_and_built_from_an_arg_string(monkeypatch) -> None:
    from lm_eval.api.registry import get_model

    assert get_model("selfctx") is SelfctxLM
    built: dict[str, object] = {}

    def fake_from_pretrained(base, experts, **kw):
        built.update(base=base, experts=experts, **kw)
        return randomized_lm()

    monkeypatch.setattr(CompressedLM, "from_pretrained", staticmethod(fake_from_pretrained))
    harness = SelfctxLM.create_from_arg_string(
        "pretrained=smollm2-135m,experts=runs/experts,window=256,ratio=4",
        {"batch_size": "auto", "device": None},
    )
    assert built["base"] == "smollm2-135m" and built["experts"] == "runs/experts" and built["window"] == 256
    assert harness.ratio == 4 and harness.batch_size == 8


def test_command_line_without_lm_eval_says_how_to_install() -> None:
    import subprocess
    import sys

    hidden = "['lm_eval', 'lm_eval.api', 'lm_eval.api.model']"  # None in sys.modules: import fails
    hide = f"import sys, runpy; sys.modules.update(dict.fromkeys({hidden}))"
    run = "runpy.run_module('selfctx.eval.harness', run_name='__main__')"
    done = subprocess.run(
        [sys.executable, "-c", f"{hide}; {run}"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: lm-evaluation-harness is not installed: pip install 'selfctx[harness]' (or lm-eval>=0.4.9)"
    ]


def write_local_tasks(folder: Path, context: str = CONTEXT) -> Path:
    """Two lm-eval tasks over a local jsonl (no hub): multiple choice and generation."""
    rows = [
        {
            "question": f"{context}Where is the ledger kept?",
            "choices": ["by the stairs", "in a boat"],
            "label": 0,
        },
        {"question": f"{context}What colour is the ledger?", "choices": ["red", "green"], "label": 1},
    ]
    data = folder / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "mc.yaml").write_text(
        "task: selfctx_local_mc\n" + common + "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    (folder / "gen.yaml").write_text(
        "task: selfctx_local_gen\n" + common + "output_type: generate_until\n"
        "doc_to_text: '{{question}}'\ndoc_to_target: '{{choices[label]}}'\n"
        "generation_kwargs:\n  until: ['\\n']\n  max_gen_toks: 4\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return folder


def test_simple_evaluate_runs_local_tasks_end_to_end(tmp_path: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(write_local_tasks(tmp_path)), include_defaults=False)
    out = simple_evaluate(
        model=SelfctxLM(lm=randomized_lm(native=128), answer_budget=32),
        tasks=["selfctx_local_mc", "selfctx_local_gen"],
        task_manager=manager,
        log_samples=True,
    )
    assert out is not None
    mc = out["results"]["selfctx_local_mc"]
    assert 0.0 <= mc["acc,none"] <= 1.0
    assert out["results"]["selfctx_local_gen"]["exact_match,none"] in (0.0, 0.5, 1.0)
    samples = out["samples"]["selfctx_local_mc"]
    assert len(samples) == 2 and all(len(s["resps"]) == 2 for s in samples)  # both choices scored


@pytest.mark.slow
def test_lm_eval_command_line_on_smollm2_reads_a_compressed_context(tmp_path: Path) -> None:
    import subprocess
    import sys

    filler = "The harbour town kept its boats painted in many colours, and the gulls were loud. " * 70
    (tmp_path / "tasks").mkdir()
    tasks = write_local_tasks(tmp_path / "tasks", context=CONTEXT + filler)  # ~1.4K tokens > native 1024
    model_args = "pretrained=smollm2-135m,window=256,native_context=1024,answer_budget=64,dtype=float32"
    command = [sys.executable, "-m", "selfctx.eval.harness", "run", "--model", "selfctx"]
    command += ["--model_args", model_args, "--tasks", "selfctx_local_mc,selfctx_local_gen"]
    command += ["--include_path", str(tasks), "--output_path", str(tmp_path / "out"), "--log_samples"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=_offline_env())
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert 0.0 <= results["selfctx_local_mc"]["acc,none"] <= 1.0
    assert results["selfctx_local_gen"]["exact_match,none"] in (0.0, 0.5, 1.0)
    (gen_samples,) = (tmp_path / "out").rglob("samples_selfctx_local_gen_*.jsonl")
    answers = [json.loads(line)["filtered_resps"][0] for line in gen_samples.read_text().splitlines()]
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def _offline_env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "SELFCTX_PROGRESS": "0"}


def test_truncation_baseline_scores_the_head_and_tail_halves_read_raw() -> None:
    lm = randomized_lm(native=512)
    harness = SelfctxLM(lm=lm, truncate=64, answer_budget=16)
    context, continuation = CONTEXT, " ledger"
    ((score, _),) = harness.loglikelihood(ll_requests([(context, continuation)]), disable_tqdm=True)
    ctx_ids, cont_ids = harness._encode_pair(context, continuation)
    kept = ctx_ids[:24] + ctx_ids[-24:]  # 64 - 16 = 48 tokens: the first and the last 24
    assert score == pytest.approx(full_attention_logprob(lm, kept, cont_ids)[0], abs=1e-4)
    with pytest.raises(SelfctxError, match="ratio 1"):
        SelfctxLM(lm=lm, truncate=64, ratio=4)

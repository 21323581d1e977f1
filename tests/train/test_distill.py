"""Self-distillation of the experts: the top-k KL, the teacher and its cache, the objective's masks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfctx.compress import CompressedLM, ExpertBattery
from selfctx.compress.train_loss import TeacherTargets, rest_logprob, topk_kl
from selfctx.tiny import tiny_llama
from selfctx.train import teacher as teacher_mod
from selfctx.train.experts import CompressionObjective, ObjectiveSettings
from selfctx.train.teacher import Teacher, teacher_topk

WINDOW = 16
SINK = 1


def make_lm(seed: int = 0, memory_input: str = "span_last") -> CompressedLM:
    model = tiny_llama(seed=seed, initializer_range=0.2)
    battery = ExpertBattery.create(model, (4,), memory_input=memory_input)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # a non-trivial expert, so the memory differs from the raw window
        for p in battery.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return CompressedLM(model, None, battery, window=WINDOW, native_context=512, sink=SINK)


def ids_of(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (1, n), generator=torch.Generator().manual_seed(seed))


def targets_everywhere(lm: CompressedLM, ids: torch.Tensor, k: int = 16) -> TeacherTargets:
    top_ids, top_lp = teacher_topk(lm.model, ids, k)
    return TeacherTargets(top_ids, top_lp, torch.ones_like(ids, dtype=torch.bool))


def test_topk_kl_is_zero_for_equal_distributions_and_the_full_kl_when_k_is_the_vocabulary():
    gen = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(5, 50, generator=gen), -1)
    q = torch.log_softmax(torch.randn(5, 50, generator=gen), -1)
    everything = torch.arange(50).expand(5, 50)
    assert torch.allclose(topk_kl(p, p, rest_logprob(p, everything)), torch.zeros(5), atol=1e-6)
    full = (p.exp() * (p - q)).sum(-1)
    assert torch.allclose(topk_kl(p, q, rest_logprob(q, everything)), full, atol=1e-5)  # k = V: no rest
    top = p.topk(8, -1)
    partial = topk_kl(top.values, q.gather(1, top.indices), rest_logprob(q, top.indices))
    assert (partial >= -1e-6).all() and (partial <= full + 1e-5).all()  # a coarser partition: smaller KL
    same = topk_kl(top.values, p.gather(1, top.indices), rest_logprob(p, top.indices))
    assert torch.allclose(same, torch.zeros(5), atol=1e-6)
    # a student with almost all its mass on the top-k: the rest bucket stays exact (no 1 - sum cancellation)
    peaked = torch.log_softmax(torch.cat([torch.full((1, 4), 30.0), torch.zeros(1, 46)], 1), -1)
    ids = peaked.topk(4, -1).indices
    assert torch.isclose(rest_logprob(peaked, ids), torch.logsumexp(peaked[0, 4:], -1)).all()


def test_distillation_loss_is_zero_where_the_student_reads_everything_raw():
    lm = make_lm()
    short = ids_of(SINK + WINDOW - 3)  # no full window: the student is the base model reading it raw
    with torch.no_grad():
        out = lm.forward_train(
            short, short.clone(), 4, checkpointing=False, teacher=targets_everywhere(lm, short)
        )
    assert int(out.kl_count.sum()) == short.shape[1]
    assert float(out.kl_sum.sum()) < 1e-4 * short.shape[1]
    long = ids_of(SINK + 3 * WINDOW + 5, seed=1)
    first = torch.zeros_like(long, dtype=torch.bool)
    first[:, : SINK + WINDOW] = True  # the sink and the first window read no memory either
    top_ids, top_lp = teacher_topk(lm.model, long, 16)
    with torch.no_grad():
        early = lm.forward_train(
            long, long.clone(), 4, checkpointing=False, teacher=TeacherTargets(top_ids, top_lp, first)
        )
        late = lm.forward_train(
            long, long.clone(), 4, checkpointing=False, teacher=TeacherTargets(top_ids, top_lp, ~first)
        )
    assert float(early.kl_sum.sum()) < 1e-4 * (SINK + WINDOW)
    assert float(late.kl_sum.sum()) / int(late.kl_count.sum()) > 1e-3  # the memory is lossy: a real signal


def test_distillation_gradients_reach_only_the_experts_parameters():
    lm = make_lm()
    trainable = {id(p) for p in lm.trainable_parameters(4)}
    ids = ids_of(SINK + 3 * WINDOW + 2)
    settings = ObjectiveSettings(kind="distill")
    objective = CompressionObjective(4, True, settings, Teacher(lm.model, "tiny", 16), (SINK, WINDOW))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
    objective(type("M", (), {"compressed": lm})(), batch).backward()
    for name, p in lm.named_parameters():
        if id(p) in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient"


def test_objective_masks_and_per_sample_normalisation():
    lm = make_lm()
    ids = ids_of(SINK + 2 * WINDOW + 4)
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    teacher = Teacher(lm.model, "tiny", 8)
    everywhere = CompressionObjective(4, False, ObjectiveSettings(kind="distill"), teacher, (SINK, WINDOW))
    mask = everywhere._kl_mask(batch)
    assert not mask[:, : SINK + WINDOW].any() and mask[:, SINK + WINDOW :].all()
    answers = CompressionObjective(
        4, False, ObjectiveSettings(kind="distill", distill_on="labels"), teacher, (SINK, WINDOW)
    )
    assert answers._kl_mask(batch).nonzero()[:, 1].tolist() == list(range(ids.shape[1] - 4, ids.shape[1] - 1))
    assert everywhere.targets(batch) == 1  # one sample
    tokens = CompressionObjective(
        4, False, ObjectiveSettings(kind="mix", normalise="token"), teacher, (SINK, WINDOW)
    )
    assert tokens.targets(batch) == 3 + int(mask.sum())


def test_teacher_cache_round_trips_and_a_write_killed_midway_leaves_no_entry(tmp_path: Path, monkeypatch):
    model = tiny_llama(seed=0)
    cache = tmp_path / "cache"
    first = Teacher(model, "tiny-0", 8, cache)
    a, b = ids_of(40, seed=1)[0], ids_of(40, seed=2)[0]
    ids_a, lp_a = first.topk(a)  # type: ignore[misc]
    assert len(list(cache.rglob("*.safetensors"))) == 1

    def killed(tensors):  # the process dies while the entry is being written
        raise KeyboardInterrupt

    monkeypatch.setattr(teacher_mod, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        first.topk(b)
    monkeypatch.undo()
    assert len(list(cache.rglob("*.safetensors"))) == 1  # nothing half-written under an entry's name

    def no_model(*args, **kwargs):
        raise AssertionError("a cached sample must not run the teacher again")

    again = Teacher(model, "tiny-0", 8, cache)
    monkeypatch.setattr(teacher_mod, "teacher_topk", no_model)
    ids_again, lp_again = again.topk(a)  # type: ignore[misc]
    assert torch.equal(ids_again, ids_a) and torch.allclose(lp_again, lp_a)
    monkeypatch.undo()
    ids_b, _ = again.topk(b)  # type: ignore[misc]  # recomputed after the killed write
    assert ids_b.shape == (40, 8)
    other = Teacher(model, "tiny-1", 8, cache)  # another model's identity never reads this entry
    assert other._key(a) != again._key(a)


def test_a_sample_longer_than_the_teacher_reads_has_no_teacher():
    model = tiny_llama(seed=0, max_position_embeddings=32)
    teacher = Teacher(model, "tiny", 4)
    assert teacher.targets(ids_of(40), torch.ones(1, 40, dtype=torch.bool)) is None
    assert teacher.targets(ids_of(30), torch.ones(1, 30, dtype=torch.bool)) is not None


def test_teacher_reads_each_padded_row_at_its_own_length(tmp_path: Path):
    model = tiny_llama(seed=0)
    teacher = Teacher(model, "tiny-0", 4, tmp_path / "cache")
    short, long = ids_of(20, seed=1)[0], ids_of(30, seed=2)[0]
    batch = torch.zeros(2, 30, dtype=torch.long)
    batch[0, :20], batch[1] = short, long
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :20], mask[1] = True, True
    targets = teacher.targets(batch, mask, torch.tensor([20, 30]))
    assert targets is not None
    alone_ids, alone_lp = teacher.topk(short)  # type: ignore[misc]
    assert torch.equal(targets.ids[0, :20], alone_ids) and torch.allclose(targets.logprobs[0, :20], alone_lp)
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 2  # keyed by the unpadded rows

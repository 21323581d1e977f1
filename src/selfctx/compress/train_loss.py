"""The per-position training terms of the compressed student: next-token cross-entropy and the KL divergence
from a teacher (the same frozen model reading the raw input with full attention).

The teacher is kept as its top-k log-probabilities per position; the rest of its mass is one more bucket.
The KL is then taken between two (k+1)-category distributions — teacher's top-k tokens plus "everything
else" — which is >= 0, exactly 0 when the student predicts what the teacher does, and needs k numbers per
position instead of the whole vocabulary (so teacher outputs can be cached on disk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
_TINY = 1e-12


@dataclass
class TeacherTargets:
    """What the student is distilled towards, aligned with the input ids (position t predicts token t+1).

    ids, logprobs: (B, N, k) the teacher's top-k next tokens and their log-probabilities;
    mask: (B, N) bool, the positions whose KL counts.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    mask: torch.Tensor


def topk_kl(
    teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor, student_rest: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) over the teacher's top-k tokens plus one bucket for the remaining mass.

    teacher_logprobs, student_logprobs: (K, k), log-probabilities of the same k tokens; student_rest: (K,) the
    log of the student's mass on every other token (a logsumexp, so it stays exact when that mass is tiny)
    -> (K,) nats."""
    p = teacher_logprobs.float().exp()  # (K, k)
    head = (p * (teacher_logprobs.float() - student_logprobs.float())).sum(-1)  # (K,)
    p_rest = (1.0 - p.sum(-1)).clamp(min=0.0)  # (K,)
    rest = torch.where(
        p_rest > 0, p_rest * (p_rest.clamp(min=_TINY).log() - student_rest.float()), torch.zeros_like(p_rest)
    )
    return head + rest


def rest_logprob(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass of (K, V) log-probabilities outside the (K, k) ids -> (K,)."""
    return logp.scatter(1, ids, float("-inf")).logsumexp(-1)


def loss_terms(
    head: nn.Module,
    states: torch.Tensor,
    targets: torch.Tensor,
    rows: torch.Tensor,
    batch: int,
    teacher_ids: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed per-row terms for K positions of a batch -> (2, B): row 0 cross-entropy, row 1 KL.

    states (K, D) normed hidden states; targets (K,) next tokens (IGNORE_INDEX: no cross-entropy there);
    rows (K,) which batch row each position belongs to; teacher_* (K, k) and kl_mask (K,) where distilled."""
    logp = F.log_softmax(head(states).float(), dim=-1)  # (K, V)
    labelled = targets != IGNORE_INDEX
    ce = -logp.gather(1, targets.clamp(min=0)[:, None])[:, 0] * labelled  # (K,)
    if teacher_ids is not None and teacher_logprobs is not None and kl_mask is not None:
        kl = topk_kl(teacher_logprobs, logp.gather(1, teacher_ids), rest_logprob(logp, teacher_ids))
        kl = torch.where(kl_mask, kl, torch.zeros_like(kl))  # (K,)
    else:
        kl = torch.zeros_like(ce)
    return logp.new_zeros(2, batch).index_add(1, rows, torch.stack([ce, kl]))

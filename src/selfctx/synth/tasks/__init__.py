"""The six tasks: name -> builder (see tasks.base for what a builder is)."""

from __future__ import annotations

from selfctx.synth.tasks import code, logic, multiqa, qa, simdiff, summarization
from selfctx.synth.tasks.base import Builder

TASKS: dict[str, Builder] = {
    "qa": qa.build,
    "summarization": summarization.build,
    "simdiff": simdiff.build,
    "multiqa": multiqa.build,
    "logic": logic.build,
    "code": code.build,
}

"""What every evaluation runner shares: a resumable file of finished rows, and the input cap a method takes.

A runner predicts items one by one (or in batches) and appends each finished row to a JSONL file, flushed
to disk, so a stopped run resumes where it was. One rule on reading it back: a torn last line (a crash in
the middle of a write) is dropped and that item runs again; a bad line anywhere else is an error that names
the line, because silently skipping it would hide a damaged file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.eval.methods import Method
from selfctx.fsutil import write_jsonl_atomic


class CellLog:
    """The rows of one run, keyed by `row[key]`; `done` maps key -> row."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.done: dict[str, dict[str, Any]] = {}
        if not path.is_file():
            return
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()  # the file ends with a newline: no partial last line
        good: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            last = number == len(lines)
            try:
                # a row written whole ends with a newline: a last line without one is torn, even if it parses
                if last and not data.endswith(b"\n"):
                    raise ValueError("torn")
                good.append(json.loads(line.decode("utf-8")))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError (a write cut inside a character)
                if not last:
                    raise SelfctxError(
                        f"{path}:{number} is not valid JSON: delete that line or the file"
                    ) from None
        if sum(1 for line in lines if line.strip()) != len(good):
            write_jsonl_atomic(path, good)  # drop the torn last line, so appends start on a clean line
        self.done = {str(row[key]): row for row in good if key in row}

    def add(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done[str(row[self.key])] = row


def input_limit(method: Method, max_new_tokens: int, cap: int) -> int:
    """Prompt tokens the method may read: the runner's cap, lowered to the method's own limit if any."""
    own = method.input_limit(max_new_tokens)
    return min(cap, own) if own is not None else cap

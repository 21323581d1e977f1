"""Atomic writes honour the umask like any other tool (mkstemp's 0600 must not survive the rename)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from selfctx.fsutil import current_umask, write_json_atomic, write_text_atomic


@pytest.fixture
def umask_027() -> Iterator[None]:
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing_it(umask_027: None) -> None:
    assert current_umask() == 0o027
    assert current_umask() == 0o027


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_atomic_files_get_the_mode_an_ordinary_open_gives(tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
        write_text_atomic(tmp_path / "atomic.txt", "x")
        write_json_atomic(tmp_path / "atomic.json", {"a": 1})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic.txt") == _mode(plain) == 0o666 & ~mask
    assert _mode(tmp_path / "atomic.json") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.json", "atomic.txt", "plain.txt"]

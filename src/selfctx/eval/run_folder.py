"""A result folder is bound to the settings that made it: a resumed run must have the same ones.

`bind_run` is called once per method folder before anything is predicted into it. A fresh folder gets
run.json (the method's description and every setting that changes its outputs: what the report reads); a
folder that already holds a run is resumed only when its run.json records exactly these settings, else a
one-line error names the first differing setting — a folder never mixes predictions made under different
settings, and run.json always describes every prediction in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfctx.errors import SelfctxError
from selfctx.fsutil import write_json_atomic

RUN_FILE = "run.json"
_MISSING = "(not recorded)"


def bind_run(folder: Path, settings: dict[str, Any]) -> None:
    """Write `settings` to folder/run.json, or check that the run already there was made with them."""
    wanted = json.loads(json.dumps(settings))  # compare as stored: tuples are lists in JSON
    run_file = folder / RUN_FILE
    if run_file.is_file():
        recorded = json.loads(run_file.read_text())
        missing = sorted(set(wanted) - set(recorded))
        if missing:  # a record from before these settings were kept: nothing to compare them with
            raise SelfctxError(
                f"{folder} holds a run whose run.json does not record {', '.join(missing)} (an older selfctx "
                "wrote it): pass another --out to start a fresh run"
            )
        for key in sorted(set(wanted) | set(recorded)):
            old, new = recorded.get(key, _MISSING), wanted.get(key, _MISSING)
            if old != new:
                raise SelfctxError(
                    f"{folder} holds a run made with {key}={_show(old)}, this one has {key}={_show(new)}: "
                    f"pass another --out (or delete {folder}) so one folder never mixes settings"
                )
        return
    if folder.is_dir() and any(folder.iterdir()):
        raise SelfctxError(
            f"{folder} holds files but no {RUN_FILE} (an older or foreign run): pass another --out or "
            "delete it"
        )
    write_json_atomic(run_file, wanted)


def _show(value: Any) -> str:
    return value if value == _MISSING else json.dumps(value)

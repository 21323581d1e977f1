"""Packaged training presets: selfctx/train/presets/<method>-<name>.yaml, read and validated in one place."""

from __future__ import annotations

from importlib import resources
from typing import Any

from selfctx.errors import SelfctxError


def preset_names(method: str) -> list[str]:
    folder = resources.files("selfctx.train") / "presets"
    prefix = f"{method}-"
    return sorted(
        p.name[len(prefix) : -len(".yaml")]
        for p in folder.iterdir()
        if p.name.startswith(prefix) and p.name.endswith(".yaml")
    )


def preset_defaults(cls: type, method: str, name: str) -> dict[str, Any]:
    """The preset's values as a plain dict (validated by building `cls` from it)."""
    from selfctx.config import load_config, to_dict

    names = preset_names(method)
    if name not in names:
        raise SelfctxError(f"unknown {method} preset {name!r}: use one of {', '.join(names) or '(none)'}")
    file = resources.files("selfctx.train") / "presets" / f"{method}-{name}.yaml"
    with resources.as_file(file) as path:
        return dict(to_dict(load_config(cls, path)))

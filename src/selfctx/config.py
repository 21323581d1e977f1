"""Typed configuration: frozen dataclasses filled from YAML plus dotted overrides; unknown keys are errors.

    cfg = load_config(SynthConfig, "configs/synth.yaml", ["length.target=16384", "tasks=[qa,code]"])

Every stage writes `to_dict(cfg)` next to its output so a run can be reproduced from its own directory.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from selfctx.errors import SelfctxError

C = TypeVar("C")


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON/YAML-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except SelfctxError as exc:
                errors.append(str(exc))
        raise SelfctxError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if origin is typing.Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise SelfctxError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise SelfctxError(f"{where}: expected a list, got {value!r}")
        args = get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SelfctxError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise SelfctxError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SelfctxError(f"{where}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, bool):
            raise SelfctxError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value) if not isinstance(value, float) or value.is_integer() else _fail(where, value)
        except (TypeError, ValueError):
            raise SelfctxError(f"{where}: expected an integer, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise SelfctxError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if isinstance(value, (dict, list)):
            raise SelfctxError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if hint is Path:
        return Path(value)
    return value


def _fail(where: str, value: Any) -> Any:
    raise SelfctxError(f"{where}: expected an integer, got {value!r}")


def _build(cls: type[C], data: dict[str, Any], where: str) -> C:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise SelfctxError(
            f"unknown config key {prefix}{unknown[0]}: valid keys here are {', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _coerce(value, hints[name], f"{where}.{name}" if where else name)
        for name, value in data.items()
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, SelfctxError) as exc:
        raise SelfctxError(f"{where or cls.__name__}: {exc}") from None


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise SelfctxError(f"override {dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """["a.b=1", "c=[x,y]"] -> {"a": {"b": 1}, "c": ["x", "y"]} (values parsed as YAML scalars)."""
    data: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise SelfctxError(f"override {item!r} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return data


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> C:
    """Build `cls` from (defaults ← YAML file ← dotted overrides). Unknown keys and bad values are errors."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise SelfctxError(f"config file {file} does not exist: pass the path of a YAML file")
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SelfctxError(f"config file {file} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(loaded, dict):
            raise SelfctxError(f"config file {file} must hold a mapping at the top level")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides or []))
    return _build(cls, data, "")


def replace(cfg: C, **changes: Any) -> C:
    """dataclasses.replace, typed."""
    return dataclasses.replace(cfg, **changes)  # type: ignore[type-var]

"""Turn recipes, YAML files and `--set a.b=c` overrides into a validated RunConfig, and back.

Recipes are YAML files shipped in `unisd/config/recipes/`; a recipe may name a `base:` recipe
whose fields it extends. Unknown keys are errors that list the valid keys of that section, so a
typo never silently does nothing. This module does not know what any field means: meaning and
validation live in `schema.py`.
"""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from unisd.config.schema import ConfigError, RunConfig

RECIPE_PACKAGE = "unisd.config.recipes"


def recipe_names() -> list[str]:
    """Names of the shipped recipes, sorted."""
    files = resources.files(RECIPE_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def recipe_dict(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The recipe's fields as a nested dict, with its `base:` chain merged in."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        data = _read_yaml(path.read_text(), str(path))
    else:
        if name not in recipe_names():
            raise ConfigError(f"unknown recipe {name!r}; valid recipes: {', '.join(recipe_names())}")
        text = resources.files(RECIPE_PACKAGE).joinpath(f"{name}.yaml").read_text()
        data = _read_yaml(text, f"recipe {name}")
    base = data.pop("base", None)
    if base is None:
        return data
    if base in _seen:
        raise ConfigError(f"recipe {name!r}: circular base chain {' -> '.join(_seen + (base,))}")
    return deep_merge(recipe_dict(base, _seen + (name,)), data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=1e-5' -> (['optim', 'lr'], 1e-05). The value is read as YAML (numbers, bools,
    lists, null); anything else stays a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected the form section.field=value, e.g. optim.lr=1e-5")
    key, raw = text.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ConfigError(f"override {text!r}: empty field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return path, value


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: {part!r} is a value, not a section")
    node[path[-1]] = value


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check/convert a YAML value against a dataclass field's type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads "1e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple:
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        return [_coerce(v, args[0], where) for v in value] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys raise ConfigError naming them."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        section = where or "config"
        raise ConfigError(f"{section}: unknown field(s) {', '.join(unknown)}; valid fields: "
                          f"{', '.join(sorted(names))}")
    kwargs = {}
    for name, value in data.items():
        path = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
            kwargs[name] = from_dict(hint, value, path)
        else:
            kwargs[name] = _coerce(value, hint, path)
    return cls(**kwargs)


def load_config(recipe: str = "sdft", overrides: list[str] | tuple[str, ...] = (),
                config_file: str | None = None) -> RunConfig:
    """Recipe, then an optional YAML file, then `a.b=c` overrides; validated."""
    tree = recipe_dict(recipe)
    tree.setdefault("recipe", Path(recipe).stem)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        tree = deep_merge(tree, _read_yaml(path.read_text(), str(path)))
    for text in overrides:
        path, value = parse_override(text)
        set_path(tree, path, value)
    return from_dict(RunConfig, tree).validate()


def to_dict(cfg: Any) -> dict[str, Any]:
    data = dataclasses.asdict(cfg)

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(data)


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no config.yaml (is this a run directory?)")
    return from_dict(RunConfig, _read_yaml(path.read_text(), str(path))).validate()

"""load: a target file -> a validated TargetFile.

A visible pipeline, one step each: parse (YAML) -> schema (pydantic) ->
semantic checks (facts about GPUs, CUDA, vLLM) happen per variant in expand.
Every failure is one ConfigError line naming file, key, value and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import ConfigError
from .paths import targets_dir
from .target import TargetBody, TargetFile

DEFAULT_TARGET = "cpu"


def list_targets() -> list[str]:
    """Names of the bundled targets, sorted."""
    return sorted(p.stem for p in targets_dir().glob("*.yaml"))


def resolve_ref(ref: str | Path) -> Path:
    """A target name (bundled) or a path to a target file."""
    text = str(ref)
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or "/" in text or path.is_file():
        if not path.is_file():
            raise ConfigError(text, "", text, "no such target file")
        return path
    bundled = targets_dir() / f"{text}.yaml"
    if not bundled.is_file():
        raise ConfigError("--target", "", text, "unknown target", allowed=", ".join(list_targets()) + ", or a path to a .yaml file")
    return bundled


def parse(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(str(path), "", where, f"not valid YAML: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "<bytes>", "not UTF-8 text") from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", type(data).__name__, "a target file is a mapping of keys", allowed="name, platform, software, model, serve, ...")
    return data


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of loc (for listing allowed keys)."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        current = field.annotation
        # unwrap Optional[...] / X | None
        args = getattr(current, "__args__", None)
        if args:
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            current = models[0] if models else current
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _allowed(model: type[BaseModel], err: dict[str, Any]) -> str | None:
    ctx = err.get("ctx") or {}
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, tuple(err["loc"]))
        return ", ".join(owner.model_fields) if owner else None
    if kind == "literal_error":
        return str(ctx.get("expected"))
    if kind == "string_pattern_mismatch":
        return f"text matching {ctx.get('pattern')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return err["msg"].replace("Input should be ", "")
    if kind == "missing":
        return None
    return None


def schema_error(path: str, model: type[BaseModel], exc: ValidationError, prefix: str = "") -> ConfigError:
    """The first pydantic error as one ConfigError line."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    value = err.get("input")
    if err["type"] == "missing":
        value = None
        msg = "required key is missing"
    else:
        msg = err["msg"]
    if isinstance(value, dict):
        value = "{...}"
    return ConfigError(path, key, value, msg, allowed=_allowed(model, err))


def load_file(ref: str | Path) -> tuple[Path, TargetFile, dict[str, Any]]:
    """Parse and schema-check a target file; return (path, model, raw mapping)."""
    path = resolve_ref(ref)
    raw = parse(path)
    try:
        target = TargetFile.model_validate(raw)
    except ValidationError as exc:
        raise schema_error(str(path), TargetFile, exc) from None
    if path.parent.resolve() == targets_dir().resolve() and path.stem != target.name:
        raise ConfigError(str(path), "name", target.name, "a bundled target's name must match its file name", allowed=path.stem)
    return path, target, raw


def load_target(ref: str | Path = DEFAULT_TARGET):
    """The Target (file model plus its variants' inputs); see expand.expand()."""
    from .expand import Target

    path, model, raw = load_file(ref)
    return Target(path=path, file=model, raw=raw)


def validate_body(path: str, data: dict[str, Any], prefix: str = "") -> TargetBody:
    try:
        return TargetBody.model_validate(data)
    except ValidationError as exc:
        raise schema_error(path, TargetBody, exc, prefix) from None

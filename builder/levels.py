"""Verification levels each variant has reached on this machine, and when.

Stored as JSON in ``state_dir()/levels.json``::

    {"cpu": {"rendered": {"time": "2026-11-26T05:10:00+00:00", "details": {...}}, ...}, ...}

Levels are ordered; ``highest`` answers the highest one recorded. Writes are
atomic (temp file + rename) under an exclusive lock, so concurrent imgforge
processes do not lose each other's records.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .paths import state_dir

LEVELS = ("rendered", "linted", "locked", "built", "booted", "served", "reproducible")
RANK = {name: i for i, name in enumerate(LEVELS)}


def state_file() -> Path:
    return state_dir() / "levels.json"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a damaged state file only forgets what was reached; it is rewritten below
    return data if isinstance(data, dict) else {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def record(variant_name: str, level: str, details: dict[str, Any] | None = None) -> str:
    """Note that variant_name reached level now; returns the time written (ISO 8601, UTC)."""
    if level not in RANK:
        raise ValueError(f"unknown verification level {level!r} (known: {', '.join(LEVELS)})")
    path = state_file()
    when = _now()
    with _locked(path):
        data = _read(path)
        entry = data.setdefault(variant_name, {})
        entry[level] = {"time": when, "details": details or {}}
        data[variant_name] = {k: entry[k] for k in sorted(entry, key=lambda k: RANK.get(k, len(LEVELS)))}
        fd, tmp = tempfile.mkstemp(prefix=".levels-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(dict(sorted(data.items())), fh, indent=1)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return when


def reached(variant_name: str) -> dict[str, dict[str, Any]]:
    """Every level recorded for the variant: level -> {"time", "details"}."""
    entry = _read(state_file()).get(variant_name, {})
    return {k: v for k, v in entry.items() if k in RANK and isinstance(v, dict)}


def highest(variant_name: str) -> tuple[str, str] | None:
    """(level, iso_time) of the highest level recorded, or None."""
    got = reached(variant_name)
    if not got:
        return None
    level = max(got, key=RANK.__getitem__)
    return level, str(got[level].get("time", ""))

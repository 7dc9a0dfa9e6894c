"""Where imgforge finds its bundled data and keeps its cache and state."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def data_root() -> Path:
    """Root holding targets/, images/ and compose/.

    A wheel carries them under builder/_data; a source checkout (or an editable
    install) has them beside the package.
    """
    bundled = PACKAGE_DIR / "_data"
    if bundled.is_dir():
        return bundled
    return PACKAGE_DIR.parent


def facts_dir() -> Path:
    return PACKAGE_DIR / "facts"


def targets_dir() -> Path:
    return data_root() / "targets"


def images_dir() -> Path:
    return data_root() / "images"


def compose_dir() -> Path:
    return data_root() / "compose"


def cache_dir() -> Path:
    """Content-addressed download cache (sha256-named files)."""
    env = os.environ.get("IMGFORGE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "imgforge"


def state_dir() -> Path:
    """Per-machine state: verification levels reached, generated keys."""
    env = os.environ.get("IMGFORGE_STATE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "imgforge"

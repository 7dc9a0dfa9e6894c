"""Facts about upstream hardware and packages, kept as data files beside this module.

Python code reads them; it never restates them.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

FACTS_DIR = Path(__file__).resolve().parent


@lru_cache(maxsize=None)
def load(name: str) -> dict[str, Any]:
    path = FACTS_DIR / name
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def gpus() -> dict[str, dict[str, Any]]:
    return load("gpus.json").get("gpus", {})


def canonical_gpu(name: str) -> str | None:
    """The gpus.json key for a GPU name or alias (case and spacing insensitive)."""
    def norm(s: str) -> str:
        return "".join(s.lower().split()).replace("nvidia", "").replace("geforce", "")

    wanted = norm(name)
    for key, info in gpus().items():
        if norm(key) == wanted or any(norm(a) == wanted for a in info.get("aliases", [])):
            return key
    return None


def gpu(name: str) -> dict[str, Any] | None:
    key = canonical_gpu(name)
    if key is None:
        return None
    return {"name": key, **gpus()[key]}


def cuda_versions() -> dict[str, dict[str, Any]]:
    return load("cuda.json").get("cuda", {})


def attention_backends() -> dict[str, dict[str, Any]]:
    return load("attention_backends.json").get("backends", {})


def cc_tuple(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)

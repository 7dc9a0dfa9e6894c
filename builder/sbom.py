"""SBOM from the lock: a CycloneDX 1.5 JSON document listing every pinned wheel and Debian package.

The lock is the complete list of what goes into the images (nothing is installed that is not
pinned there), so the SBOM is generated from it rather than by scanning the images: every
component carries its version, a package URL (``pkg:pypi/...``, ``pkg:deb/debian/...?arch=``),
the sha256 of the file that was installed and the URL it came from.

The document is deterministic (serial number derived from the lock hash, timestamp =
SOURCE_DATE_EPOCH, sorted components), so publishing it twice gives the same digest.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from . import __version__

SERVICES = ("vllm", "webui", "gateway")
MEDIA_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.5"
_NS = uuid.UUID("5b0ea3a4-2f55-4e0e-9d7c-6b1b6c9b1e3a")  # fixed namespace for serial numbers


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _created(lock: dict[str, Any]) -> str:
    return datetime.fromtimestamp(int(lock["source_date_epoch"]), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def wheel_purl(w: dict[str, Any]) -> str:
    return f"pkg:pypi/{_norm(w['name'])}@{quote(str(w['version']), safe='')}"


def deb_purl(d: dict[str, Any], lock: dict[str, Any]) -> str:
    arch = d.get("arch") or lock.get("platform", {}).get("deb_arch", "amd64")
    suite = lock.get("debian", {}).get("suite", "bookworm")
    return f"pkg:deb/debian/{d['name']}@{quote(str(d['version']), safe='')}?arch={arch}&distro={suite}"


def service_contents(lock: dict[str, Any], service: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(debs, wheels) that go into one service's image; service None: the whole lock."""
    debs = lock["debian"]["packages"]
    py = lock["python"]
    if service is None:
        wheels = [w for group in py.values() for w in group]
        return list(debs), wheels
    sets = lock["debian"].get("sets", {})
    names = set(sets.get("base", []))
    if service == "gateway":
        names |= set(sets.get("gateway", []))
        groups: list[str] = []
    else:
        groups = [g for g in ("torch", service) if g in py]
    return [d for d in debs if d["name"] in names], [w for g in groups for w in py[g]]


def _component(kind: str, entry: dict[str, Any], purl: str, services: list[str]) -> dict[str, Any]:
    comp: dict[str, Any] = {
        "type": "library" if kind == "wheel" else "application",
        "bom-ref": f"{purl}#{entry['sha256'][:16]}",
        "name": entry["name"],
        "version": str(entry["version"]),
        "purl": purl,
        "hashes": [{"alg": "SHA-256", "content": entry["sha256"]}],
        "properties": [{"name": "imgforge:file", "value": entry.get("filename", "")},
                       {"name": "imgforge:kind", "value": kind}]
                      + [{"name": "imgforge:service", "value": s} for s in services],
    }
    if entry.get("url"):
        comp["externalReferences"] = [{"type": "distribution", "url": entry["url"]}]
    return comp


def generate(variant, lock: dict[str, Any], service: str | None = None) -> dict[str, Any]:
    """The CycloneDX 1.5 document of one service's image (or of the whole variant when None)."""
    from .lock import lock_hash

    lh = lock_hash(lock)
    debs, wheels = service_contents(lock, service)
    where: dict[str, list[str]] = {}
    for svc in SERVICES:
        d, w = service_contents(lock, svc)
        if svc != "gateway" and svc not in lock["python"]:
            continue
        for e in d + w:
            where.setdefault(e["sha256"], []).append(svc)
    comps: dict[tuple[str, str], dict[str, Any]] = {}
    for d in debs:
        p = deb_purl(d, lock)
        comps.setdefault((p, d["sha256"]), _component("deb", d, p, where.get(d["sha256"], [])))
    for w in wheels:
        p = wheel_purl(w)
        comps.setdefault((p, w["sha256"]), _component("wheel", w, p, where.get(w["sha256"], [])))
    name = f"{variant.name}-{service}" if service else variant.name
    sw = variant.spec.software
    props = {
        "imgforge:target": variant.target.name,
        "imgforge:variant": variant.name,
        "imgforge:lock-hash": lh,
        "imgforge:source-date-epoch": str(lock["source_date_epoch"]),
        "imgforge:vllm-version": sw.vllm,
        "imgforge:cuda-version": variant.spec.platform.cuda or "none",
        "imgforge:arch": variant.spec.platform.arch,
    }
    return {
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid5(_NS, f'{name}:{lh}')}",
        "version": 1,
        "metadata": {
            "timestamp": _created(lock),
            "tools": {"components": [{"type": "application", "name": "imgforge", "version": __version__}]},
            "component": {"type": "container", "bom-ref": f"imgforge/{name}:{lh}", "name": f"imgforge/{name}",
                          "version": lh},
            "properties": [{"name": k, "value": v} for k, v in props.items()],
        },
        "components": [comps[k] for k in sorted(comps)],
    }


def dumps(doc: dict[str, Any]) -> bytes:
    """Canonical bytes (the SBOM blob pushed to a registry)."""
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()

"""Reproducibility: build from clean and compare digests; explain a difference layer by layer.

A clean build uses its own buildah image store and build directory (nothing cached). A second
clean build runs under a different clock, timezone, locale, umask, hostname (``unshare --uts``)
and build directory. When image IDs differ, the first differing layer of each image is exported
from both stores and compared entry by entry (names, metadata, content hashes); diffoscope, where
installed, writes a full report beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .build import storage_env
from .errors import ImgforgeError
from .rootfs import tar_index


@dataclass
class LayerDiff:
    service: str
    index: int
    layer_a: str
    layer_b: str
    files: list[str] = field(default_factory=list)
    report: str | None = None


def image_inspect(ref: str, env: dict[str, str] | None) -> dict[str, Any]:
    proc = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ImgforgeError(f"buildah inspect {ref} failed: {proc.stderr.strip()[-200:]}")
    return json.loads(proc.stdout)


def diff_ids(ref: str, env: dict[str, str] | None) -> list[str]:
    data = image_inspect(ref, env)
    cfg = data.get("OCIv1") or {}
    return list((cfg.get("rootfs") or {}).get("diff_ids") or [])


def export_layers(ref: str, env: dict[str, str] | None, dest: Path) -> list[Path]:
    """Uncompressed layer tars of an image, in order (via an OCI layout)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["buildah", "push", "--quiet", "--disable-compression", ref, f"oci:{dest}"],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ImgforgeError(f"exporting {ref} failed: {proc.stderr.strip()[-200:]}")
    index = json.loads((dest / "index.json").read_text())
    mdig = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((dest / "blobs" / "sha256" / mdig).read_text())
    return [dest / "blobs" / "sha256" / l["digest"].split(":", 1)[1] for l in manifest["layers"]]


def _tar_entries(path: Path) -> dict[str, tuple]:
    """name -> the fields compared between two builds (FIELDS order)."""
    return {
        name: (m.type, oct(m.mode), m.uid, m.gid, m.mtime, m.linkname, m.size, digest)
        for name, (m, digest) in tar_index(path).items()
    }


FIELDS = ("type", "mode", "uid", "gid", "mtime", "link", "size", "sha256")


def tar_diff(a: Path, b: Path, limit: int = 50) -> list[str]:
    """Lines naming every entry that differs between two layer tars."""
    ea, eb = _tar_entries(a), _tar_entries(b)
    lines = []
    for name in sorted(set(ea) | set(eb)):
        x, y = ea.get(name), eb.get(name)
        if x == y:
            continue
        if x is None:
            lines.append(f"only in B: {name}")
        elif y is None:
            lines.append(f"only in A: {name}")
        else:
            what = ", ".join(f"{f} {p!s:.16}->{q!s:.16}" for f, p, q in zip(FIELDS, x, y) if p != q)
            lines.append(f"differs: {name} ({what})")
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more"]
    return lines


def diffoscope_report(a: Path, b: Path, out: Path, timeout: int = 300) -> str | None:
    exe = shutil.which("diffoscope")
    if not exe:
        return None
    try:
        subprocess.run([exe, "--text", str(out), "--no-progress", "--max-report-size", "2000000", str(a), str(b)],
                       capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    return str(out) if out.exists() else None


def explain(service: str, ref_a: str, env_a, ref_b: str, env_b, workdir: Path) -> LayerDiff | None:
    """The first layer that differs between two builds of an image, with the files that differ."""
    la, lb = diff_ids(ref_a, env_a), diff_ids(ref_b, env_b)
    idx = next((i for i, (x, y) in enumerate(zip(la, lb)) if x != y), None)
    if idx is None:
        if len(la) != len(lb):
            idx = min(len(la), len(lb))
        else:
            ca, cb = image_inspect(ref_a, env_a).get("Docker") or {}, image_inspect(ref_b, env_b).get("Docker") or {}
            diffs = [k for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
            return LayerDiff(service, -1, "", "", [f"image config differs in: {', '.join(diffs) or '?'}"])
    tars_a = export_layers(ref_a, env_a, workdir / f"{service}-a")
    tars_b = export_layers(ref_b, env_b, workdir / f"{service}-b")
    d = LayerDiff(service, idx, la[idx] if idx < len(la) else "-", lb[idx] if idx < len(lb) else "-")
    if idx < len(tars_a) and idx < len(tars_b):
        d.files = tar_diff(tars_a[idx], tars_b[idx])
        d.report = diffoscope_report(tars_a[idx], tars_b[idx], workdir / f"{service}-layer{idx}.diffoscope.txt")
    return d


def clean_build_cmd(variant_ref: str, build_root: Path, storage: Path, out_json: Path, variant: str | None = None) -> list[str]:
    return [sys.executable, "-m", "builder.reproduce", "clean-build", variant_ref, str(build_root), str(storage), str(out_json),
            *([variant] if variant else [])]


def _clean_build_main(variant_ref: str, build_root: str, storage: str, out_json: str, variant: str | None = None) -> None:
    from .build import Builder
    from .lock import check_lock
    from .options import variants_of

    v = variants_of([variant_ref], variant)[0]
    lock = check_lock(v)
    rep = Builder(v, lock, build_root=Path(build_root), storage=Path(storage)).build(push=False)
    Path(out_json).write_text(json.dumps({svc: info for svc, info in rep.images.items()}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) in (6, 7) and sys.argv[1] == "clean-build":
        _clean_build_main(*sys.argv[2:])
    else:
        sys.exit("usage: python -m builder.reproduce clean-build TARGET BUILD_ROOT STORAGE OUT_JSON [VARIANT]")

#!/usr/bin/env python3
"""Generate builder/facts/torch_cuda.json: the CUDA version and CUDA arch list of each locked torch wheel.

For every CUDA torch wheel pinned in the committed GPU locks (targets/*.lock.json), the wheel is
downloaded (or taken from --wheel-dir) and checked against the lock's sha256, then read without
importing or running anything from it:

- ``torch/version.py``: ``cuda = '12.4'`` (the CUDA the wheel was built with);
- ``torch/lib/libtorch_python.so``: the string behind ``torch._C._cuda_getArchFlags()``, which is
  what ``torch.cuda.get_arch_list()`` returns (TORCH_CUDA_ARCH_LIST at build time, e.g.
  ``sm_50 sm_60 ... sm_90``): a run of space-separated ``sm_NN``/``compute_NN`` tokens;
- ``torch/lib/libtorch_cuda.so``: the ELF section ``.nv_fatbin``, whose fatbin entries name the
  architecture of each embedded cubin (SASS) or PTX: a cross-check that every ``sm_NN`` of the
  arch list really has code in the binary.

Sanity checks before anything is written: arch list non-empty and sorted, every ``sm_NN`` of it
present as SASS in the fatbin, the wheel's CUDA equal to the CUDA major.minor of the
nvidia-cuda-runtime wheel locked beside it. Output keys are sorted, so re-running on the same
wheels gives the same file.

Usage: python scripts/gen_cuda_facts.py [--wheel-dir DIR] [--out PATH] [LOCK ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builder.cuda_check import arch_key, runtime_cuda, torch_arch_flags  # noqa: E402

OUT = ROOT / "builder" / "facts" / "torch_cuda.json"
FATBIN_MAGIC = 0xBA55ED50


# ------------------------------------------------------------------ reading the wheel

def locked_torches(lock_files: list[Path]) -> dict[str, dict]:
    """sha256 -> {pin, arch, runtime: (package, version, cuda)} of every CUDA torch in the locks."""
    from builder.lock import load_lock

    found: dict[str, dict] = {}
    for f in lock_files:
        data = json.loads(f.read_text())
        names = list(data["variants"]) if "variants" in data else [data["variant"]]
        for name in names:
            lock = load_lock(name, f)
            for pin in lock["python"].get("torch", []):
                if "+cpu" in pin["version"]:
                    continue
                rt = runtime_cuda(lock)
                found.setdefault(pin["sha256"], {"pin": pin, "arch": lock["platform"]["arch"], "runtime": rt, "locks": set()})
                found[pin["sha256"]]["locks"].add(f"{f.name}:{name}")
    return found


def fetch_wheel(pin: dict, wheel_dir: Path | None, tmp: Path) -> Path:
    if wheel_dir and (wheel_dir / pin["filename"]).is_file():
        path = wheel_dir / pin["filename"]
    else:
        path = tmp / pin["filename"]
        print(f"downloading {pin['filename']} ({(pin.get('size') or 0) / 2**20:.0f} MiB)", file=sys.stderr)
        with urllib.request.urlopen(pin["url"], timeout=600) as r, open(path, "wb") as out:
            while chunk := r.read(1 << 22):
                out.write(chunk)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    if h.hexdigest() != pin["sha256"]:
        raise SystemExit(f"{path.name}: sha256 {h.hexdigest()} is not the locked {pin['sha256']}")
    return path


def wheel_cuda(zf: zipfile.ZipFile) -> str | None:
    m = re.search(r"^cuda(?:: [^=]+)? = '([^']+)'", zf.read("torch/version.py").decode(), re.M)
    return m.group(1) if m else None


def arch_flags(data: bytes) -> list[str]:
    """The arch-flags string of libtorch_python.so (what torch.cuda.get_arch_list() returns)."""
    try:
        return torch_arch_flags(data)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _elf_section(f, name: str) -> tuple[int, int]:
    f.seek(0)
    h = f.read(64)
    if h[:4] != b"\x7fELF" or h[4] != 2 or h[5] != 1:
        raise SystemExit("libtorch_cuda.so: not a 64-bit little-endian ELF")
    shoff = struct.unpack_from("<Q", h, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", h, 0x3A)
    f.seek(shoff)
    raw = f.read(shentsize * shnum)
    secs = [struct.unpack_from("<IIQQQQIIQQ", raw, i * shentsize) for i in range(shnum)]
    f.seek(secs[shstrndx][4])
    names = f.read(secs[shstrndx][5])
    for s in secs:
        if names[s[0]:names.index(b"\0", s[0])].decode() == name:
            return s[4], s[5]
    raise SystemExit(f"libtorch_cuda.so has no {name} section")


def fatbin_archs(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """{arch: entries} of the cubins (SASS) and PTX in the ELF's .nv_fatbin section."""
    with open(path, "rb") as f:
        off, size = _elf_section(f, ".nv_fatbin")
        f.seek(off)
        data = f.read(size)
    sass: dict[str, int] = {}
    ptx: dict[str, int] = {}
    pos = 0
    while pos + 16 <= len(data):
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fatbins are 8-aligned in the section
            continue
        e, end = pos + hsize, pos + hsize + fsize
        while e + 32 <= end:
            kind, _v, ehs, psize = struct.unpack_from("<HHIQ", data, e)
            arch = str(struct.unpack_from("<I", data, e + 28)[0])
            if kind == 1:
                ptx[arch] = ptx.get(arch, 0) + 1
            elif kind == 2:
                sass[arch] = sass.get(arch, 0) + 1
            e += ehs + psize
        pos = end
    srt = lambda d: dict(sorted(d.items(), key=lambda kv: int(kv[0])))  # noqa: E731
    return srt(sass), srt(ptx)


def read_wheel(path: Path, tmp: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        cuda = wheel_cuda(zf)
        flags = arch_flags(zf.read("torch/lib/libtorch_python.so"))
        so = tmp / "libtorch_cuda.so"
        with zf.open("torch/lib/libtorch_cuda.so") as src, open(so, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
    sass, ptx = fatbin_archs(so)
    so.unlink()
    return {"cuda": cuda, "arch_list": flags, "fatbin_sass": sass, "fatbin_ptx": ptx}


# ------------------------------------------------------------------ sanity and output

def sanity(version: str, arch: str, info: dict, runtime: tuple[str, str, str] | None) -> None:
    where = f"torch {version} ({arch})"
    al = info["arch_list"]
    if not al:
        raise SystemExit(f"{where}: empty arch list")
    if al != sorted(al, key=arch_key):
        raise SystemExit(f"{where}: arch list not sorted: {al}")
    missing = [a for a in al if a.startswith("sm_") and re.sub(r"\D", "", a) not in info["fatbin_sass"]]
    if missing:
        raise SystemExit(f"{where}: {missing} in the arch list but no such cubin in libtorch_cuda.so's fatbin")
    if not info["cuda"]:
        raise SystemExit(f"{where}: torch/version.py has no cuda (a CPU build?)")
    if runtime and runtime[2] != info["cuda"]:
        raise SystemExit(f"{where}: built with CUDA {info['cuda']} but the lock has {runtime[0]} {runtime[1]} (CUDA {runtime[2]})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("locks", nargs="*", type=Path, help="lock files (default: every GPU lock in targets/)")
    ap.add_argument("--wheel-dir", type=Path, help="take wheels from here when present (sha256 still checked)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    locks = args.locks or sorted((ROOT / "targets").glob("*.lock.json"))
    existing = json.loads(args.out.read_text()) if args.out.is_file() else {}
    facts = existing.get("torch", {})
    torches = locked_torches(locks)
    with tempfile.TemporaryDirectory(prefix="imgforge-cudafacts-") as td:
        tmp = Path(td)
        for sha, t in sorted(torches.items(), key=lambda kv: (kv[1]["pin"]["version"], kv[1]["arch"])):
            pin, arch = t["pin"], t["arch"]
            wheel = fetch_wheel(pin, args.wheel_dir, tmp)
            info = read_wheel(wheel, tmp)
            if wheel.parent == tmp:
                wheel.unlink()
            sanity(pin["version"], arch, info, t["runtime"])
            entry = facts.setdefault(pin["version"], {"cuda": info["cuda"], "wheels": {}})
            if entry["cuda"] != info["cuda"]:
                raise SystemExit(f"torch {pin['version']}: wheels disagree on CUDA ({entry['cuda']} vs {info['cuda']})")
            entry["wheels"][arch] = {
                "filename": pin["filename"],
                "sha256": sha,
                "arch_list": info["arch_list"],
                "fatbin_sass": info["fatbin_sass"],
                "fatbin_ptx": info["fatbin_ptx"],
            }
            print(f"torch {pin['version']} {arch}: CUDA {info['cuda']}, arch list {' '.join(info['arch_list'])}; "
                  f"fatbin SASS {' '.join(info['fatbin_sass'])} PTX {' '.join(info['fatbin_ptx']) or '-'}", file=sys.stderr)
    out = {
        "_about": ("Generated by scripts/gen_cuda_facts.py from the locked CUDA torch wheels, never edited by hand. "
                   "Per torch version: cuda = torch/version.py's cuda; per wheel platform: arch_list = the arch-flags "
                   "string in torch/lib/libtorch_python.so (what torch.cuda.get_arch_list() returns), fatbin_sass / "
                   "fatbin_ptx = {compute capability without the dot: fatbin entries} of the .nv_fatbin ELF section "
                   "of torch/lib/libtorch_cuda.so (cross-check), sha256 = the wheel the facts were read from."),
        "torch": {v: {"cuda": e["cuda"], "wheels": dict(sorted(e["wheels"].items()))}
                  for v, e in sorted(facts.items(), key=lambda kv: [int(x) if x.isdigit() else x for x in re.split(r"[.+]", kv[0])])},
    }
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

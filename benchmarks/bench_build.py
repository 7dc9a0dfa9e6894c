"""Build benchmarks for the cpu target, printed beside the naive baseline (FINDINGS.md).

    python benchmarks/bench_build.py [--skip-cold] [--json]

- cold build from a warm cache: every stage in an empty buildah store and build directory
  (then the three images loaded into Docker under scratch tags, timed separately);
- no-op rebuild: `imgforge build` when the images are already in Docker;
- rebuild after one pure-Python package changes: the vllm-pure stage and the stage above it;
- bytes per image and for the stack (shared layers counted once) against the bytes of the files
  the images hold (installed bytes).
The naive baseline: plain Dockerfiles with pip install, the legacy `docker build`, measured on
this project's build machine (2 cores): 430 s from cached wheels, 7.09 GB on disk.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NAIVE = {"cold_s": 430.0, "vllm_rebuild_s": 213.0, "stack_bytes": 7.09e9, "vllm_bytes": 3.95e9, "webui_bytes": 3.26e9, "gateway_bytes": 0.30e9}


def _variant_lock():
    from builder.lock import check_lock
    from builder.options import variants_of

    v = variants_of(["cpu"])[0]
    return v, check_lock(v)


def cold_build(v, lock) -> dict:
    from builder.build import Builder, docker_image_id, storage_env

    work = Path(tempfile.mkdtemp(prefix="imgforge-bench-"))
    store = work / "store"
    try:
        b = Builder(v, lock, build_root=work / "build", storage=store, quiet=False)
        t0 = time.monotonic()
        rep = b.build(push=False)
        build_s = time.monotonic() - t0
        t1 = time.monotonic()
        env = storage_env(store)
        for st in b.final_stages():
            ref = f"imgforge-bench/{v.name}-{st.service}:cold"
            subprocess.run(["buildah", "push", "--quiet", st.tag(v.name), f"docker-daemon:{ref}"], check=True,
                           capture_output=True, env=env)
            assert docker_image_id(ref) == rep.images[st.service]["id"].split(":")[1]
            subprocess.run(["docker", "rmi", ref], capture_output=True)
        load_s = time.monotonic() - t1
        stages = {}
        for st in b.stages:
            log = (work / "build" / v.name / st.name / "build.log")
            if log.exists():
                last = log.read_text().strip().splitlines()[-1]
                stages[st.name] = float(last.split(" in ")[-1].rstrip("s")) if " in " in last else None
        return {"build_s": build_s, "load_s": load_s, "cold_s": build_s + load_s, "stages_s": stages,
                "ids": {k: i["id"] for k, i in rep.images.items()}}
    finally:
        subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=storage_env(store))
        shutil.rmtree(work, ignore_errors=True)


def noop(v, lock) -> float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "builder", "build", "--target", "cpu", "--quiet"], check=True,
                   capture_output=True, cwd=Path(__file__).resolve().parent.parent)
    return time.monotonic() - t0


def pure_change(v, lock) -> dict:
    """A pure-Python package changes: the vllm-pure stage (and the small stage above) rebuild."""
    from builder import dockerfiles as D
    from builder.build import Builder

    def hook(stages):
        pure = next(s for s in stages if s.name == "vllm-pure")
        old = pure.tag(v.name)
        pure.inputs = {**pure.inputs, "bench": time.time()}
        D.rekey(pure)
        top = next(s for s in stages if s.name == "vllm")
        top.dockerfile = top.dockerfile.replace(old, pure.tag(v.name))
        D.rekey(top)

    work = Path(tempfile.mkdtemp(prefix="imgforge-bench-"))
    b = Builder(v, lock, build_root=work, quiet=False, stage_hook=hook)
    t0 = time.monotonic()
    rep = b.build(services=["vllm"], push=False)
    s = time.monotonic() - t0
    for st in b.stages:
        if st.name in ("vllm-pure", "vllm"):
            subprocess.run(["buildah", "rmi", st.tag(v.name)], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"seconds": s, "rebuilt": sorted(k for k, x in rep.stages.items() if x["built"])}


def sizes(v, lock) -> dict:
    """Layer bytes per image and for the stack (each layer once) vs bytes of the files inside."""
    from builder.build import Builder

    b = Builder(v, lock, quiet=True)
    out = Path(tempfile.mkdtemp(prefix="imgforge-bench-oci-"))
    try:
        per_image: dict[str, list[str]] = {}
        for st in b.final_stages():
            subprocess.run(["buildah", "push", "--quiet", "--disable-compression", st.tag(v.name), f"oci:{out}:{st.service}"],
                           check=True, capture_output=True)
        index = json.loads((out / "index.json").read_text())
        layer_bytes, file_bytes = {}, {}
        for m in index["manifests"]:
            svc = m["annotations"]["org.opencontainers.image.ref.name"]
            man = json.loads((out / "blobs" / "sha256" / m["digest"].split(":")[1]).read_text())
            per_image[svc] = [l["digest"] for l in man["layers"]]
            for l in man["layers"]:
                if l["digest"] in layer_bytes:
                    continue
                p = out / "blobs" / "sha256" / l["digest"].split(":")[1]
                with open(p, "rb") as f:
                    gz = f.read(2) == b"\x1f\x8b"
                n = 0
                with (gzip.open(p, "rb") if gz else open(p, "rb")) as f:  # uncompressed, as on disk
                    while chunk := f.read(1 << 22):
                        n += len(chunk)
                layer_bytes[l["digest"]] = n
                with tarfile.open(p) as tf:
                    file_bytes[l["digest"]] = sum(x.size for x in tf if x.isreg())
        res = {svc: {"image": sum(layer_bytes[d] for d in ds), "installed": sum(file_bytes[d] for d in ds),
                     "layers": len(ds)} for svc, ds in per_image.items()}
        res["stack"] = {"image": sum(layer_bytes.values()), "installed": sum(file_bytes.values()),
                        "layers": len(layer_bytes)}
        return res
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-cold", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    v, lock = _variant_lock()
    res: dict = {}
    if not args.skip_cold:
        res["cold"] = cold_build(v, lock)
    res["noop_s"] = noop(v, lock)
    res["pure_change"] = pure_change(v, lock)
    res["sizes"] = sizes(v, lock)
    if args.json:
        print(json.dumps(res, indent=1))
        return
    gb = lambda x: f"{x / 1e9:.2f} GB"  # noqa: E731
    print(f"{'measure':44s} {'imgforge':>14s} {'naive':>12s}")
    if "cold" in res:
        c = res["cold"]
        print(f"{'cold build, warm cache (stages + load)':44s} {c['cold_s']:>13.0f}s {NAIVE['cold_s']:>11.0f}s")
        print(f"{'  of which loading into Docker':44s} {c['load_s']:>13.0f}s")
        for k, s in c["stages_s"].items():
            print(f"{'  stage ' + k:44s} {s if s is not None else float('nan'):>13.1f}s")
    print(f"{'no-op rebuild':44s} {res['noop_s']:>13.2f}s {'(full)':>12s}")
    pc = res["pure_change"]
    print(f"{'one pure-Python package changed':44s} {pc['seconds']:>13.0f}s {NAIVE['vllm_rebuild_s']:>11.0f}s  rebuilt: {', '.join(pc['rebuilt'])}")
    for svc in ("vllm", "webui", "gateway", "stack"):
        s = res["sizes"][svc]
        naive = NAIVE.get(f"{svc}_bytes", NAIVE["stack_bytes"])
        print(f"{svc + ' bytes (installed ' + gb(s['installed']) + ')':44s} {gb(s['image']):>14s} {gb(naive):>12s}"
              f"  ratio to installed {s['image'] / max(1, s['installed']):.3f}")


if __name__ == "__main__":
    main()

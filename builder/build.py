"""build: lock + cache -> images in the Docker engine, reproducibly and without network.

Stages (see dockerfiles.py) are built one layer each by ``buildah bud --timestamp <SDE>
--network none``: the base from an mmdebstrap root filesystem made from the cached .debs only,
Python trees installed on the host by pypa/installer (no bytecode), then small assets. Stage
images are keyed by their inputs, so an unchanged stage is reused. Final images are pushed into
Docker as ``imgforge/<variant>-<service>:<lock hash>`` only after every stage is built; each
stage directory holds the Dockerfile, a replayable ``build.sh`` and ``build.log``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .dockerfiles import DEB_ARCH, PREFIX, PY_MINOR, PYTHON, Stage, keyed_stages, no_run, site_packages
from .errors import ImgforgeError, UsageError
from .fetch import cached_path, link_or_copy, require_cached
from .lock import lock_hash

SERVICES = ("vllm", "webui", "gateway")


def default_build_root() -> Path:
    env = os.environ.get("IMGFORGE_BUILD_DIR")
    return Path(env) if env else Path.cwd() / "build"


def final_tag(variant_name: str, service: str, lock: dict[str, Any]) -> str:
    return f"imgforge/{variant_name}-{service}:{lock_hash(lock)}"


# --------------------------------------------------------------------------- tools

def _run(cmd: list[str], log=None, check: bool = True, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    if log is not None:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, **kw)
    else:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        where = f"; see {log.name}" if log is not None and hasattr(log, "name") else f": {(proc.stderr or '').strip()[-300:]}"
        raise ImgforgeError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {proc.returncode}){where}")
    return proc


def storage_env(storage: Path | None) -> dict[str, str] | None:
    """Environment for buildah with its own image store under storage (None: the default store)."""
    if storage is None:
        return None
    storage.mkdir(parents=True, exist_ok=True)
    conf = storage / "storage.conf"
    if not conf.exists():
        conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{storage}/graph"\nrunroot = "{storage}/run"\n')
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}


def buildah_image_id(ref: str, env: dict[str, str] | None = None) -> str | None:
    proc = subprocess.run(["buildah", "images", "--noheading", "--no-trunc", "--format", "{{.ID}}", ref], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None
    ids = proc.stdout.split()
    return ids[0].removeprefix("sha256:") if ids else None


def docker_image_id(ref: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", ref], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip().removeprefix("sha256:") or None


def buildah_containers(env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run(["buildah", "containers", "--noheading", "--notruncate", "--format", "{{.ContainerID}}"], capture_output=True, text=True, env=env)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


# --------------------------------------------------------------------------- python trees

def _destination_class():
    from installer.destinations import SchemeDictionaryDestination
    from installer.records import Hash, RecordEntry
    from installer.utils import copyfileobj_with_hashing

    class SharedFileDestination(SchemeDictionaryDestination):
        """Several wheels of one tree may ship the same file with the same bytes (every cu12
        nvidia-* wheel has an empty nvidia/__init__.py). pip overwrites; here the later copy is
        not written again. That the bytes are the same is checked beforehand, from the wheels'
        RECORDs (shared_file_conflicts), so which wheel wrote the file cannot matter."""

        def write_to_fs(self, scheme, path, stream, is_executable):
            target = self._path_with_destdir(scheme, path)
            if target.exists():
                class _Sink:
                    def write(self, data):
                        return len(data)

                hash_, size = copyfileobj_with_hashing(stream, _Sink(), self.hash_algorithm)
                return RecordEntry(path, Hash(self.hash_algorithm, hash_), size)
            return super().write_to_fs(scheme, path, stream, is_executable)

    return SharedFileDestination


def _install_one(args: tuple[str, str, dict[str, str], str, str]) -> str:
    wheel, tree, scheme, interpreter, name = args
    from installer import install
    from installer.sources import WheelFile
    import warnings

    warnings.filterwarnings("ignore", message="Skip installing .*__pycache__")
    os.umask(0o022)
    dest = _destination_class()(
        scheme, interpreter=interpreter, script_kind="posix", bytecode_optimization_levels=(), destdir=tree
    )
    with WheelFile.open(wheel) as source:
        install(source, dest, additional_metadata={"INSTALLER": b"imgforge\n"})
    return name


def shared_file_conflicts(wheels: list[Path]) -> list[str]:
    """Files that two wheels of one tree both ship with different bytes (from their RECORDs)."""
    import csv
    import io
    import zipfile

    seen: dict[str, tuple[str, str]] = {}
    out = []
    for w in sorted(wheels):
        with zipfile.ZipFile(w) as zf:
            record = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD") and n.count("/") == 1), None)
            if record is None:
                continue
            for row in csv.reader(io.TextIOWrapper(zf.open(record), encoding="utf-8")):
                if len(row) < 2 or not row[1] or ".dist-info/" in row[0]:
                    continue
                prev = seen.setdefault(row[0], (row[1], w.name))
                if prev[0] != row[1]:
                    out.append(f"{row[0]}: {prev[1]} and {w.name} differ")
    return out


def normalize_tree(root: Path) -> int:
    """Modes independent of the host's umask: dirs 755, files 644 (755 if executable)."""
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chmod(p, 0o755 if st.st_mode & 0o111 else 0o644)
            n += 1
    return n


def python_version_of(lock: dict[str, Any]) -> str:
    for d in lock["debian"]["packages"]:
        if d["name"] == f"python{PY_MINOR}":
            return d["version"].split("-")[0]
    return PY_MINOR


def stage_python(spec: dict[str, Any], lock: dict[str, Any], tree: Path, wheels_dir: Path, cache: Path | None, log) -> None:
    group, prefix = spec["group"], spec["prefix"]
    pins = lock["python"][group]
    if spec["select"] == "native":
        pins = [p for p in pins if not p["pure"]]
    elif spec["select"] == "pure":
        pins = [p for p in pins if p["pure"]]
    if "only" in spec:
        pins = [p for p in pins if p["sha256"] in set(spec["only"])]
    if "skip" in spec:
        pins = [p for p in pins if p["sha256"] not in set(spec["skip"])]
    sp = site_packages(prefix)
    scheme = {
        "purelib": sp, "platlib": sp, "headers": f"{prefix}/include/site/python{PY_MINOR}",
        "scripts": f"{prefix}/bin", "data": prefix,
    }
    interpreter = spec.get("interpreter") or (f"{prefix}/bin/python" if spec["group"] != "torch" else PYTHON)
    if tree.exists():
        shutil.rmtree(tree)
    (tree / sp.lstrip("/")).mkdir(parents=True)
    if spec.get("venv"):
        root = tree / prefix.lstrip("/")
        (root / "bin").mkdir(parents=True, exist_ok=True)
        (root / "pyvenv.cfg").write_text(
            f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {python_version_of(lock)}\n"
        )
        os.symlink(PYTHON, root / "bin" / "python")
        os.symlink("python", root / "bin" / "python3")
        os.symlink("python", root / "bin" / f"python{PY_MINOR}")
        os.symlink("lib", root / "lib64")
        if spec.get("torch"):
            (tree / sp.lstrip("/") / "_imgforge_torch.pth").write_text(site_packages(spec["torch"]) + "\n")
    jobs = []
    for p in sorted(pins, key=lambda p: -(p.get("size") or 0)):
        w = wheels_dir / p["filename"]
        if not w.exists():
            link_or_copy(cached_path(p["sha256"], cache), w)
        jobs.append((str(w), str(tree), scheme, interpreter, p["name"]))
    conflicts = shared_file_conflicts([Path(j[0]) for j in jobs])
    if conflicts:
        raise ImgforgeError(f"{len(conflicts)} file(s) shipped by two wheels with different bytes, e.g. {conflicts[0]}: "
                            f"the tree would depend on the install order; pin one of them in the target (software.extra) so that "
                            f"only one ships these files, and re-lock")
    log.write(f"installing {len(jobs)} wheels into {tree} (prefix {prefix})\n")
    log.flush()
    # spawn, not fork: stages may be built from several threads at once
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), mp_context=ctx) as ex:
        for name in ex.map(_install_one, jobs):
            log.write(f"  installed {name}\n")
    # no bytecode: the image never holds timestamp-invalidated .pyc
    for pyc in tree.rglob("__pycache__"):
        shutil.rmtree(pyc, ignore_errors=True)
    normalize_tree(tree)
    log.flush()


# --------------------------------------------------------------------------- stages

@dataclass
class BuildReport:
    variant: str
    lock_hash: str
    images: dict[str, dict[str, Any]] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: bool = False
    seconds: float = 0.0


def _stage_env(sde: int) -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "SOURCE_DATE_EPOCH": str(sde),
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": os.environ.get("HOME", "/root"),
    }


def bud_cmd(st: Stage, variant_name: str, sde: int, ctx: Path, arch: str = "x86_64") -> list[str]:
    cmd = [
        "buildah", "bud", "--format", "oci", "--timestamp", str(sde), "--network", "none", "--pull=never",
        "--layers=false", "--identity-label=false", "--force-rm", "--isolation", "oci",
    ]
    if arch != "x86_64":
        # the image config names the image's architecture, not the build host's
        cmd += ["--arch", DEB_ARCH[arch], "--os", "linux"]
    return cmd + ["-f", str(ctx / "Dockerfile"), "-t", st.tag(variant_name), str(ctx)]


def runs_at_build(stages: list[Stage]) -> list[str]:
    """Names of the stages whose Dockerfile executes something in the image (a RUN step)."""
    return [st.name for st in stages if any(line.lstrip().startswith("RUN ") for line in st.dockerfile.splitlines())]


def check_buildable(variant, host_arch: str | None = None, lock: dict[str, Any] | None = None) -> None:
    """Refuse, in one line, a build this route cannot do on this host.

    A foreign-architecture image can be built only when nothing of it executes at build time:
    its base is unpacked from the .debs (see rootfs.py) and no stage has a RUN step. There is
    no qemu-user emulation to count on here (binfmt_misc is not mounted in containers).
    """
    import platform

    from .dockerfiles import keyed_stages

    host = host_arch or platform.machine()
    arch = variant.spec.platform.arch
    if arch == host:
        return
    if lock is not None and no_run(lock) and lock["platform"]["arch"] == arch:
        running = runs_at_build(keyed_stages(variant, lock))
        if not running:
            return
        raise UsageError(
            f"{variant.name}: stage {running[0]} has a RUN step, which would execute {arch} code on this {host} host; "
            f"{arch} images must be assembled without RUN (build on an {arch} host instead)"
        )
    raise UsageError(
        f"{variant.name}: building {arch} images on a {host} host is not supported "
        f"(the base root filesystem would run {arch} maintainer scripts); build on an {arch} host, "
        f"or lock and render here and build there"
    )


class Builder:
    def __init__(self, variant, lock: dict[str, Any], build_root: Path | None = None, cache: Path | None = None,
                 quiet: bool = False, echo: Callable[[str], None] | None = None, storage: Path | None = None,
                 stage_hook: Callable[[list[Stage]], None] | None = None):
        check_buildable(variant, lock=lock)
        self.variant = variant
        self.lock = lock
        self.root = (build_root or default_build_root()) / variant.name
        self.cache = cache
        self.quiet = quiet
        self.echo = echo or (lambda s: None if quiet else print(s, file=sys.stderr, flush=True))
        self.stages = keyed_stages(variant, lock)
        if stage_hook:
            stage_hook(self.stages)
        self.storage_env = storage_env(storage)
        self.by_name = {s.name: s for s in self.stages}
        self.sde = int(lock["source_date_epoch"])
        self.jobs = int(os.environ.get("IMGFORGE_BUILD_JOBS", "2"))
        self.built: set[str] = set()

    # ---- no-op check
    def final_stages(self) -> list[Stage]:
        return [s for s in self.stages if s.service]

    def up_to_date(self) -> bool:
        for st in self.final_stages():
            bid = buildah_image_id(st.tag(self.variant.name), self.storage_env)
            if not bid or docker_image_id(final_tag(self.variant.name, st.service, self.lock)) != bid:
                return False
        return True

    # ---- rootfs tars (shared by base and gateway stages)
    def rootfs(self, sets: list[str], log) -> Path:
        from .rootfs import bootstrap

        d = self.root / "rootfs"
        d.mkdir(parents=True, exist_ok=True)
        key = self.by_name["gateway" if "gateway" in sets else "base"].key[:20]
        out = d / f"{'-'.join(sets)}-{key}.tar"
        if not out.exists():
            for old in d.glob(f"{'-'.join(sets)}-*.tar"):
                old.unlink()
            bootstrap(self.lock, sets, out, d, log, self.cache)
        return out

    def prepare_context(self, st: Stage, ctx: Path, log) -> None:
        from .rootfs import diff_layer

        if ctx.exists():
            shutil.rmtree(ctx)
        ctx.mkdir(parents=True)
        c = st.context
        if "rootfs" in c:
            os.link(self.rootfs(c["rootfs"], log), ctx / "rootfs.tar")
        if "rootfs_layer" in c:
            base = self.rootfs(["base"], log)
            full = self.rootfs(c["rootfs_layer"], log)
            counts = diff_layer(base, full, ctx / "nginx-layer.tar")
            log.write(f"gateway layer: {counts}\n")
            if counts["removed"]:
                raise ImgforgeError(f"the gateway packages remove {counts['removed']} files of the base; cannot express that as an ADD layer")
        if "python" in c:
            stage_python(c["python"], self.lock, ctx / "tree", self.root / "wheels", self.cache, log)
        for name, src in c.get("files", {}).items():
            if isinstance(src, bytes):
                (ctx / name).write_bytes(src)
            else:
                shutil.copyfile(src, ctx / name)
            os.chmod(ctx / name, 0o644)
        for d in c.get("dirs", []):
            (ctx / d).mkdir(parents=True, exist_ok=True)
            (ctx / d / ".keep").write_text("")
        (ctx / "Dockerfile").write_text(st.dockerfile)
        normalize_tree(ctx)  # modes independent of the umask (COPY keeps them)

    def build_stage(self, st: Stage) -> str:
        ctx_root = self.root / st.name
        ctx_root.mkdir(parents=True, exist_ok=True)
        tag = st.tag(self.variant.name)
        existing = buildah_image_id(tag, self.storage_env)
        if existing:
            return existing
        self.built.add(st.name)
        t0 = time.monotonic()
        ctx = ctx_root / "context"
        try:
            iid = self._build_in(st, ctx_root, ctx, tag, t0)
        finally:
            # an installed tree is gigabytes: never left behind, built or failed
            if "python" in st.context and not os.environ.get("IMGFORGE_KEEP_TREES"):
                shutil.rmtree(ctx / "tree", ignore_errors=True)
        self.echo(f"build: {st.name:14s} {time.monotonic() - t0:6.1f}s  {iid[:12]}")
        return iid

    def _build_in(self, st: Stage, ctx_root: Path, ctx: Path, tag: str, t0: float) -> str:
        with open(ctx_root / "build.log", "w") as log:
            log.write(f"stage {st.name} key {st.key}\n")
            self.prepare_context(st, ctx, log)
            cmd = bud_cmd(st, self.variant.name, self.sde, ctx, self.lock["platform"]["arch"])
            env = _stage_env(self.sde)
            if self.storage_env:
                env["CONTAINERS_STORAGE_CONF"] = self.storage_env["CONTAINERS_STORAGE_CONF"]
            script = (
                "#!/bin/sh\n# Replays the buildah step of stage " + st.name + " (context prepared by imgforge build).\nset -e\n"
                + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k != "HOME")
                + "cd \"$(dirname \"$0\")\"\n" + shlex.join(cmd) + "\n"
            )
            (ctx_root / "build.sh").write_text(script)
            os.chmod(ctx_root / "build.sh", 0o755)
            # build under a temporary tag; the stage tag appears only once the image is complete
            _run(cmd, log=log, env=env)
            iid = buildah_image_id(tag, self.storage_env)
            log.write(f"image {iid} in {time.monotonic() - t0:.1f}s\n")
        return iid

    def build_stages(self, needed: list[Stage], ids: dict[str, str]) -> None:
        """Build stages parents first; independent branches (gateway, vllm, webui) two at a time."""
        from concurrent.futures import ThreadPoolExecutor

        shared = [s for s in needed if s.name in ("base", "torch", "cuda")]
        for st in shared:
            ids[st.name] = self.build_stage(st)
        branches: dict[str, list[Stage]] = {}
        for st in needed:
            if st in shared:
                continue
            branches.setdefault(st.name.split("-")[0], []).append(st)

        def run(chain: list[Stage]) -> None:
            for st in chain:
                ids[st.name] = self.build_stage(st)

        with ThreadPoolExecutor(max_workers=self.jobs) as ex:
            # the longest branches first, so the short gateway fills the gaps
            order = sorted(branches.values(), key=lambda c: -len(c))
            for fut in [ex.submit(run, c) for c in order]:
                fut.result()

    def push(self, st: Stage, iid: str) -> None:
        ref = final_tag(self.variant.name, st.service, self.lock)
        if docker_image_id(ref) == iid:
            return
        t0 = time.monotonic()
        log_path = self.root / st.name / "push.log"
        with open(log_path, "w") as log:
            _run(["buildah", "push", "--quiet", st.tag(self.variant.name), f"docker-daemon:{ref}"], log=log, env=self.storage_env)
        did = docker_image_id(ref)
        if did != iid:
            raise ImgforgeError(f"{ref}: Docker holds image {did}, buildah built {iid}")
        self.echo(f"load:  {st.service:14s} {time.monotonic() - t0:6.1f}s  {ref}")

    def check_tools(self) -> None:
        """Warn when this host's builder tools differ from those the lock (and its golden digests) used."""
        from .lock import tool_versions

        have = tool_versions()
        for name, want in sorted((self.lock.get("tools") or {}).items()):
            if name != "uv" and want and have.get(name) != want:
                self.echo(f"build: warning: {name} {have.get(name)} here, the lock was made with {want}: "
                          f"digests may differ from the golden ones")

    def remove_stale_containers(self) -> None:
        """Working containers an interrupted (killed) build of this variant left behind."""
        proc = subprocess.run(["buildah", "containers", "--noheading", "--notruncate", "--format", "{{.ContainerID}} {{.ImageName}}"],
                              capture_output=True, text=True, env=self.storage_env)
        prefix = f"localhost/imgforge-stage/{self.variant.name}-"
        shared = {s.tag(self.variant.name).rpartition(":")[0] for s in self.stages if not s.service}
        for line in proc.stdout.splitlines():
            cid, _, image = line.partition(" ")
            if image.startswith(prefix) or image.rpartition(":")[0] in shared:
                subprocess.run(["buildah", "rm", cid], capture_output=True, env=self.storage_env)

    def prune(self) -> int:
        """Remove stage images no current stage key names (older locks/templates): this variant's
        own, and shared ones of its stage names that no bundled variant's lock still needs."""
        proc = subprocess.run(["buildah", "images", "--noheading", "--format", "{{.Name}}:{{.Tag}}"],
                              capture_output=True, text=True, env=self.storage_env)
        current = {s.tag(self.variant.name) for s in self.stages}
        prefix = f"localhost/imgforge-stage/{self.variant.name}-"
        old = [r for r in proc.stdout.split() if r.startswith(prefix) and r not in current]
        names = {s.tag(self.variant.name).rpartition(":")[0] for s in self.stages if not s.service}
        shared_old = [r for r in proc.stdout.split() if r.rpartition(":")[0] in names and r not in current]
        if shared_old:
            in_use = shared_tags_in_use()
            if in_use is not None:
                old += [r for r in shared_old if r not in in_use]
        if old:
            subprocess.run(["buildah", "rmi", *old], capture_output=True, env=self.storage_env)
        return len(old)

    def build(self, services: list[str] | None = None, push: bool = True) -> BuildReport:
        t0 = time.monotonic()
        rep = BuildReport(self.variant.name, lock_hash(self.lock))
        wanted = [s for s in self.final_stages() if services is None or s.service in services]
        if push and self.up_to_date():
            rep.skipped = True
        else:
            require_cached(self.lock, self.cache)
            self.check_tools()
            self.remove_stale_containers()
            before = buildah_containers(self.storage_env)
            ids: dict[str, str] = {}
            try:
                needed: list[Stage] = []
                for st in wanted:
                    chain = []
                    cur: Stage | None = st
                    while cur:
                        chain.append(cur)
                        cur = self.by_name[cur.parent] if cur.parent else None
                    for c in reversed(chain):
                        if c not in needed:
                            needed.append(c)
                self.build_stages(needed, ids)
                for st in needed:
                    rep.stages[st.name] = {"key": st.key, "image": ids[st.name], "built": st.name in self.built}
                if push:
                    for st in wanted:
                        self.push(st, ids[st.name])
                    if services is None and not os.environ.get("IMGFORGE_KEEP_OLD_STAGES"):
                        self.prune()
            finally:
                for cid in buildah_containers(self.storage_env) - before:
                    subprocess.run(["buildah", "rm", cid], capture_output=True, env=self.storage_env)
            if not push:
                for st in wanted:
                    rep.images[st.service] = {"ref": st.tag(self.variant.name), "id": "sha256:" + ids[st.name]}
                rep.seconds = time.monotonic() - t0
                return rep
        for st in wanted:
            ref = final_tag(self.variant.name, st.service, self.lock)
            rep.images[st.service] = {"ref": ref, "id": "sha256:" + (docker_image_id(ref) or "")}
        rep.seconds = time.monotonic() - t0
        return rep


def shared_tags_in_use() -> set[str] | None:
    """Tags of the shared stages every bundled variant with a lock builds on (None: unknown)."""
    from .expand import expand
    from .load import load_target
    from .lock import load_lock
    from .paths import targets_dir

    tags: set[str] = set()
    try:
        for path in sorted(targets_dir().glob("*.yaml")):
            for v in expand(load_target(str(path))):
                try:
                    lock = load_lock(v.name)
                except ImgforgeError:
                    continue
                tags |= {s.tag(v.name) for s in keyed_stages(v, lock) if not s.service}
    except ImgforgeError:
        return None
    return tags


def build_variant(variant, lock: dict[str, Any], **kw) -> BuildReport:
    return Builder(variant, lock, **kw).build()


def record_golden(lock: dict[str, Any], report: BuildReport) -> dict[str, str]:
    return {svc: info["id"] for svc, info in sorted(report.images.items())}


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")

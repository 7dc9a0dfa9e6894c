"""inspect: static checks of a variant's built images, for images that cannot boot here.

A GPU image cannot serve on a machine without a GPU, so what can be proven without one is proven
on the image's own files (its buildah image is mounted read-only; its ID must be the one Docker
holds), and, where the image's architecture is the host's, by running its Python:

* elf       -- every ELF executable and shared object is of the image's architecture (GPU code
               objects, e.g. FlashInfer's standalone cubins, are allowed as such);
* system    -- the image's user has an account and a home it owns, root has an account, the CA
               bundle exists, and no apt source or list of the build host was left behind;
* packages  -- the installed distributions (``*.dist-info`` under the image's prefix) are exactly
               the lock's pins for that image, name and version;
* cuda      -- (vllm, GPU variants) torch was built for the target's CUDA, the CUDA runtime and
               FlashInfer wheels are the locked ones (and flashinfer-cubin, if any, has
               flashinfer-python's version, which FlashInfer enforces), torch's arch list (read from
               libtorch_python.so, the string behind ``torch.cuda.get_arch_list()``) is the lock's
               and covers the GPU's compute capability;
* env-paths -- (vllm) the paths the vLLM environment names under the image prefix exist in the
               image; TRITON_PTXAS_PATH is an executable of the image's architecture;
* import    -- (vllm, webui; image arch = host arch) ``import vllm`` / ``import open_webui`` and
               ``import torch`` in the image, with torch's version, CUDA and arch list as torch
               itself reports them;
* flags     -- (vllm; image arch = host arch) vLLM's own parser, in the image, accepts the
               variant's exact server command line (builder/facts/dump_vllm_args.py --parse).

On another architecture the last two are skipped, with the reason: nothing of an aarch64 image
can run on an x86_64 host here (no binfmt_misc emulation). A variant whose checks all pass (none
failed) is recorded as ``built``; a GPU variant never more, since it cannot boot here.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import ImgforgeError
from .cuda_check import RUNTIME
from .lint import Check
from .lock import _normalize as _norm

# e_machine names (pyelftools) of each image architecture
ELF_MACHINE = {"x86_64": "EM_X86_64", "aarch64": "EM_AARCH64"}
GPU_MACHINES = {"EM_CUDA"}
RUN_TIMEOUT_S = 600


@dataclass
class ImageReport:
    variant: str
    arch: str
    images: dict[str, str] = field(default_factory=dict)  # service -> image ID
    checks: dict[str, list[Check]] = field(default_factory=dict)  # service -> checks

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.status != "fail" for cs in self.checks.values() for c in cs)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "arch": self.arch, "ok": self.ok, "images": self.images,
                "checks": {svc: [asdict(c) for c in cs] for svc, cs in self.checks.items()}}


# --------------------------------------------------------------------------- file checks

def elf_machines(root: Path, skip: tuple[str, ...] = ("proc", "sys", "dev")) -> dict[str, list[str]]:
    """e_machine -> paths (relative) of the ELF executables and shared objects under root."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    found: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                continue
            try:
                with open(path, "rb") as fh:
                    if fh.read(4) != b"\x7fELF":
                        continue
                    fh.seek(0)
                    header = ELFFile(fh).header
            except (OSError, ELFError):
                continue
            if header["e_type"] not in ("ET_EXEC", "ET_DYN"):
                continue  # relocatable objects and core files are not loaded
            found.setdefault(str(header["e_machine"]), []).append(os.path.relpath(path, root))
    return found


def _cross_target(path: str, machine: str) -> bool:
    """A file filed under its own architecture's target triple (e.g. cutlass-dsl's
    ``stubs/aarch64-unknown-linux-gnu/``): material for cross-compiling, never loaded here."""
    arch = next((a for a, m in ELF_MACHINE.items() if m == machine), None)
    return arch is not None and any(part.startswith(arch + "-") for part in Path(path).parts[:-1])


def check_elf(root: Path, arch: str) -> Check:
    want = ELF_MACHINE[arch]
    found = elf_machines(root)
    n = len(found.get(want, []))
    gpu = sum(len(v) for k, v in found.items() if k in GPU_MACHINES)
    other = {k: v for k, v in found.items() if k != want and k not in GPU_MACHINES}
    cross = {k: sorted(p for p in v if _cross_target(p, k)) for k, v in other.items()}
    wrong = {k: sorted(p for p in v if not _cross_target(p, k)) for k, v in other.items()}
    wrong = {k: v for k, v in wrong.items() if v}
    notes = [f"{k}: {len(v)} cross-compilation file(s) under their own target triple, e.g. /{v[0]}"
             for k, v in sorted(cross.items()) if v]
    if wrong:
        notes = [f"{k}: {len(v)} file(s), e.g. /{v[0]}" for k, v in sorted(wrong.items())] + notes
        return Check("elf", "fail", f"{sum(len(v) for v in wrong.values())} ELF file(s) of another architecture than {arch}", notes)
    if n == 0:
        return Check("elf", "fail", f"no {arch} ELF file at all: not an image of this variant's root filesystem")
    return Check("elf", "ok", f"{n} ELF executables/shared objects, all {want}" + (f"; {gpu} GPU code objects" if gpu else ""), notes)


def installed(root: Path, prefix: str) -> dict[str, str]:
    """normalized name -> version of every distribution installed under prefix in the image."""
    out: dict[str, str] = {}
    base = root / prefix.lstrip("/")
    for meta in sorted(base.glob("*/lib/python3*/site-packages/*.dist-info/METADATA")):
        name = version = None
        with open(meta, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("Name:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                elif not line.strip():
                    break
        if name and version:
            out[_norm(name)] = version
    return out


def expected_packages(lock: dict[str, Any], service: str) -> dict[str, str]:
    py = lock["python"]
    pins = list(py.get("torch", [])) + list(py.get(service, []))
    return {_norm(p["name"]): p["version"] for p in pins}


def check_packages(root: Path, lock: dict[str, Any], service: str, prefix: str) -> Check:
    have = installed(root, prefix)
    want = expected_packages(lock, service)
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    other = sorted(n for n in set(want) & set(have) if want[n] != have[n])
    notes = ([f"missing: {', '.join(missing[:8])}"] if missing else []) + \
            ([f"not in the lock: {', '.join(extra[:8])}"] if extra else []) + \
            [f"{n}: {have[n]} installed, {want[n]} locked" for n in other[:8]]
    if notes:
        return Check("packages", "fail", f"installed distributions differ from the lock's {len(want)}", notes)
    return Check("packages", "ok", f"{len(have)} distributions, exactly the lock's pins")


def _site(root: Path, prefix: str, sub: str) -> Path | None:
    hits = sorted((root / prefix.lstrip("/")).glob(f"*/lib/python3*/site-packages/{sub}"))
    return hits[0] if hits else None


def torch_build_facts(root: Path, prefix: str) -> dict[str, Any]:
    """torch's CUDA and arch list read from its files in the image (nothing is run)."""
    from .cuda_check import torch_arch_flags

    version_py = _site(root, prefix, "torch/version.py")
    lib = _site(root, prefix, "torch/lib/libtorch_python.so")
    out: dict[str, Any] = {"cuda": None, "arch_list": None}
    if version_py:
        m = re.search(r"^cuda(?:: [^=]+)? = '([^']+)'", version_py.read_text(), re.M)
        out["cuda"] = m.group(1) if m else None
    if lib:
        out["arch_list"] = torch_arch_flags(lib.read_bytes())
    return out


def check_cuda(root: Path, variant, lock: dict[str, Any], prefix: str) -> Check:
    from . import facts
    from .cuda_check import coverage

    want_cuda = variant.spec.platform.cuda
    have = installed(root, prefix)
    info = lock.get("cuda") or {}
    facts_ = torch_build_facts(root, prefix)
    problems, notes = [], []
    if facts_["cuda"] != want_cuda:
        problems.append(f"torch was built for CUDA {facts_['cuda']}, the target has {want_cuda}")
    rt = next(((n, v) for n, v in sorted(have.items()) if RUNTIME.match(n)), None)
    if rt is None:
        problems.append("no nvidia-cuda-runtime wheel installed")
    else:
        notes.append(f"{rt[0]} {rt[1]}")
        if ".".join(rt[1].split(".")[:2]) != want_cuda:
            problems.append(f"{rt[0]} {rt[1]} is not CUDA {want_cuda}")
        want_rt = (info.get("runtime") or {}).get("version")
        if want_rt and rt[1] != want_rt:
            problems.append(f"{rt[0]} {rt[1]} installed, the lock's check recorded {want_rt}")
    locked = {_norm(p["name"]): p["version"] for g in lock["python"].values() for p in g}
    for pkg in ("flashinfer-python", "flashinfer-cubin"):
        if pkg in locked:
            notes.append(f"{pkg} {have.get(pkg)}")
            if have.get(pkg) != locked[pkg]:
                problems.append(f"{pkg} {have.get(pkg)} installed, {locked[pkg]} locked")
    # FlashInfer refuses (RuntimeError at first kernel lookup) a cubin package of another version
    fi, cubin = have.get("flashinfer-python"), have.get("flashinfer-cubin")
    if fi and cubin and fi != cubin:
        problems.append(f"flashinfer-cubin {cubin} beside flashinfer-python {fi}: FlashInfer refuses cubins of another version")
    al = facts_["arch_list"]
    if not al:
        problems.append("no CUDA arch list in torch's libtorch_python.so (a CPU torch?)")
    else:
        notes.append("arch list " + " ".join(al))
        if info.get("arch_list") and al != info["arch_list"]:
            problems.append(f"torch's arch list {al} is not the lock's {info['arch_list']}")
        gpu = facts.gpu(variant.spec.platform.gpu)
        how, by = coverage(gpu["compute_capability"], al)
        if how == "none":
            problems.append(f"{gpu['name']} (sm {gpu['compute_capability']}) is not covered by {al}")
        else:
            notes.append(f"{gpu['name']} sm {gpu['compute_capability']}: {how} ({by})")
    if problems:
        return Check("cuda", "fail", "; ".join(problems), notes)
    return Check("cuda", "ok", f"torch {have.get('torch')} for CUDA {facts_['cuda']}", notes)


def _is_exec_of(path: Path, arch: str) -> bool:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as fh:
            return ELFFile(fh).header["e_machine"] == ELF_MACHINE[arch] and bool(os.stat(path).st_mode & 0o111)
    except (OSError, ELFError):
        return False


def _in_image(root: Path, path: str) -> Path:
    """A path of the image resolved inside root (absolute symlinks point into the image)."""
    cur = root
    for part in Path(path).parts[1:]:
        cur = cur / part
        for _ in range(40):
            if not cur.is_symlink():
                break
            target = os.readlink(cur)
            cur = (root / target.lstrip("/")) if target.startswith("/") else (cur.parent / target)
    return cur


def check_env_paths(root: Path, variant, arch: str, image_prefix: str) -> Check:
    env = variant.container_env
    missing, notes = [], []
    for key, value in sorted(env.items()):
        if not (key.endswith("PATH") or key.endswith("_HOME") or key.endswith("_DIR")):
            continue
        for p in value.split(":"):
            if p.startswith(image_prefix + "/"):
                if not _in_image(root, p).exists():
                    missing.append(f"{key}: {p}")
    ptxas = env.get("TRITON_PTXAS_PATH")
    if ptxas:
        if _is_exec_of(_in_image(root, ptxas), arch):
            notes.append(f"TRITON_PTXAS_PATH {ptxas}: an {arch} executable")
        else:
            missing.append(f"TRITON_PTXAS_PATH: {ptxas} is not an {arch} executable in the image")
    if missing:
        return Check("env-paths", "fail", f"{len(missing)} path(s) of the vLLM environment missing in the image", missing)
    return Check("env-paths", "ok", "every path the vLLM environment names under the image prefix exists", notes)


def _passwd(root: Path) -> dict[int, list[str]]:
    try:
        lines = (root / "etc/passwd").read_text().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit():
            out[int(f[2])] = f
    return out


def check_system(root: Path, uid: int) -> Check:
    """What the Debian base must hold for the image to run as its user and reach TLS hosts,
    and that nothing of the build host was left in it."""
    problems, notes = [], []
    users = _passwd(root)
    if 0 not in users:
        problems.append("/etc/passwd has no root account")
    user = users.get(uid)
    if user is None:
        problems.append(f"/etc/passwd has no account for the image's user {uid}")
    else:
        home = _in_image(root, user[5])
        if not home.is_dir() or home.stat().st_uid != uid:
            problems.append(f"the home of {user[0]} ({user[5]}) is missing or not owned by {uid}")
        notes.append(f"user {user[0]} ({uid}), home {user[5]}")
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    if not bundle.is_file() or b"BEGIN CERTIFICATE" not in bundle.read_bytes()[:4096]:
        problems.append("no CA bundle at /etc/ssl/certs/ca-certificates.crt")
    sources = []
    for f in [root / "etc/apt/sources.list", *sorted((root / "etc/apt/sources.list.d").glob("*"))]:
        if f.is_file():
            sources += [line for line in f.read_text().splitlines() if "copy:" in line or "file:" in line]
    if sources:
        problems.append(f"apt sources name the build host's repository: {sources[0]}")
    if list((root / "var/lib/apt/lists").glob("*Packages*")):
        problems.append("apt package lists were left in the image")
    if problems:
        return Check("system", "fail", "; ".join(problems), notes)
    return Check("system", "ok", "accounts, home, CA bundle; no build-host apt sources or lists", notes)


# --------------------------------------------------------------------------- run checks

IMPORT_PROBE = r"""
import json, sys
mod = sys.argv[1]
m = __import__(mod)
import torch
out = {"module": mod, "version": getattr(m, "__version__", None), "torch": torch.__version__,
       "torch_cuda": torch.version.cuda}
try:
    out["arch_list"] = torch._C._cuda_getArchFlags().split()
except AttributeError:
    out["arch_list"] = None
print("IMGFORGE-PROBE " + json.dumps(out, sort_keys=True))
"""


def docker_python(image: str, python: str, args: list[str], stdin: str | None = None,
                  timeout: int = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    cmd = ["docker", "run", "--rm", "-i", "--network", "none", "-e", "PYTHONDONTWRITEBYTECODE=1",
           "-e", "PYTHONHASHSEED=0", "-e", "VLLM_LOGGING_LEVEL=ERROR", "--entrypoint", python, image, *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)


def _tail(text: str, n: int = 3) -> list[str]:
    return [line for line in text.splitlines() if line.strip()][-n:]


def same_release(imported: str, pinned: str) -> bool:
    """torch's own version carries its build (2.6.0+cu124) where PyPI's wheel name does not."""
    from packaging.version import InvalidVersion, Version

    if imported == pinned:
        return True
    try:
        a, b = Version(imported), Version(pinned)
    except InvalidVersion:
        return False
    return b.local is None and a.public == b.public


def check_import(image: str, python: str, module: str, lock: dict[str, Any], cuda: str | None) -> Check:
    try:
        proc = docker_python(image, python, ["-c", IMPORT_PROBE, module])
    except subprocess.TimeoutExpired:
        return Check("import", "fail", f"import {module} did not finish within {RUN_TIMEOUT_S} s")
    line = next((l for l in proc.stdout.splitlines() if l.startswith("IMGFORGE-PROBE ")), None)
    if proc.returncode != 0 or line is None:
        return Check("import", "fail", f"import {module} failed in the image (exit {proc.returncode})", _tail(proc.stderr))
    got = json.loads(line.split(" ", 1)[1])
    torch_pin = next((p["version"] for p in lock["python"].get("torch", [])), None)
    problems = []
    if torch_pin and not same_release(got["torch"], torch_pin):
        problems.append(f"torch {got['torch']} imported, {torch_pin} locked")
    if cuda and got["torch_cuda"] != cuda:
        problems.append(f"torch reports CUDA {got['torch_cuda']}, the target has {cuda}")
    want_al = (lock.get("cuda") or {}).get("arch_list")
    if cuda and want_al and got["arch_list"] != want_al:
        problems.append(f"torch reports arch list {got['arch_list']}, the lock has {want_al}")
    notes = [f"{module} {got['version']}, torch {got['torch']} (CUDA {got['torch_cuda']})"]
    if problems:
        return Check("import", "fail", "; ".join(problems), notes)
    return Check("import", "ok", f"import {module} and torch work in the image", notes)


def check_flags_in_image(image: str, python: str, variant) -> Check:
    from .paths import facts_dir

    script = (facts_dir() / "dump_vllm_args.py").read_text()
    argv = variant.command[3:]  # after "python3 -m vllm.entrypoints.openai.api_server"
    try:
        proc = docker_python(image, python, ["-", "--parse", *argv], stdin=script)
    except subprocess.TimeoutExpired:
        return Check("flags", "fail", f"vLLM's parser did not answer within {RUN_TIMEOUT_S} s")
    try:
        got = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Check("flags", "fail", f"vLLM's parser could not run in the image (exit {proc.returncode})", _tail(proc.stderr))
    if not got.get("accepted"):
        return Check("flags", "fail", f"vLLM's own parser in the image refuses the command line: {got.get('error')}")
    return Check("flags", "ok", f"vLLM's own parser in the image ({got['parser']}) accepts all {len(argv)} words of the command line",
                 [f"{k}={json.dumps(v)}" for k, v in sorted(got["values"].items())][:24])


# --------------------------------------------------------------------------- the variant

@contextlib.contextmanager
def mounted(ref: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """The root filesystem of a buildah image, mounted through a working container."""
    proc = subprocess.run(["buildah", "from", "--pull-never", ref], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise ImgforgeError(f"cannot open image {ref}: {proc.stderr.strip()[-200:]}")
    cid = proc.stdout.strip().splitlines()[-1]
    try:
        m = subprocess.run(["buildah", "mount", cid], capture_output=True, text=True, env=env)
        if m.returncode != 0:
            raise ImgforgeError(f"cannot mount image {ref}: {m.stderr.strip()[-200:]}")
        yield Path(m.stdout.strip())
    finally:
        subprocess.run(["buildah", "umount", cid], capture_output=True, env=env)
        subprocess.run(["buildah", "rm", cid], capture_output=True, env=env)


def inspect_variant(variant, lock: dict[str, Any], services: list[str] | None = None,
                    host_arch: str | None = None, echo=None) -> ImageReport:
    from .build import SERVICES, buildah_image_id, docker_image_id, final_tag
    from .dockerfiles import PREFIX, UID, keyed_stages

    echo = echo or (lambda s: None)
    arch = variant.spec.platform.arch
    host = host_arch or platform.machine()
    gpu = variant.spec.platform.accelerator == "cuda"
    cuda = variant.spec.platform.cuda if gpu else None
    stages = {s.service: s for s in keyed_stages(variant, lock) if s.service}
    rep = ImageReport(variant.name, arch)
    for svc in services or [s for s in SERVICES if s in stages]:
        ref = final_tag(variant.name, svc, lock)
        did = docker_image_id(ref)
        if did is None:
            raise ImgforgeError(f"{ref} is not in Docker: run imgforge build --target {variant.name}")
        bref = stages[svc].tag(variant.name)
        if buildah_image_id(bref) != did:
            raise ImgforgeError(f"{ref}: buildah holds no image {did[:12]} to read (rebuild with imgforge build --target {variant.name})")
        rep.images[svc] = "sha256:" + did
        checks: list[Check] = []
        prefix = f"{PREFIX}/{svc}"
        echo(f"inspect: {variant.name} {svc}: reading the image's files")
        with mounted(bref) as root:
            checks.append(check_elf(root, arch))
            checks.append(check_system(root, UID))
            if svc in ("vllm", "webui"):
                checks.append(check_packages(root, lock, svc, PREFIX))
            if svc == "vllm" and gpu:
                checks.append(check_cuda(root, variant, lock, PREFIX))
            if svc == "vllm":
                checks.append(check_env_paths(root, variant, arch, PREFIX))
        if svc in ("vllm", "webui"):
            python = f"{prefix}/bin/python"
            if arch != host:
                why = f"an {arch} image cannot execute on this {host} host (no emulation)"
                checks.append(Check("import", "skip", why))
                if svc == "vllm":
                    checks.append(Check("flags", "skip", why + "; the flags were checked against this vLLM version's parser data at load"))
            else:
                echo(f"inspect: {variant.name} {svc}: running its Python")
                checks.append(check_import(ref, python, "vllm" if svc == "vllm" else "open_webui", lock, cuda))
                if svc == "vllm":
                    checks.append(check_flags_in_image(ref, python, variant))
        rep.checks[svc] = checks
    return rep

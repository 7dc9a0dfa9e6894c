"""Publish: push a variant's images to a registry by digest, with OCI annotations and an SBOM.

How an image is published (skopeo 1.9, no hand-written registry client):

1. The image is exported from the Docker engine (``docker-daemon:``) or buildah's store
   (``containers-storage:``) into a ``dir:`` copy with gzip-compressed layers, cached by image
   ID. The Docker schema 2 manifest is kept, so the image config, and with it the image ID that
   the lock's ``golden`` digests record, is byte-for-byte the built one. (Converting to an OCI
   manifest would rewrite the config and change the image ID.) Go's gzip is deterministic, so
   the same image always gives the same compressed blobs and manifest digest.
2. An OCI image index wraps the image manifest(s) - one per architecture - and carries the
   annotations (``org.opencontainers.image.*``, ``io.imgforge.*``); the same keys are image
   labels set at build time. A schema 2 manifest has no annotations field; an OCI index can
   point at schema 2 manifests, and Docker, containerd and skopeo resolve it by platform.
3. The SBOM (CycloneDX JSON, from the lock) is an OCI artifact manifest
   (``artifactType: application/vnd.cyclonedx+json``) whose digest the index names in
   ``io.imgforge.sbom``, and is tagged ``sha256-<index digest>.sbom`` beside the image
   (the referrers tag scheme registries without the referrers API use).
4. Blobs and manifests are pushed by digest first (``skopeo copy --all --preserve-digests
   oci:LAYOUT docker://REPO@sha256:...``): no tag moves until the whole image is in the
   registry. Then the tags move, registry-side (nothing is sent again): ``:<lock hash>``,
   ``:latest`` and the SBOM tag.

Idempotence: before exporting anything, the ``:<lock hash>`` tag is read; when its index points
at images whose configs are the local image IDs, the image is unchanged and nothing is sent
(tags that lag behind are moved registry-side). When it points at other images, publish refuses
(exit 2) unless ``--force``. skopeo itself skips blobs the registry has, so a shared layer is
sent once.

Multi-architecture: variants of one target that differ only in a matrix axis that sets
``platform.arch`` are published together, one index with one manifest per architecture under
the variant name without the arch label; its lock hash is the hash of the per-arch lock hashes.

Credentials: as Docker users expect - ``REGISTRY_AUTH_FILE``, ``$DOCKER_CONFIG/config.json``,
``~/.docker/config.json`` (``docker login``, credential helpers) - or ``IMGFORGE_REGISTRY_USER``
and ``IMGFORGE_REGISTRY_PASSWORD`` in the environment (written to a private temporary auth
file). Never on a command line or in a log: errors are scrubbed of secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import ImgforgeError, UsageError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
SERVICES = ("vllm", "webui", "gateway")
ARCH_OCI = {"x86_64": "amd64", "aarch64": "arm64", "amd64": "amd64", "arm64": "arm64"}
SKOPEO_TIMEOUT = 3600

_REGISTRY = re.compile(r"^(?P<host>(localhost|[A-Za-z0-9.-]+\.[A-Za-z0-9.-]+|\[?[0-9a-fA-F:.]+\]?|[A-Za-z0-9-]+:\d+)(:\d+)?)"
                       r"(?P<ns>(/[a-z0-9]+([._-][a-z0-9]+)*)*)/?$")


class PublishError(ImgforgeError):
    """A registry refused or could not be reached. Exit 2, one line.

    ``done`` holds the images completely published (content and tags) before the failure.
    """

    exit_code = 2
    done: list = []


def default_tls_verify(host: str) -> bool:
    """As Docker does: a registry on a loopback address needs no TLS; every other one does."""
    import ipaddress

    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return False
    try:
        return not ipaddress.ip_address(name).is_loopback
    except ValueError:
        return True


# --------------------------------------------------------------------------- registry reference

@dataclass(frozen=True)
class Registry:
    host: str
    namespace: str  # may be ""

    @classmethod
    def parse(cls, text: str) -> "Registry":
        t = (text or "").strip()
        if "://" in t:
            raise UsageError(f"--registry {text!r}: give HOST[:PORT]/NAMESPACE without a scheme (e.g. ghcr.io/org)")
        m = _REGISTRY.match(t)
        if not m or "@" in t:
            raise UsageError(f"--registry {text!r}: not HOST[:PORT]/NAMESPACE (lowercase namespace, e.g. registry.example.com:5000/team)")
        return cls(m.group("host"), m.group("ns").strip("/"))

    def repo(self, name: str) -> str:
        return f"{self.host}/{self.namespace}/{name}" if self.namespace else f"{self.host}/{name}"

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}" if self.namespace else self.host


def sha256_bytes(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# --------------------------------------------------------------------------- credentials & skopeo

@dataclass
class Skopeo:
    """Runs skopeo with the user's credentials and TLS choice; errors become one line."""

    registry: Registry
    tls_verify: bool = True
    authfile: str | None = None
    secrets: list[str] = field(default_factory=list)
    auth_source: str = "no credentials"
    log: Callable[[str], None] | None = None

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            if s:
                text = text.replace(s, "***")
        return text

    def _tls(self, flag: str) -> list[str]:
        return [f"{flag}={'true' if self.tls_verify else 'false'}"]

    def _auth(self, flag: str = "--authfile") -> list[str]:
        return [flag, self.authfile] if self.authfile else []

    def run(self, args: list[str], what: str) -> subprocess.CompletedProcess:
        if shutil.which("skopeo") is None:
            raise PublishError("skopeo not found: run sudo scripts/install-registry.sh (or install-build-tools.sh)")
        env = {**os.environ}
        env.pop("IMGFORGE_REGISTRY_PASSWORD", None)
        try:
            proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, env=env, timeout=SKOPEO_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PublishError(f"{what}: skopeo gave no answer in {SKOPEO_TIMEOUT}s") from None
        proc.stdout = self._scrub(proc.stdout)
        proc.stderr = self._scrub(proc.stderr)
        return proc

    def fail(self, proc: subprocess.CompletedProcess, what: str) -> PublishError:
        errors = "\n".join(line for line in proc.stderr.splitlines() if "level=debug" not in line)
        return PublishError(f"{what}: {classify(errors, self.registry, self.auth_source)}")

    def inspect_raw(self, ref: str, what: str) -> bytes | None:
        """The manifest bytes at docker://ref, or None when the registry has no such tag/digest."""
        proc = self.run(["inspect", "--raw", *self._tls("--tls-verify"), *self._auth(), "--retry-times", "0",
                         f"docker://{ref}"], what)
        if proc.returncode == 0:
            return proc.stdout.encode()
        if is_not_found(proc.stderr):
            return None
        raise self.fail(proc, what)

    def copy(self, src: str, dst: str, what: str, *, src_registry: bool = False) -> subprocess.CompletedProcess:
        """skopeo copy of everything (index, images) with digests kept; --debug tells what was sent."""
        args = ["--debug", "copy", "--all", "--preserve-digests", "--retry-times", "1", *self._tls("--dest-tls-verify"), *self._auth()]
        if src_registry:
            args += self._tls("--src-tls-verify")
        proc = self.run([*args, src, dst], what)
        if proc.returncode != 0:
            raise self.fail(proc, what)
        return proc


def is_not_found(stderr: str) -> bool:
    s = stderr.lower()
    return any(k in s for k in ("manifest unknown", "name unknown", "not found", "404"))


def classify(stderr: str, registry: Registry, auth_source: str) -> str:
    """One line that says what went wrong, from skopeo's message."""
    s = " ".join(stderr.split())
    low = s.lower()
    if any(k in low for k in ("connection refused", "no such host", "i/o timeout", "network is unreachable",
                              "no route to host", "connection reset", "server misbehaving", "dial tcp")):
        return f"registry {registry.host} unreachable ({_tail(s, ('dial tcp', 'lookup'))})"
    if any(k in low for k in ("unauthorized", "authentication required", "invalid username/password", "denied",
                              "status 401", "status 403", "incorrect username or password")):
        return f"registry {registry.host} refused the credentials ({auth_source}): authentication failed"
    if "http response to https client" in low:
        return f"registry {registry.host} speaks plain HTTP: pass --no-tls-verify for a registry without TLS"
    if "x509" in low or "certificate" in low:
        return f"registry {registry.host}: TLS certificate not trusted (pass --no-tls-verify only for a test registry)"
    return _tail(s, ()) or "skopeo failed with no message"


def _tail(s: str, keys: tuple[str, ...]) -> str:
    for k in keys:
        i = s.lower().find(k)
        if i >= 0:
            return s[i:][:200]
    s = re.sub(r'^time="[^"]*" level=\w+ msg="?', "", s)
    return s[-300:]


@contextmanager
def credentials(registry: Registry, tls_verify: bool = True, env: dict[str, str] | None = None) -> Iterator[Skopeo]:
    """A Skopeo with credentials found where Docker users keep them."""
    env = os.environ if env is None else env
    user, password = env.get("IMGFORGE_REGISTRY_USER"), env.get("IMGFORGE_REGISTRY_PASSWORD")
    tmp = None
    try:
        if user and password:
            tmp = tempfile.mkdtemp(prefix="imgforge-auth-")
            path = Path(tmp) / "auth.json"
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"auths": {registry.host: {"auth": token}}}, f)
            sk = Skopeo(registry, tls_verify, str(path), [password, token],
                        "IMGFORGE_REGISTRY_USER/IMGFORGE_REGISTRY_PASSWORD")
        elif env.get("REGISTRY_AUTH_FILE"):
            sk = Skopeo(registry, tls_verify, env["REGISTRY_AUTH_FILE"], [], f"REGISTRY_AUTH_FILE {env['REGISTRY_AUTH_FILE']}")
        elif env.get("DOCKER_CONFIG"):
            p = Path(env["DOCKER_CONFIG"]) / "config.json"
            sk = Skopeo(registry, tls_verify, str(p) if p.is_file() else None, [],
                        f"DOCKER_CONFIG {p}" if p.is_file() else f"no credentials (DOCKER_CONFIG {p} missing)")
        else:
            p = Path(env.get("HOME", str(Path.home()))) / ".docker" / "config.json"
            sk = Skopeo(registry, tls_verify, str(p) if p.is_file() else None, [],
                        str(p) if p.is_file() else "no credentials: docker login, or set DOCKER_CONFIG / REGISTRY_AUTH_FILE")
        for token in _auth_tokens(sk.authfile, registry.host):
            sk.secrets.append(token)
            try:
                sk.secrets.append(base64.b64decode(token).decode().split(":", 1)[1])
            except Exception:
                pass
        yield sk
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def _auth_tokens(authfile: str | None, host: str) -> list[str]:
    if not authfile:
        return []
    try:
        data = json.loads(Path(authfile).read_text())
    except (OSError, ValueError):
        return []
    return [v["auth"] for v in (data.get("auths") or {}).values() if isinstance(v, dict) and v.get("auth")]


# --------------------------------------------------------------------------- what to publish

@dataclass
class Source:
    arch: str  # OCI architecture: amd64, arm64
    ref: str  # skopeo source: docker-daemon:NAME:TAG or containers-storage:NAME:TAG
    image_id: str  # sha256:... (the image config digest)
    annotations: dict[str, str] = field(default_factory=dict)  # on this arch's descriptor in the index


@dataclass
class ImageSpec:
    name: str  # repository name under the namespace, e.g. cpu-gateway
    tag: str  # the lock hash
    sources: list[Source]
    annotations: dict[str, str]
    sbom: bytes | None = None
    service: str = ""


@dataclass
class Result:
    name: str
    status: str  # pushed | unchanged | forced
    digest: str  # the index digest the tags point at
    refs: list[str]
    blobs_sent: int = 0
    blobs_skipped: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    note: str = ""
    image_ids: dict[str, str] = field(default_factory=dict)
    sbom: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --------------------------------------------------------------------------- export and layout

def export_dir(src: Source, cache: Path, sk: Skopeo | None = None) -> Path:
    """A dir: copy of the image with gzip layers, cached by image ID; its manifest keeps the config."""
    hexid = src.image_id.removeprefix("sha256:")
    out = cache / hexid
    if (out / "manifest.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{hexid[:12]}-", dir=cache))
    try:
        proc = subprocess.run(["skopeo", "copy", "--quiet", "--dest-compress", "--dest-compress-format", "gzip",
                               src.ref, f"dir:{tmp / 'img'}"], capture_output=True, text=True, timeout=SKOPEO_TIMEOUT)
        if proc.returncode != 0:
            raise PublishError(f"cannot read {src.ref}: {' '.join(proc.stderr.split())[-300:]}")
        man = json.loads((tmp / "img" / "manifest.json").read_bytes())
        if man.get("config", {}).get("digest") != src.image_id:
            raise PublishError(f"{src.ref}: exported config {man.get('config', {}).get('digest')} is not image {src.image_id}")
        try:
            os.replace(tmp / "img", out)
        except OSError:
            if not (out / "manifest.json").is_file():  # another publish did not finish it either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def child_descriptor(manifest: bytes, arch: str, annotations: dict[str, str]) -> dict[str, Any]:
    mt = json.loads(manifest).get("mediaType") or OCI_MANIFEST
    d: dict[str, Any] = {"mediaType": mt, "digest": sha256_bytes(manifest), "size": len(manifest),
                         "platform": {"architecture": arch, "os": "linux"}}
    if annotations:
        d["annotations"] = dict(sorted(annotations.items()))
    return d


def make_index(children: list[dict[str, Any]], annotations: dict[str, str]) -> bytes:
    """The OCI image index of one published image (children sorted by architecture)."""
    kids = sorted(children, key=lambda c: (c["platform"]["architecture"], c["digest"]))
    arches = [c["platform"]["architecture"] for c in kids]
    if len(set(arches)) != len(arches):
        raise UsageError(f"two images for one architecture in one index: {', '.join(arches)}")
    return canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": kids,
                      "annotations": dict(sorted(annotations.items()))})


def sbom_artifact(sbom: bytes, annotations: dict[str, str]) -> tuple[bytes, bytes]:
    """(empty config, manifest) of the SBOM as an OCI artifact."""
    from .sbom import MEDIA_TYPE

    empty = b"{}"
    man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MEDIA_TYPE,
           "config": {"mediaType": OCI_EMPTY, "digest": sha256_bytes(empty), "size": len(empty)},
           "layers": [{"mediaType": MEDIA_TYPE, "digest": sha256_bytes(sbom), "size": len(sbom),
                       "annotations": {"org.opencontainers.image.title": "sbom.cdx.json"}}],
           "annotations": dict(sorted(annotations.items()))}
    return empty, canonical(man)


class Layout:
    """A throw-away OCI layout: blobs are symlinks into the export cache or small files."""

    def __init__(self, root: Path):
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[dict[str, Any]] = []

    def put(self, data: bytes) -> str:
        d = sha256_bytes(data)
        p = self.root / "blobs" / "sha256" / d[7:]
        if not p.exists():
            p.write_bytes(data)
        return d

    def link(self, path: Path) -> None:
        p = self.root / "blobs" / "sha256" / path.name
        if not p.exists():
            p.symlink_to(path.resolve())

    def tag(self, name: str, media_type: str, data: bytes) -> None:
        self.refs.append({"mediaType": media_type, "digest": sha256_bytes(data), "size": len(data),
                          "annotations": {"org.opencontainers.image.ref.name": name}})
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.refs}))


_UPLOADED = re.compile(r"Upload of layer sha256:([0-9a-f]{64}) complete")
_SKIPPED = re.compile(r"Skipping blob sha256:([0-9a-f]{64}) \(already present\)")


def count_blobs(log: str, sizes: dict[str, int]) -> tuple[int, int, int]:
    """(sent, skipped, bytes sent) from skopeo --debug's log: blobs uploaded vs found or mounted."""
    sent = set(_UPLOADED.findall(log))
    skipped = set(_SKIPPED.findall(log)) - sent
    return len(sent), len(skipped), sum(sizes.get(d, 0) for d in sent)


# --------------------------------------------------------------------------- remote state

def remote_images(sk: Skopeo, repo: str, index: bytes) -> dict[str, str]:
    """arch -> config digest of each image an index (or a single manifest) at repo names."""
    doc = json.loads(index)
    mt = doc.get("mediaType")
    if mt in INDEX_TYPES or ("manifests" in doc and "config" not in doc):
        out: dict[str, str] = {}
        for d in doc.get("manifests", []):
            raw = sk.inspect_raw(f"{repo}@{d['digest']}", f"read {repo}@{d['digest'][:19]}")
            if raw is None:
                continue
            arch = (d.get("platform") or {}).get("architecture", "?")
            out[arch] = json.loads(raw).get("config", {}).get("digest", "")
        return out
    return {"?": doc.get("config", {}).get("digest", "")}


@dataclass
class Plan:
    spec: ImageSpec
    repo: str
    remote: bytes | None  # manifest at :<tag>
    state: str  # new | unchanged | conflict
    remote_ids: dict[str, str] = field(default_factory=dict)


def plan_image(sk: Skopeo, spec: ImageSpec) -> Plan:
    repo = sk.registry.repo(spec.name)
    raw = sk.inspect_raw(f"{repo}:{spec.tag}", f"read {repo}:{spec.tag}")
    if raw is None:
        return Plan(spec, repo, None, "new")
    ids = remote_images(sk, repo, raw)
    local = {s.arch: s.image_id for s in spec.sources}
    doc = json.loads(raw)
    same = doc.get("mediaType") == OCI_INDEX and ids == local
    return Plan(spec, repo, raw, "unchanged" if same else "conflict", ids)


# --------------------------------------------------------------------------- publishing

def publish_images(specs: list[ImageSpec], registry: Registry | str, *, force: bool = False, tls_verify: bool | None = None,
                   cache: Path | None = None, echo: Callable[[str], None] | None = None,
                   env: dict[str, str] | None = None) -> list[Result]:
    """Push each image (index + per-arch manifests + SBOM) by digest, then move its tags."""
    from .paths import cache_dir

    reg = registry if isinstance(registry, Registry) else Registry.parse(registry)
    tls_verify = default_tls_verify(reg.host) if tls_verify is None else tls_verify
    cache = cache or (cache_dir() / "publish")
    echo = echo or (lambda s: None)
    results: list[Result] = []
    with credentials(reg, tls_verify, env) as sk:
        # Read every tag first: an unreachable registry, refused credentials or a conflicting
        # tag stop the run before anything is sent.
        plans = [plan_image(sk, s) for s in specs]
        conflicts = [p for p in plans if p.state == "conflict"]
        if conflicts and not force:
            p = conflicts[0]
            have = ", ".join(f"{a}={d[7:19]}" for a, d in sorted(p.remote_ids.items())) or "another manifest"
            want = ", ".join(f"{s.arch}={s.image_id[7:19]}" for s in p.spec.sources)
            raise PublishError(f"{p.repo}:{p.spec.tag} exists with different images ({have}; local {want}): "
                               f"refusing to move it (--force replaces it)")
        for p in plans:
            try:
                results.append(_publish_one(sk, p, cache, echo))
            except PublishError as exc:
                exc.done = list(results)
                raise
    return results


def _publish_one(sk: Skopeo, p: Plan, cache: Path, echo: Callable[[str], None]) -> Result:
    spec, repo = p.spec, p.repo
    t0 = time.monotonic()
    if p.state == "unchanged":
        digest = sha256_bytes(p.remote)
        note = ""
        ann = json.loads(p.remote).get("annotations", {})
        if ann.get("org.opencontainers.image.revision") != spec.annotations.get("org.opencontainers.image.revision"):
            note = f"published from revision {ann.get('org.opencontainers.image.revision', '?')}; kept"
        sbom_digest = ann.get("io.imgforge.sbom")
        res = Result(spec.name, "unchanged", digest, [], note=note,
                     image_ids={s.arch: s.image_id for s in spec.sources})
    else:
        digest, res, sbom_digest = _push_content(sk, p, cache, echo)
    # Tags last: registry-side copies of what is already there (no blob is sent again).
    for tag in [spec.tag, "latest"]:
        cur = p.remote if tag == spec.tag else sk.inspect_raw(f"{repo}:{tag}", f"read {repo}:{tag}")
        if cur is None or sha256_bytes(cur) != digest:
            sk.copy(f"docker://{repo}@{digest}", f"docker://{repo}:{tag}", f"tag {repo}:{tag}", src_registry=True)
        res.refs.append(f"{repo}:{tag}")
    if sbom_digest:
        sbom_tag = f"sha256-{digest[7:]}.sbom"
        cur = sk.inspect_raw(f"{repo}:{sbom_tag}", f"read {repo}:{sbom_tag}")
        if cur is None or sha256_bytes(cur) != sbom_digest:
            sk.copy(f"docker://{repo}@{sbom_digest}", f"docker://{repo}:{sbom_tag}", f"tag {repo}:{sbom_tag}",
                    src_registry=True)
        res.sbom = f"{repo}:{sbom_tag}"
    res.refs.append(f"{repo}@{digest}")
    res.seconds = round(time.monotonic() - t0, 2)
    return res


def _push_content(sk: Skopeo, p: Plan, cache: Path, echo: Callable[[str], None]) -> tuple[str, Result, str | None]:
    """Push blobs, image manifests, the SBOM and the index, all by digest; (index digest, result, SBOM digest)."""
    spec, repo = p.spec, p.repo
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="layout-", dir=cache))
    try:
        lay = Layout(work / "oci")
        children, sizes, manifests = [], {}, []
        for src in spec.sources:
            echo(f"{spec.name}: exporting {src.arch} image {src.image_id[7:19]} from {src.ref.split(':', 1)[0]}")
            d = export_dir(src, cache / "images", sk)
            for f in d.iterdir():
                if re.fullmatch(r"[0-9a-f]{64}", f.name):
                    lay.link(f)
                    sizes[f.name] = f.stat().st_size
            man = (d / "manifest.json").read_bytes()
            manifests.append(man)
            lay.put(man)
            children.append(child_descriptor(man, src.arch, src.annotations))
        annotations = dict(spec.annotations)
        sbom_digest = None
        if spec.sbom is not None:
            empty, sman = sbom_artifact(spec.sbom, {k: v for k, v in spec.annotations.items()
                                                    if k.startswith("io.imgforge.") or k.endswith(".created")})
            lay.put(empty)
            lay.put(spec.sbom)
            lay.put(sman)
            sbom_digest = sha256_bytes(sman)
            annotations["io.imgforge.sbom"] = sbom_digest
            lay.tag("sbom", OCI_MANIFEST, sman)
        index = make_index(children, annotations)
        lay.put(index)
        lay.tag("image", OCI_INDEX, index)
        digest = sha256_bytes(index)
        status = "forced" if p.state == "conflict" else "pushed"
        echo(f"{spec.name}: pushing {digest[:19]} to {repo}")
        sent = skipped = nbytes = 0
        if sbom_digest:
            proc = sk.copy(f"oci:{lay.root}:sbom", f"docker://{repo}@{sbom_digest}", f"push {repo} SBOM")
            a, b, c = count_blobs(proc.stderr, {hashlib.sha256(spec.sbom).hexdigest(): len(spec.sbom), sha256_bytes(empty)[7:]: 2})
            sent, skipped, nbytes = sent + a, skipped + b, nbytes + c
        proc = sk.copy(f"oci:{lay.root}:image", f"docker://{repo}@{digest}", f"push {repo}")
        sizes.update({sha256_bytes(m)[7:]: len(m) for m in manifests})
        a, b, c = count_blobs(proc.stderr, sizes)
        sent, skipped, nbytes = sent + a, skipped + b, nbytes + c
        res = Result(spec.name, status, digest, [], blobs_sent=sent, blobs_skipped=skipped, bytes_sent=nbytes,
                     image_ids={s.arch: s.image_id for s in spec.sources}, sbom=sbom_digest)
        return digest, res, sbom_digest
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- from a target's variants

def iso(epoch: int) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def revision() -> str | None:
    """The commit being published: CI's GITHUB_SHA, else the checkout's HEAD (with -dirty)."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    from .paths import data_root

    try:
        head = subprocess.run(["git", "-C", str(data_root()), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(data_root()), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def source_url() -> str:
    if os.environ.get("GITHUB_REPOSITORY"):
        return f"{os.environ.get('GITHUB_SERVER_URL', 'https://github.com')}/{os.environ['GITHUB_REPOSITORY']}"
    from .dockerfiles import IMAGE_SOURCE

    return IMAGE_SOURCE


def annotations(variant, lock: dict[str, Any], tag: str, name: str, service: str) -> dict[str, str]:
    """The index annotations of one published image (the same keys are labels of the image)."""
    from .lock import lock_hash

    sw = variant.spec.software
    return {
        "org.opencontainers.image.source": source_url(),
        "org.opencontainers.image.revision": revision() or f"lock.{lock_hash(lock)}",
        "org.opencontainers.image.created": iso(lock["source_date_epoch"]),
        "org.opencontainers.image.title": f"imgforge {name} {service}",
        "io.imgforge.target": variant.target.name,
        "io.imgforge.variant": name,
        "io.imgforge.service": service,
        "io.imgforge.lock-hash": tag,
        "io.imgforge.vllm-version": sw.vllm,
        "io.imgforge.cuda-version": variant.spec.platform.cuda or "none",
    }


def arch_axes(target) -> set[str]:
    """Matrix axes whose values set platform.arch."""
    return {axis for axis, values in target.file.matrix.items()
            if any(isinstance(p, dict) and "arch" in (p.get("platform") or {}) for p in values.values())}


def group_variants(variants: list) -> dict[str, list]:
    """Published name (variant name without its arch label) -> the variants published under it."""
    groups: dict[str, list] = {}
    for v in variants:
        axes = arch_axes(v.target)
        labels = [lab for axis, lab in v.labels.items() if axis not in axes]
        groups.setdefault("-".join([v.target.name, *labels]), []).append(v)
    for name, vs in groups.items():
        arches = [v.spec.platform.arch for v in vs]
        if len(set(arches)) != len(arches):
            raise UsageError(f"variants {', '.join(v.name for v in vs)} share a published name {name} and an architecture")
    return groups


def local_source(variant, lock: dict[str, Any], service: str) -> Source | None:
    """Where the service's image is here: the Docker engine first, else buildah's store."""
    from .build import buildah_image_id, docker_image_id, final_tag

    arch = ARCH_OCI[variant.spec.platform.arch]
    ref = final_tag(variant.name, service, lock)
    iid = docker_image_id(ref)
    if iid:
        return Source(arch, f"docker-daemon:{ref}", "sha256:" + iid)
    try:
        from .dockerfiles import keyed_stages

        for st in keyed_stages(variant, lock):
            if st.service == service:
                bref = st.tag(variant.name)
                bid = buildah_image_id(bref)
                if bid:
                    return Source(arch, f"containers-storage:{bref}", "sha256:" + bid)
    except Exception:  # noqa: BLE001 - a store that cannot be read is "not built"
        return None
    return None


def combined_hash(hashes: list[str]) -> str:
    return hashlib.sha256(",".join(sorted(hashes)).encode()).hexdigest()[:12]


def group_tag(locks: list[dict[str, Any]]) -> str:
    """The tag of a published image: its lock hash; with several architectures, the hash of theirs."""
    from .lock import lock_hash

    hashes = [lock_hash(lk) for lk in locks]
    return hashes[0] if len(hashes) == 1 else combined_hash(hashes)


def variant_specs(variants: list, services: list[str] | None = None, check_golden: bool = True) -> list[ImageSpec]:
    """The images to publish for the given variants (locks checked, images found locally)."""
    from .lock import check_lock, lock_hash
    from .sbom import dumps, generate

    specs = []
    for name, vs in group_variants(variants).items():
        locks = [(v, check_lock(v)) for v in vs]
        tag = group_tag([lk for _, lk in locks])
        svcs = [s for s in SERVICES if (services is None or s in services)
                and (s == "gateway" or s in locks[0][1]["python"])]
        for svc in svcs:
            sources = []
            for v, lk in locks:
                src = local_source(v, lk, svc)
                if src is None:
                    raise UsageError(f"image {v.name}-{svc} for lock {lock_hash(lk)} is not built here: "
                                     f"run imgforge build --target {v.target.name} --variant {v.name}")
                golden = (lk.get("golden") or {}).get(svc)
                if check_golden and golden and golden != src.image_id:
                    raise UsageError(f"image {v.name}-{svc} is {src.image_id[7:19]} but the lock's golden digest is "
                                     f"{golden[7:19]}: rebuild, or check with imgforge verify --reproducible")
                src.annotations = {"io.imgforge.variant": v.name, "io.imgforge.lock-hash": lock_hash(lk)}
                sources.append(src)
            v0, l0 = locks[0]
            ann = annotations(v0, l0, tag, name, svc)
            sbom = generate(v0, l0, svc) if len(locks) == 1 else _multi_sbom(locks, svc)
            specs.append(ImageSpec(f"{name}-{svc}", tag, sources, ann, dumps(sbom), svc))
    return specs


def _multi_sbom(locks: list, svc: str) -> dict[str, Any]:
    from .sbom import generate

    docs = [generate(v, lk, svc) for v, lk in locks]
    out = docs[0]
    seen = {c["bom-ref"] for c in out["components"]}
    for d in docs[1:]:
        out["components"] += [c for c in d["components"] if c["bom-ref"] not in seen]
        seen |= {c["bom-ref"] for c in d["components"]}
    out["components"].sort(key=lambda c: c["bom-ref"])
    return out


# --------------------------------------------------------------------------- render --from-registry

def registry_images(variant, registry: str, *, tls_verify: bool | None = None, env: dict[str, str] | None = None) -> dict[str, str]:
    """service -> 'host/ns/<variant>-<service>@sha256:...' for the variant's published images.

    TLS as Docker: not for a loopback registry, else verified (tls_verify overrides).
    Reads the ``:<lock hash>`` tag (the lock of the variant as committed here), so a rendered
    stack runs exactly the images built from this lock; a service not published is an error.
    """
    from .lock import check_lock

    from .expand import expand

    reg = Registry.parse(registry)
    tls_verify = default_tls_verify(reg.host) if tls_verify is None else tls_verify
    lock = check_lock(variant)
    name, group = next((n, vs) for n, vs in group_variants(expand(variant.target)).items()
                       if variant.name in [v.name for v in vs])
    tag = group_tag([lock if v.name == variant.name else check_lock(v) for v in group])
    out: dict[str, str] = {}
    with credentials(reg, tls_verify, env) as sk:
        for svc in SERVICES:
            if svc != "gateway" and svc not in lock["python"]:
                continue
            repo = reg.repo(f"{name}-{svc}")
            raw = sk.inspect_raw(f"{repo}:{tag}", f"read {repo}:{tag}")
            if raw is None:
                raise PublishError(f"{repo}:{tag} not found: publish it first (imgforge publish --target "
                                   f"{variant.target.name} --registry {reg})")
            out[svc] = f"{repo}@{sha256_bytes(raw)}"
    return out

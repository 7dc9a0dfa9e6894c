"""Slow tier: the GPU images, built here (no GPU) and checked statically.

dgx-spark is aarch64, built on this x86_64 host without running any of its code; tp2-a40 is
x86_64 with CUDA 12.4, so its Python runs here: ``import vllm`` and vLLM's own parser in the image.
Each variant is built once per session (stages already in buildah's store are reused), its
digests compared with the lock's golden ones, then its images are removed from Docker and
buildah again so that the next variant has the disk (set IMGFORGE_KEEP_GPU_IMAGES=1 to keep them).
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from fixtures_build import _need_tools

pytestmark = pytest.mark.slow

GPU_VARIANTS = ("dgx-spark", "tp2-a40")


def _remove(builder, rep) -> None:
    for info in rep.images.values():
        subprocess.run(["docker", "rmi", "-f", info["ref"]], capture_output=True)
    tags = [s.tag(builder.variant.name) for s in reversed(builder.stages)]
    subprocess.run(["buildah", "rmi", "-f", *tags], capture_output=True)


@pytest.fixture(scope="module", params=GPU_VARIANTS)
def gpu_build(request):
    from builder.build import Builder
    from builder.fetch import fetch_lock
    from builder.inspect_images import inspect_variant
    from builder.lock import check_lock
    from builder.options import variants_of

    _need_tools()
    v = variants_of([request.param])[0]
    lock = check_lock(v)
    fetch_lock(lock, quiet=True)
    b = Builder(v, lock, quiet=False)
    t0 = time.monotonic()
    rep = b.build()
    print(f"\n{v.name} images: {'already built' if rep.skipped else 'built'} in {time.monotonic() - t0:.1f}s")
    t0 = time.monotonic()
    irep = inspect_variant(v, lock, echo=print)
    print(f"{v.name} static checks in {time.monotonic() - t0:.1f}s")
    yield v, lock, b, rep, irep
    if not os.environ.get("IMGFORGE_KEEP_GPU_IMAGES"):
        _remove(b, rep)


def test_digests_equal_golden(gpu_build):
    v, lock, _b, rep, _ = gpu_build
    golden = lock.get("golden") or {}
    assert set(golden) == {"vllm", "webui", "gateway"}, f"{v.name}: no golden digests (imgforge build --record-golden)"
    assert {svc: info["id"] for svc, info in rep.images.items()} == golden


def test_images_are_of_the_targets_architecture(gpu_build):
    v, _lock, _b, rep, _ = gpu_build
    want = {"x86_64": "amd64", "aarch64": "arm64"}[v.spec.platform.arch]
    for svc, info in rep.images.items():
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Architecture}} {{.Os}} {{.Config.User}}", info["ref"]],
                             capture_output=True, text=True, check=True).stdout.split()
        assert out[:2] == [want, "linux"], (svc, out)
        assert out[2] == "10001:10001", (svc, out)  # non-root


def test_no_stage_runs_code_of_a_foreign_architecture(gpu_build):
    from builder.build import runs_at_build

    v, _lock, b, _rep, _ = gpu_build
    if v.spec.platform.arch != "x86_64":
        assert runs_at_build(b.stages) == []


def test_static_checks_pass(gpu_build):
    v, _lock, _b, _rep, irep = gpu_build
    failed = [(svc, c) for svc, cs in irep.checks.items() for c in cs if c.status == "fail"]
    assert not failed, failed
    names = {svc: {c.name: c.status for c in cs} for svc, cs in irep.checks.items()}
    assert names["vllm"]["elf"] == names["webui"]["elf"] == names["gateway"]["elf"] == "ok"
    assert names["vllm"]["system"] == names["webui"]["system"] == names["gateway"]["system"] == "ok"
    assert names["vllm"]["cuda"] == names["vllm"]["packages"] == names["vllm"]["env-paths"] == "ok"
    if v.spec.platform.arch == "x86_64":
        assert names["vllm"]["import"] == names["vllm"]["flags"] == names["webui"]["import"] == "ok"
    else:
        assert names["vllm"]["import"] == names["vllm"]["flags"] == "skip"


def test_cuda_layer_is_shared_by_vllm_and_webui(gpu_build):
    """The nvidia-* wheels both services pin lie in one layer below both images."""
    _v, _lock, b, rep, _ = gpu_build
    layers = {}
    for svc in ("vllm", "webui"):
        out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", rep.images[svc]["ref"]],
                             capture_output=True, text=True, check=True).stdout
        layers[svc] = __import__("json").loads(out)
    assert "cuda" in b.by_name
    assert layers["vllm"][:3] == layers["webui"][:3]  # base, torch, cuda


def test_image_parser_refuses_a_flag_its_vllm_lacks(gpu_build):
    """The in-image flag check can fail: vLLM 0.8.5's parser refuses a flag of later versions."""
    from builder.inspect_images import check_flags_in_image

    v, _lock, _b, rep, _ = gpu_build
    if v.spec.platform.arch != "x86_64":
        pytest.skip("an aarch64 image's parser cannot run on this host")

    class WithLaterFlag:
        command = v.command + ["--enable-log-outputs"]  # arrived in vLLM 0.10

    bad = check_flags_in_image(rep.images["vllm"]["ref"], "/opt/imgforge/vllm/bin/python", WithLaterFlag())
    assert bad.status == "fail" and "enable-log-outputs" in bad.detail, bad


def test_cli_inspect_records_built_and_targets_shows_it(gpu_build):
    import json
    import sys

    v, *_ = gpu_build
    if v.spec.platform.arch == "x86_64":
        pytest.skip("once per session is enough: the aarch64 variant's checks are the quicker")
    proc = subprocess.run([sys.executable, "-m", "builder", "inspect", "--target", v.name, "--json"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads(proc.stdout)[0]
    assert rep["ok"] and rep["arch"] == "aarch64"
    rows = json.loads(subprocess.run([sys.executable, "-m", "builder", "targets", "--target", v.name, "--json"],
                                     capture_output=True, text=True, check=True).stdout)
    assert rows[0]["level"] == "built"  # a GPU variant: never more here

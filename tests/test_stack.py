"""The real cpu stack (vLLM CPU build, Open WebUI, nginx gateway images): up, verify, down.

Slow: the images come from `imgforge build --target cpu` (built here if missing);
one stack is shared by the tests that break things on purpose, each boot is
bounded, and every test leaves no container behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from builder import checks_http as ch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

needs_docker = pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(
    ["docker", "compose", "version"], capture_output=True).returncode != 0, reason="needs Docker with the Compose v2 plugin")


def imgforge(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builder", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def project_containers(project: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_variant():
    from builder.options import variants_of

    return variants_of(["cpu"])[0]


def target_copy(tmp: Path, **patch) -> Path:
    """The cpu target on free ports, with a patch; it shares cpu's lock (serve flags are not locked)."""
    data = yaml.safe_load((ROOT / "targets" / "cpu.yaml").read_text())
    data.setdefault("gateway", {}).update(api_port=free_port(), webui_port=free_port())
    for key, value in patch.items():
        data.setdefault(key, {}).update(value)
    (tmp / "t").mkdir(exist_ok=True)
    path = tmp / "t" / "cpu.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def images():
    from builder.stack import Stack

    st = Stack(cpu_variant())
    if st.missing_images():
        st.ensure_images()
    return st.images()


@pytest.fixture(scope="session")
def served(images, tmp_path_factory):
    """One real cpu stack for the tests below, torn down (with its volumes) at the end."""
    from builder.stack import Stack, free_port as fp

    root = tmp_path_factory.mktemp("stack")
    st = Stack(cpu_variant(), name="cpu-test", root=root, api_port=fp(), webui_port=fp())
    st.write()
    try:
        t0 = time.monotonic()
        st.start()
        urls = st.urls()
        st.wait_serving(urls, 300)
        print(f"cpu stack serving after {time.monotonic() - t0:.1f} s")
        yield st, urls
    finally:
        st.down(volumes=True, quiet=True)
        assert project_containers(st.project) == []


# ------------------------------------------------------------------ the command line, end to end

@pytest.mark.slow
@needs_docker
def test_verify_cpu_end_to_end(images, tmp_path):
    report = tmp_path / "report.json"
    t0 = time.monotonic()
    res = imgforge("verify", "--target", "cpu", "--json", str(report), env={"IMGFORGE_STATE": str(tmp_path / "state")})
    print(res.stdout[-6000:], res.stderr[-3000:])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["passed"] and data["level"] == "served"
    names = {c["name"] for c in data["checks"]}
    assert len(names) == len(ch.all_checks())
    assert all(c["passed"] for c in data["checks"])
    assert "expected" in res.stdout and "observed" in res.stdout
    assert project_containers("imgforge-cpu-verify") == []
    levels = json.loads((tmp_path / "state" / "levels.json").read_text())
    assert "served" in levels["cpu"]
    print(f"verify took {time.monotonic() - t0:.0f} s")


@needs_docker
def test_up_with_a_port_in_use_says_one_line_and_exits_2(tmp_path):
    target = target_copy(tmp_path)
    port = yaml.safe_load(target.read_text())["gateway"]["api_port"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        res = imgforge("up", "--target", str(target), "--detach", env={"IMGFORGE_STATE": str(tmp_path / "state")}, timeout=120)
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in res.stderr and "in use" in res.stderr
    assert project_containers("imgforge-cpu") == []


@pytest.mark.slow
@needs_docker
def test_up_of_a_stack_that_never_serves_fails_in_time_with_its_logs(images, tmp_path):
    # A KV cache (GiB) far beyond the container's memory limit: vLLM never serves.
    target = target_copy(tmp_path, env={"VLLM_CPU_KVCACHE_SPACE": "4096"})
    t0 = time.monotonic()
    res = imgforge("up", "--target", str(target), "--detach",
                   env={"IMGFORGE_STATE": str(tmp_path / "state"), "IMGFORGE_READY_TIMEOUT": "75"}, timeout=400)
    took = time.monotonic() - t0
    print(res.stderr[-4000:])
    assert res.returncode != 0
    assert took < 75 + 120
    assert "did not serve within 75 s" in res.stderr and "last 40 log lines of vllm" in res.stderr
    tail = res.stderr.split("last 40 log lines of vllm:", 1)[1].strip().splitlines()
    assert 0 < len(tail) <= 41
    assert project_containers("imgforge-cpu") == []


# ------------------------------------------------------------------ checks that need the real services, broken on purpose

@pytest.mark.slow
@needs_docker
def test_up_and_down_with_json(images, tmp_path):
    target = target_copy(tmp_path)
    env = {"IMGFORGE_STATE": str(tmp_path / "state")}
    try:
        t0 = time.monotonic()
        res = imgforge("up", "--target", str(target), "--detach", "--json", env=env, timeout=600)
        print(res.stderr[-3000:], f"up -> serving in {time.monotonic() - t0:.1f} s")
        assert res.returncode == 0, res.stderr[-3000:]
        info = json.loads(res.stdout)
        key_file = Path(info["api_key_file"])
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        key = key_file.read_text().strip()
        assert key not in res.stdout + res.stderr
        assert info["api"].startswith("http://127.0.0.1:") and info["api"].endswith("/v1")
        r = requests.post(f"{info['api']}/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json=ch.chat_body("tiny", max_tokens=4), timeout=60)
        assert r.status_code == 200
        assert requests.get(f"{info['webui']}/health", timeout=10).json() == {"status": True}
    finally:
        down = imgforge("down", "--target", str(target), "--volumes", env=env, timeout=120)
        assert down.returncode == 0, down.stderr
    assert project_containers("imgforge-cpu") == []


@pytest.mark.slow
@needs_docker
def test_real_stack_passes_the_read_only_checks(served):
    st, urls = served
    ep = st.endpoints(urls)
    checks = [c for c in ch.all_checks() if not isinstance(c, (ch.WebuiPersistence, ch.KillMidStream))]
    results = ch.run_checks(checks, ep)
    print(ch.table(results))
    assert all(r.passed for r in results), ch.table(results)


@pytest.mark.slow
@needs_docker
def test_identity_check_fails_on_the_real_log_with_another_expectation(served):
    st, urls = served
    ep = st.endpoints(urls)
    ep.expect = {**ep.expect, "quantization": "awq_marlin", "tensor_parallel_size": 4}
    res = ch.EngineIdentity().run(ep)
    assert not res.passed and "quantization=None" in res.observed and "tensor_parallel_size=1" in res.observed


@pytest.mark.slow
@needs_docker
def test_webui_chat_check_fails_when_vllm_did_not_answer(served):
    st, urls = served
    ep = st.endpoints(urls)
    ep.vllm_logs = lambda: ""  # a log in which vLLM never answered: the completion came from elsewhere
    res = ch.WebuiChat().run(ep)
    assert not res.passed and "0 -> 0" in res.observed


@pytest.mark.slow
@needs_docker
def test_persistence_check_fails_when_a_restart_loses_the_data(served):
    st, urls = served
    ep = st.endpoints(urls)

    def restart_without_data():  # a stack whose Open WebUI keeps its data in the container only
        st.compose("rm", "--stop", "--force", "webui")
        subprocess.run(["docker", "volume", "rm", f"{st.project}_webui-data"], check=True, capture_output=True)
        st.compose("up", "-d", "--no-build", "--pull", "never", "webui")

    ep.restart_webui = restart_without_data
    res = ch.WebuiPersistence().run(ep)
    assert not res.passed, res.observed
    assert ch.WebuiPersistence().run(st.endpoints(st.urls())).passed


@pytest.mark.slow
@needs_docker
def test_kill_check_fails_when_vllm_stays_down(served):
    st, urls = served
    ep = st.endpoints(urls)
    ep.kill_vllm = lambda: st.compose("stop", "--timeout", "0", "vllm")  # a deliberate stop: no restart policy
    try:
        res = ch.KillMidStream(recover_s=20).run(ep)
        assert not res.passed and "not serving" in res.observed
    finally:
        st.compose("start", "vllm")
        st.wait_serving(st.urls(), 300)
    res = ch.KillMidStream().run(st.endpoints(st.urls()))
    assert res.passed, res.observed

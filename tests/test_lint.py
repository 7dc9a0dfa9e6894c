"""lint with the real tools: `docker compose config` (Compose v2) and Debian's `nginx -t`.

Every variant of every target must pass both; broken files must fail them. The rendered
gateway is also run for real (nginx in front of a stub vLLM on loopback): keys, rate limit
and error bodies behave as the config says.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from builder import levels, lint
from builder.expand import expand
from builder.load import list_targets, load_target
from builder.render import render, render_texts, write_tree

ALL = [v for t in list_targets() for v in expand(load_target(t))]


def have_compose() -> bool:
    try:
        lint.docker_compose()
        return True
    except lint.ToolMissing:
        return False


def have_nginx() -> bool:
    try:
        lint.nginx_binary()
        return True
    except lint.ToolMissing:
        return False


needs_compose = pytest.mark.skipif(not have_compose(), reason="Docker Compose v2 plugin not installed (scripts/install-compose-v2.sh)")
needs_nginx = pytest.mark.skipif(not have_nginx(), reason="nginx not installed (scripts/install-lint-tools.sh)")


@pytest.fixture(autouse=True)
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("IMGFORGE_STATE", str(tmp_path / "state"))


@pytest.fixture
def stack(tmp_path):
    """A rendered, prepared cpu stack directory."""
    v = [v for v in ALL if v.name == "cpu"][0]
    d = tmp_path / "cpu"
    render(v, d)
    lint.prepare(d)
    return v, d


# ---- every variant passes --------------------------------------------------------------------


@needs_compose
@needs_nginx
@pytest.mark.parametrize("variant", ALL, ids=[v.name for v in ALL])
def test_every_variant_passes_compose_config_and_nginx_t(variant):
    res = lint.lint_variant(variant)
    by = {c.name: c for c in res.checks}
    assert by["compose"].status == "ok", by["compose"].detail
    assert by["nginx"].status == "ok", by["nginx"].detail
    assert by["flags"].status == "ok"
    assert by["flags"].notes == [r.describe(variant.spec.software.vllm) for r in variant.replaced]


@needs_compose
def test_compose_reads_the_stack_as_rendered(stack):
    v, d = stack
    model = lint.compose_config(d)
    assert model["name"] == "imgforge-cpu"
    assert model["services"]["vllm"]["command"] == v.command
    assert model["services"]["vllm"]["entrypoint"] == []  # the image's entrypoint is replaced
    assert "ports" not in model["services"]["vllm"]
    [port] = model["services"]["gateway"]["ports"]
    assert (port["host_ip"], port["published"], port["target"]) == ("127.0.0.1", "8080", 8080)
    assert model["services"]["webui"]["environment"]["WEBUI_SECRET_KEY"] == lint.PLACEHOLDER_SECRET


@needs_compose
def test_compose_keeps_dollar_signs_literal(tmp_path):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "targets" / "cpu.yaml").read_text())
    data["name"] = "cpu-dollar"
    data["env"]["SOME_SETTING"] = "a$b${c}"
    p = tmp_path / "cpu-dollar.yaml"
    p.write_text(yaml.safe_dump(data))
    [v] = expand(load_target(str(p)))
    d = tmp_path / "out"
    render(v, d)
    lint.prepare(d)
    # compose's normalized output is compose syntax again: `$$` there is one literal `$`. Left
    # unescaped, `$b` and `${c}` would have been interpolated away (to "a").
    assert lint.compose_config(d)["services"]["vllm"]["environment"]["SOME_SETTING"] == "a$$b$${c}"
    assert lint.check_compose(d, v).status == "ok"


# ---- mutants fail ------------------------------------------------------------------------------


@needs_compose
@pytest.mark.parametrize("old,new", [
    ("    shm_size:", "    shm_sise:"),                      # an unknown key
    ("      vllm:\n        condition: service_started", "      vlm:\n        condition: service_started"),  # an undefined service
    ("      interval: 5s", "      interval: [5s]"),          # a wrong type
    ("services:\n", "services:\n  bad service:\n    image: 1\n    command: {a: b}\n"),
])
def test_broken_compose_fails_validation(stack, old, new):
    v, d = stack
    text = (d / "compose.yaml").read_text()
    assert old in text
    (d / "compose.yaml").write_text(text.replace(old, new, 1))
    check = lint.check_compose(d, v)
    assert check.status == "fail", check.detail
    assert "docker compose config" in check.detail


@needs_compose
def test_compose_without_the_secret_fails(stack):
    v, d = stack
    env = (d / ".env").read_text()
    (d / ".env").write_text(re.sub(r"^WEBUI_SECRET_KEY=.*$", "WEBUI_SECRET_KEY=", env, flags=re.M))
    check = lint.check_compose(d, v)
    assert check.status == "fail" and "WEBUI_SECRET_KEY" in check.detail


@needs_compose
def test_compose_whose_command_drifted_from_the_variant_fails(stack):
    v, d = stack
    text = (d / "compose.yaml").read_text()
    (d / "compose.yaml").write_text(text.replace('"--enforce-eager"', '"--enforce-eagerly"', 1))
    check = lint.check_compose(d, v)
    assert check.status == "fail" and "command" in check.detail


@needs_nginx
@pytest.mark.parametrize("old,new", [
    ("pid /tmp/nginx.pid;", "pid /tmp/nginx.pid"),                 # a missing semicolon
    ("proxy_buffering off;", "proxy_bufering off;"),              # an unknown directive
    ("limit_req zone=per_key", "limit_req zone=no_such_zone"),    # a zone never declared
    ("    server {", "    server {\n        listen 8080 8081;"),  # bad arguments
])
def test_broken_nginx_conf_fails_nginx_t(stack, old, new):
    v, d = stack
    text = (d / "nginx.conf").read_text()
    assert old in text
    (d / "nginx.conf").write_text(text.replace(old, new, 1))
    check = lint.check_nginx(d / "nginx.conf")
    assert check.status == "fail", check.detail


needs_systemd = pytest.mark.skipif(lint.shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


@needs_systemd
@pytest.mark.parametrize("old,new", [
    (None, None),
    ("Restart=always", "Restart=sometimes"),               # a value systemd refuses
    ("RestartSec=15", "RestartSecs=15"),                   # an unknown key
    ("ExecStart=/usr/bin/docker", "ExecStart=docker-nope"),  # not an absolute, executable path
])
def test_systemd_unit_verifies_and_broken_units_fail(stack, old, new):
    v, d = stack
    unit = d / "imgforge-cpu.service"
    if old is None:
        assert lint.check_systemd(unit).status == "ok"
        return
    text = unit.read_text()
    assert old in text
    unit.write_text(text.replace(old, new, 1))
    check = lint.check_systemd(unit)
    assert check.status == "fail", check.detail


@needs_nginx
def test_nginx_t_needs_the_keys_file(stack):
    v, d = stack
    (d / "api_keys.map").unlink()
    check = lint.check_nginx(d / "nginx.conf")
    assert check.status == "fail" and "api_keys.map" in check.detail


def test_missing_tools_are_named_with_how_to_install(stack, monkeypatch):
    v, d = stack
    monkeypatch.setattr(lint.shutil, "which", lambda name: None)
    monkeypatch.setattr(lint.os, "access", lambda *a: False)
    c = lint.check_compose(d, v)
    n = lint.check_nginx(d / "nginx.conf")
    assert c.status == "skip" and "install-compose-v2.sh" in c.detail
    assert n.status == "skip" and "install-lint-tools.sh" in n.detail
    res = lint.lint_variant(v)
    assert res.ok and not res.linted


@pytest.mark.parametrize("env,status", [
    ({"PATH": "/opt/imgforge/vllm/bin:/usr/local/bin:/usr/bin:/bin"}, "ok"),
    ({"TRITON_PTXAS_PATH": "/opt/imgforge/torch/lib/python3.11/site-packages/nvidia/cu13/bin/ptxas"}, "ok"),
    ({"PATH": "/opt/vllm/bin:/usr/bin:/bin"}, "fail"),
    ({"LD_LIBRARY_PATH": "/usr/local/cuda/lib64"}, "fail"),
])
def test_paths_check_flags_directories_the_images_do_not_have(tmp_path, env, status):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "targets" / "cpu.yaml").read_text())
    data["name"] = "cpu-paths"
    data["env"].update(env)
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(data))
    [v] = expand(load_target(str(p)))
    check = lint.check_paths(v)
    assert check.status == status, check.notes
    res = lint.lint_variant(v)
    assert res.ok == (status == "ok")


def test_memory_check_fails_when_the_model_does_not_fit(tmp_path):
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "targets" / "tp4-rtx4090.yaml").read_text())
    data["name"] = "tp4-squeezed"
    data["serve"]["gpu-memory-utilization"] = 0.3
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(data))
    [v] = expand(load_target(str(p)))
    check = lint.check_memory(v)
    assert check.status == "fail" and "does not fit" in check.detail
    [ok] = [x for x in ALL if x.name == "tp4-rtx4090"]
    assert lint.check_memory(ok).status == "ok"


# ---- the CLI records the level ---------------------------------------------------------------------


@needs_compose
@needs_nginx
def test_cli_lint_records_linted():
    from builder.cli import cli

    res = CliRunner().invoke(cli, ["lint", "--target", "tp2-a40", "--json"])
    assert res.exit_code == 0, res.output
    [r] = json.loads(res.output)
    assert r["linted"] and levels.highest("tp2-a40")[0] == "linted"


def test_cli_lint_fails_and_records_nothing_when_a_check_fails(monkeypatch):
    from builder.cli import cli

    monkeypatch.setattr(lint, "check_nginx", lambda conf: lint.Check("nginx", "fail", "nginx -t: broken"))
    res = CliRunner().invoke(cli, ["lint", "--target", "cpu"])
    assert res.exit_code == 1
    assert "NOT linted" in res.output and "broken" in res.output
    assert levels.highest("cpu") is None


# ---- the rendered gateway, run for real -------------------------------------------------------------


class StubVLLM(http.server.BaseHTTPRequestHandler):
    seen_auth: list = []

    def log_message(self, *a):
        pass

    def _send(self, code, body, ctype="application/json"):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        StubVLLM.seen_auth.append(self.headers.get("Authorization"))
        if self.path == "/health":
            self._send(200, "")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": "tiny"}]}))
        elif self.path == "/metrics":
            self._send(200, "vllm:num_requests_running 0\n", "text/plain")
        else:
            self._send(404, json.dumps({"error": "not found"}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url: str, key: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


@needs_nginx
def test_rendered_gateway_enforces_keys_limits_and_json_errors(tmp_path):
    v = [v for v in ALL if v.name == "cpu"][0]
    d = tmp_path / "gw"
    write_tree(render_texts(v), d)
    key = "sk-test-123"
    (d / "api_keys.map").write_text(f'"{key}" 1;\n')
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubVLLM)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = free_port()
    conf = (d / "nginx.conf").read_text()
    # Point the rendered config at loopback: its own port, the stub instead of the `vllm` service.
    for old, new in (("listen 8080;", f"listen 127.0.0.1:{port};"),
                     ("set $vllm http://vllm:8000;", f"set $vllm http://127.0.0.1:{upstream.server_address[1]};"),
                     ("pid /tmp/nginx.pid;", f"pid {d}/nginx.pid;")):
        assert old in conf
        conf = conf.replace(old, new)
    conf = conf.replace("/tmp/nginx-", f"{d}/nginx-").replace("access_log /dev/stdout;", "access_log off;")
    (d / "nginx.conf").write_text(conf)
    nginx = lint.nginx_binary()
    proc = subprocess.Popen([nginx, "-e", "stderr", "-p", f"{d}/", "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        assert call(f"{base}/health")[0] == 200
        code, ctype, body = call(f"{base}/v1/models")
        assert code == 401 and ctype.startswith("application/json") and json.loads(body)["error"]["code"] == "missing_api_key"
        code, ctype, body = call(f"{base}/v1/models", "sk-wrong")
        assert code == 403 and json.loads(body)["error"]["code"] == "invalid_api_key"
        code, _, body = call(f"{base}/v1/models", key)
        assert code == 200 and json.loads(body)["data"][0]["id"] == "tiny"
        assert StubVLLM.seen_auth[-1] in (None, "")  # the key stays in the gateway
        assert call(f"{base}/metrics")[0] == 401 and call(f"{base}/metrics", key)[0] == 200
        codes = [call(f"{base}/v1/models", key) for _ in range(40)]
        limited = [c for c in codes if c[0] == 429]
        assert limited, [c[0] for c in codes]
        assert limited[0][1].startswith("application/json") and json.loads(limited[0][2])["error"]["code"] == "rate_limit_exceeded"
        assert all(call(f"{base}/health")[0] == 200 for _ in range(30))  # /health has no limit
        upstream.shutdown()
        upstream.server_close()
        time.sleep(1.1)  # let the per-key bucket drain
        code, ctype, body = call(f"{base}/v1/models", key)
        assert code == 502 and json.loads(body)["error"]["code"] == "upstream_unavailable"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@needs_nginx
def test_long_api_keys_fit_the_key_map_and_the_default_bucket_would_not(stack):
    v, d = stack
    (d / "api_keys.map").write_text('"sk-' + "k" * 96 + '" 1;\n')
    assert lint.check_nginx(d / "nginx.conf").status == "ok"
    text = (d / "nginx.conf").read_text()
    (d / "nginx.conf").write_text(text.replace("map_hash_bucket_size 128;", "", 1))
    check = lint.check_nginx(d / "nginx.conf")
    assert check.status == "fail", check.detail

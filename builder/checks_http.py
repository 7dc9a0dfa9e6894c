"""Checks of a served stack, one small object per check.

Each check talks to the running services the way an operator with curl would
and returns a CheckResult: name, expected, observed, passed, seconds. A check
never raises; whatever goes wrong becomes its observed value. Every loop and
every request is bounded by a timeout.

The checks need a StackEndpoints: the gateway's base URL and a valid key, the
served model name, Open WebUI's base URL, and (for the checks that read logs or
break things on purpose) callables that read vLLM's log, restart Open WebUI and
kill vLLM. `imgforge verify` builds it from a booted compose stack; the tests
build it from processes on loopback.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

import requests

WRONG_KEY = "imgforge-wrong-key-" + "0" * 16


@dataclass
class CheckResult:
    name: str
    expected: str
    observed: str
    passed: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StackEndpoints:
    """What the checks talk to. Callables are None where a check cannot run."""

    api: str  # gateway base URL, e.g. http://127.0.0.1:8080 (no trailing /v1)
    key: str
    served_name: str
    webui: str | None = None
    rate_per_second: int = 10
    burst: int = 20
    metrics: str = "key"  # key | open | off
    expect: dict[str, Any] = field(default_factory=dict)
    vllm_logs: Callable[[], str] | None = None
    restart_webui: Callable[[], None] | None = None
    kill_vllm: Callable[[], None] | None = None
    timeout_s: float = 30.0


class Check:
    name = "check"
    expected = ""

    def run(self, ep: StackEndpoints) -> CheckResult:
        start = time.monotonic()
        try:
            passed, observed, details = self.probe(ep)
        except Exception as exc:  # a check reports, it does not raise
            passed, observed, details = False, f"{type(exc).__name__}: {exc}"[:300], {}
        return CheckResult(self.name, self.expected, observed, passed, round(time.monotonic() - start, 3), details)

    def probe(self, ep: StackEndpoints) -> tuple[bool, str, dict[str, Any]]:
        raise NotImplementedError


# ---------------------------------------------------------------- helpers


def _auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _is_json(resp: requests.Response) -> bool:
    try:
        resp.json()
    except ValueError:
        return False
    return True


def _status_and_body(resp: requests.Response) -> str:
    body = resp.text.strip().replace("\n", " ")
    return f"{resp.status_code} {body[:80]}"


def chat_body(model: str, content: str = "Say hello.", max_tokens: int = 8, stream: bool = False, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
    }
    body.update(extra)
    return body


def chat_once(api: str, key: str, model: str, timeout: float = 30.0, max_tokens: int = 8) -> requests.Response:
    return requests.post(
        f"{api}/v1/chat/completions", json=chat_body(model, max_tokens=max_tokens), headers=_auth(key), timeout=timeout
    )


@dataclass
class StreamTrace:
    status: int
    events: list[tuple[float, str]]  # (seconds since request, data payload)
    reads: int
    end: float  # seconds since request when the body ended (or failed)
    error: str | None = None

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1][1] == "[DONE]"

    @property
    def first(self) -> float | None:
        return self.events[0][0] if self.events else None


def stream_trace(base: str, path: str, body: dict[str, Any], headers: dict[str, str], timeout: float = 30.0,
                 on_event: Callable[[int], None] | None = None, deadline_s: float = 120.0) -> StreamTrace:
    """POST and read the SSE body as bytes arrive, timing each `data:` event.

    http.client's read1() returns whatever the socket has, so an event's time is
    when it reached this process, not when the body ended. `timeout` bounds each
    socket read; `deadline_s` bounds the whole response.
    """
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    t0 = time.monotonic()
    events: list[tuple[float, str]] = []
    reads = 0
    error = None
    status = 0
    try:
        # Ask for gzip as browsers do: a gateway that compresses event streams
        # must still flush every event.
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json", "Accept-Encoding": "gzip", **headers})
        resp = conn.getresponse()
        status = resp.status
        gz = zlib.decompressobj(16 + zlib.MAX_WBITS) if resp.getheader("Content-Encoding") == "gzip" else None
        buf = b""
        while time.monotonic() - t0 < deadline_s:
            chunk = resp.read1(65536)
            if not chunk:
                break
            reads += 1
            now = time.monotonic() - t0
            buf += gz.decompress(chunk) if gz else chunk
            while b"\n\n" in buf:
                raw, buf = buf.split(b"\n\n", 1)
                for line in raw.decode("utf-8", "replace").splitlines():
                    if line.startswith("data:"):
                        events.append((now, line[5:].strip()))
                        if on_event:
                            on_event(len(events))
        else:
            error = f"response still open after {deadline_s:.0f} s"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()
    return StreamTrace(status, events, reads, time.monotonic() - t0, error)


def vllm_chat_posts(log: str) -> int:
    """Chat completions vLLM itself answered, counted from its access log."""
    return len(re.findall(r'"POST /v1/chat/completions HTTP/1\.[01]" 200', log))


def wait_for(fn: Callable[[], bool], timeout_s: float, interval_s: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if fn():
                return True
        except Exception:
            pass
        time.sleep(interval_s)
    return False


def serves(api: str, key: str, model: str, timeout: float = 30.0) -> bool:
    """A real chat completion through the gateway returned tokens."""
    r = chat_once(api, key, model, timeout=timeout, max_tokens=2)
    return r.status_code == 200 and (r.json().get("usage") or {}).get("completion_tokens", 0) > 0


# ---------------------------------------------------------------- gateway


class HealthOpen(Check):
    name = "gateway /health without key"
    expected = "200"

    def probe(self, ep):
        r = requests.get(f"{ep.api}/health", timeout=ep.timeout_s)
        return r.status_code == 200, str(r.status_code), {}


class NoKey(Check):
    name = "/v1/models without key"
    expected = "401, JSON body"

    def probe(self, ep):
        r = requests.get(f"{ep.api}/v1/models", timeout=ep.timeout_s)
        ok = r.status_code == 401 and _is_json(r)
        return ok, _status_and_body(r), {}


class WrongKey(Check):
    name = "/v1/models with a wrong key"
    expected = "403, JSON body"

    def probe(self, ep):
        r = requests.get(f"{ep.api}/v1/models", headers=_auth(WRONG_KEY), timeout=ep.timeout_s)
        ok = r.status_code == 403 and _is_json(r)
        return ok, _status_and_body(r), {}


class ModelsListed(Check):
    name = "/v1/models with the key"
    expected = "200, exactly the served model name"

    def probe(self, ep):
        self.expected = f"200, exactly [{ep.served_name!r}]"
        r = requests.get(f"{ep.api}/v1/models", headers=_auth(ep.key), timeout=ep.timeout_s)
        if r.status_code != 200:
            return False, _status_and_body(r), {}
        ids = [m.get("id") for m in r.json().get("data", [])]
        return ids == [ep.served_name], f"200 {ids}", {"ids": ids}


class ChatCompletion(Check):
    name = "chat completion"
    expected = "200 with completion tokens"

    def probe(self, ep):
        r = chat_once(ep.api, ep.key, ep.served_name, timeout=ep.timeout_s, max_tokens=8)
        if r.status_code != 200:
            return False, _status_and_body(r), {}
        data = r.json()
        n = (data.get("usage") or {}).get("completion_tokens", 0)
        text = (data.get("choices") or [{}])[0].get("message", {}).get("content") or ""
        return n > 0 and data.get("model") == ep.served_name, f"200, {n} tokens, model {data.get('model')!r}", {"text": text[:80]}


class StreamUnbuffered(Check):
    """SSE chunks reach the client while generation still runs.

    A proxy that holds the stream delivers every event in the last read; here at
    least `min_early` events must arrive `margin_s` or more before the body ends,
    and the last event must be `[DONE]`.
    """

    name = "streaming: chunks before the end, then [DONE]"

    def __init__(self, min_early: int = 3, margin_s: float = 0.05, max_tokens: int = 128):
        self.min_early, self.margin_s, self.max_tokens = min_early, margin_s, max_tokens
        self.expected = f">= {min_early} SSE events >= {margin_s * 1000:.0f} ms before the end; last is [DONE]"

    def probe(self, ep):
        body = chat_body(ep.served_name, content="Count to fifty.", max_tokens=self.max_tokens, stream=True, ignore_eos=True)
        tr = stream_trace(ep.api, "/v1/chat/completions", body, _auth(ep.key), timeout=ep.timeout_s)
        if tr.status != 200:
            return False, f"HTTP {tr.status} {tr.error or ''}".strip(), {}
        early = sum(1 for t, _ in tr.events if t <= tr.end - self.margin_s)
        details = {"events": len(tr.events), "reads": tr.reads, "first_event_s": tr.first, "end_s": round(tr.end, 3),
                   "early": early}
        observed = (f"{len(tr.events)} events in {tr.reads} reads, {early} before the end, first at "
                    f"{(tr.first or 0) * 1000:.0f} ms of {tr.end * 1000:.0f} ms, last {tr.events[-1][1][:12] if tr.events else None!r}")
        if tr.error:
            observed += f"; {tr.error}"
        return early >= self.min_early and tr.done and not tr.error, observed, details


class RateLimited(Check):
    """More than burst + rate requests at once on one key: some get 429 with a JSON body.

    Afterwards waits (bounded) until the key is served again, so later checks
    are not limited.
    """

    name = "over the rate limit"
    expected = "429 with a JSON body"

    def probe(self, ep):
        n = ep.burst + ep.rate_per_second + 10
        codes: list[int] = []
        limited: list[requests.Response] = []
        with requests.Session() as s:
            s.headers.update(_auth(ep.key))
            for _ in range(n):
                r = s.get(f"{ep.api}/v1/models", timeout=ep.timeout_s)
                codes.append(r.status_code)
                if r.status_code == 429:
                    limited.append(r)
        counts = {c: codes.count(c) for c in sorted(set(codes))}
        refill = (ep.burst + 1) / ep.rate_per_second + 1
        wait_for(lambda: requests.get(f"{ep.api}/v1/models", headers=_auth(ep.key), timeout=5).status_code == 200,
                 refill + 5, 0.25)
        time.sleep(refill)
        if not limited:
            return False, f"{n} requests: {counts}", {"codes": counts}
        first = limited[0]
        ok = _is_json(first)
        ctype = first.headers.get("Content-Type", "")
        return ok, f"{n} requests: {counts}; 429 body {first.text.strip()[:60]!r} ({ctype})", {"codes": counts}


class MetricsReachable(Check):
    """vLLM's /metrics where the target says: behind the key, open, or not routed."""

    name = "vLLM /metrics"

    def probe(self, ep):
        mode = ep.metrics
        self.expected = {"key": "401 without key; 200 vllm: metrics with key", "open": "200 vllm: metrics without key",
                         "off": "not routed (404) even with the key"}[mode]
        anon = requests.get(f"{ep.api}/metrics", timeout=ep.timeout_s)
        keyed = requests.get(f"{ep.api}/metrics", headers=_auth(ep.key), timeout=ep.timeout_s)
        has = lambda r: r.status_code == 200 and "vllm:" in r.text
        observed = f"without key {anon.status_code}, with key {keyed.status_code}{' (vllm: metrics)' if has(keyed) else ''}"
        if mode == "key":
            ok = anon.status_code == 401 and has(keyed)
        elif mode == "open":
            ok = has(anon)
        else:
            ok = keyed.status_code == 404 and not has(keyed)
        return ok, observed, {}


# ---------------------------------------------------------------- engine identity

IDENTITY_RE = re.compile(r"Initializing a V1 LLM engine \(v(?P<version>[^)]+)\) with config: (?P<config>.*)")
ATTN_RES = [
    re.compile(r"Using (?P<b>[A-Za-z0-9_]+) (?:attention )?backend", re.I),
    re.compile(r"attention backend[: ]+(?P<b>[A-Za-z0-9_]+)", re.I),
]


def parse_identity(log: str) -> dict[str, str] | None:
    """The engine's identity from its start-up log line (the last one, after restarts)."""
    matches = list(IDENTITY_RE.finditer(log))
    if not matches:
        return None
    m = matches[-1]
    cfg = m.group("config")
    ident = {"vllm_version": m.group("version")}
    for key, field_ in (("device", "device_config"), ("load_format", "load_format"), ("quantization", "quantization"),
                        ("kv_cache_dtype", "kv_cache_dtype"), ("tensor_parallel_size", "tensor_parallel_size"),
                        ("dtype", "dtype")):
        fm = re.search(rf"\b{field_}=([^,\s]+)", cfg)
        if fm:
            ident[key] = fm.group(1)
    for rx in ATTN_RES:
        am = rx.search(log)
        if am:
            ident["attention_backend"] = am.group("b")
            break
    return ident


class EngineIdentity(Check):
    name = "engine start-up identity"

    def probe(self, ep):
        want = {k: str(v) for k, v in ep.expect.items() if v is not None}
        self.expected = ", ".join(f"{k}={v}" for k, v in want.items()) or "an identity line"
        if ep.vllm_logs is None:
            return False, "no access to vLLM's log", {}
        ident = parse_identity(ep.vllm_logs())
        if ident is None:
            return False, "no 'Initializing a V1 LLM engine' line in vLLM's log", {}
        wrong = {k: ident.get(k) for k, v in want.items() if ident.get(k, "").lower() != v.lower()}
        observed = ", ".join(f"{k}={ident.get(k)}" for k in want) or ", ".join(f"{k}={v}" for k, v in ident.items())
        if wrong:
            observed += "; differs: " + ", ".join(f"{k}={v}" for k, v in wrong.items())
        return not wrong, observed, {"identity": ident}


# ---------------------------------------------------------------- Open WebUI


def webui_token(webui: str, timeout: float = 30.0) -> str:
    r = requests.post(f"{webui}/api/v1/auths/signin", json={"email": "", "password": ""}, timeout=timeout)
    r.raise_for_status()
    return r.json()["token"]


class WebuiHealth(Check):
    name = "Open WebUI /health"
    expected = '200 {"status": true}'

    def probe(self, ep):
        r = requests.get(f"{ep.webui}/health", timeout=ep.timeout_s)
        ok = r.status_code == 200 and _is_json(r) and r.json().get("status") is True
        return ok, _status_and_body(r), {}


class WebuiModels(Check):
    name = "Open WebUI lists the model"

    def probe(self, ep):
        self.expected = f"signin token; /api/models has {ep.served_name!r}"
        tok = webui_token(ep.webui, ep.timeout_s)
        r = requests.get(f"{ep.webui}/api/models", headers=_auth(tok), timeout=ep.timeout_s)
        if r.status_code != 200:
            return False, _status_and_body(r), {}
        ids = [m.get("id") for m in r.json().get("data", [])]
        return ep.served_name in ids, f"200 {ids}", {}


class WebuiChat(Check):
    """A chat through Open WebUI that vLLM itself answered: vLLM's access log
    gains a `POST /v1/chat/completions ... 200` line during the request."""

    name = "Open WebUI chat answered by vLLM"
    expected = "200 with content; vLLM logged one more chat completion"

    def probe(self, ep):
        if ep.vllm_logs is None:
            return False, "no access to vLLM's log", {}
        tok = webui_token(ep.webui, ep.timeout_s)
        before = vllm_chat_posts(ep.vllm_logs())
        r = requests.post(f"{ep.webui}/api/chat/completions", headers=_auth(tok),
                          json=chat_body(ep.served_name, max_tokens=8), timeout=ep.timeout_s * 2)
        if r.status_code != 200:
            return False, _status_and_body(r), {}
        data = r.json()
        content = ((data.get("choices") or [{}])[0].get("message") or {}).get("content")
        after = before
        # vLLM writes the access-log line when the response is done; give the log a moment.
        wait_for(lambda: vllm_chat_posts(ep.vllm_logs()) > before, 10, 0.5)
        after = vllm_chat_posts(ep.vllm_logs())
        ok = bool(content) and data.get("model") == ep.served_name and after > before
        return ok, f"200 model {data.get('model')!r}, {len(content or '')} chars; vLLM chat completions {before} -> {after}", {}


class WebuiPersistence(Check):
    name = "Open WebUI chat survives a restart"
    expected = "the chat created before the restart is there after it"

    def __init__(self, ready_timeout_s: float = 120.0):
        self.ready_timeout_s = ready_timeout_s

    def probe(self, ep):
        if ep.restart_webui is None:
            return False, "no way to restart Open WebUI", {}
        tok = webui_token(ep.webui, ep.timeout_s)
        title = f"imgforge-verify-{uuid.uuid4().hex[:8]}"
        chat = {"title": title, "models": [ep.served_name],
                "messages": [{"role": "user", "content": "persist me"}], "history": {"messages": {}, "currentId": None}}
        r = requests.post(f"{ep.webui}/api/v1/chats/new", headers=_auth(tok), json={"chat": chat}, timeout=ep.timeout_s)
        if r.status_code != 200:
            return False, "create chat: " + _status_and_body(r), {}
        chat_id = r.json()["id"]
        ep.restart_webui()
        if not wait_for(lambda: requests.get(f"{ep.webui}/health", timeout=5).json().get("status") is True,
                        self.ready_timeout_s, 1.0):
            return False, f"Open WebUI not healthy {self.ready_timeout_s:.0f} s after the restart", {}
        tok = webui_token(ep.webui, ep.timeout_s)
        g = requests.get(f"{ep.webui}/api/v1/chats/{chat_id}", headers=_auth(tok), timeout=ep.timeout_s)
        got = g.json().get("title") if g.status_code == 200 and _is_json(g) else None
        return got == title, f"after restart: HTTP {g.status_code}, title {got!r}", {"chat_id": chat_id}


# ---------------------------------------------------------------- failure and recovery


class KillMidStream(Check):
    """Kill vLLM while a stream is flowing: the client gets a clean error within
    `error_within_s` (no hang), then the stack serves again by itself within
    `recover_s` (restart policy; the gateway finds the new vLLM)."""

    name = "vLLM killed mid-stream: clean error, recovery"

    def __init__(self, error_within_s: float = 10.0, recover_s: float = 180.0, client_timeout_s: float = 20.0):
        self.error_within_s, self.recover_s, self.client_timeout_s = error_within_s, recover_s, client_timeout_s
        self.expected = f"stream ends without [DONE] <= {error_within_s:.0f} s after the kill; serves again <= {recover_s:.0f} s"

    def probe(self, ep):
        if ep.kill_vllm is None:
            return False, "no way to kill vLLM", {}
        started = threading.Event()
        result: dict[str, StreamTrace] = {}
        body = chat_body(ep.served_name, content="Go on forever.", max_tokens=1000, stream=True, ignore_eos=True)

        def client():
            result["trace"] = stream_trace(ep.api, "/v1/chat/completions", body, _auth(ep.key),
                                           timeout=self.client_timeout_s,
                                           on_event=lambda n: started.set() if n >= 3 else None,
                                           deadline_s=self.client_timeout_s * 3)

        th = threading.Thread(target=client, daemon=True)
        th.start()
        if not started.wait(self.client_timeout_s):
            return False, "the stream never started", {}
        killed_at = time.monotonic()
        ep.kill_vllm()
        th.join(self.client_timeout_s * 3 + 5)
        ended_after = time.monotonic() - killed_at
        tr = result.get("trace")
        if tr is None:
            return False, "client thread still running", {}
        clean = not tr.done and ended_after <= self.error_within_s
        how = tr.error or "body ended without [DONE]"
        t1 = time.monotonic()
        per_try = min(15.0, self.recover_s)
        recovered = wait_for(lambda: serves(ep.api, ep.key, ep.served_name, timeout=per_try), self.recover_s, 2.0)
        rec_s = time.monotonic() - t1
        observed = (f"client saw {len(tr.events)} events then {how[:80]!r} {ended_after:.1f} s after the kill; "
                    + (f"served again after {rec_s:.0f} s" if recovered else f"not serving after {rec_s:.0f} s"))
        return clean and recovered, observed, {"error_after_s": round(ended_after, 2), "recovered_s": round(rec_s, 1)}


def gateway_checks() -> list[Check]:
    return [HealthOpen(), NoKey(), WrongKey(), ModelsListed(), ChatCompletion(), StreamUnbuffered(), MetricsReachable(),
            RateLimited()]


def all_checks() -> list[Check]:
    """Every check, in order: read-only first, restarts and kills last."""
    return [*gateway_checks()[:-1], EngineIdentity(), WebuiHealth(), WebuiModels(), WebuiChat(), RateLimited(),
            WebuiPersistence(), KillMidStream()]


def run_checks(checks: list[Check], ep: StackEndpoints, log: Callable[[CheckResult], None] | None = None) -> list[CheckResult]:
    out = []
    for c in checks:
        res = c.run(ep)
        out.append(res)
        if log:
            log(res)
    return out


def table(results: list[CheckResult]) -> str:
    rows = [("check", "expected", "observed", "time", "")]
    rows += [(r.name, r.expected, r.observed, f"{r.seconds:.2f}s", "ok" if r.passed else "FAIL") for r in results]
    widths = [min(max(len(r[i]) for r in rows), cap) for i, cap in enumerate((44, 50, 90, 8, 4))]
    clip = lambda s, w: s if len(s) <= w else s[: w - 1] + "…"
    lines = ["  ".join(clip(c, w).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

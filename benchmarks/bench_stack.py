"""Benchmark: `up` -> first completion through the gateway, and what the gateway adds.

    python benchmarks/bench_stack.py [--target cpu] [--n 40]

Boots the target's stack (images already built) as its own Compose project on
free loopback ports, measures the time from `docker compose up` to the first
chat completion through the gateway, then, side by side in one run and
interleaved, small completions and the first SSE chunk through the gateway
(keys and rate limit on) and straight to vLLM (its container address on the
stack's network). Tears everything down at the end.

Baselines (FINDINGS.md, this machine class): a plain compose stack of the same
services took 29-33 s from up to the first completion (goal: <= 0.8x, 23.2 s);
a bare nginx proxy added ~0.07 ms p50 (goal: <= 0.2 ms bare, <= 1 ms with keys
and limits on).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import requests  # noqa: E402

from builder import checks_http as ch  # noqa: E402
from builder.options import variants_of  # noqa: E402
from builder.stack import Stack, free_port  # noqa: E402

BASELINE_UP_S = (29.0, 33.0)
GOAL_UP_S = 0.8 * BASELINE_UP_S[0]
GOAL_ADDED_MS = 1.0


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def timed_completion(s: requests.Session, base: str, model: str) -> float:
    t = time.perf_counter()
    r = s.post(f"{base}/v1/chat/completions", json=ch.chat_body(model, max_tokens=1), timeout=30)
    dt = time.perf_counter() - t
    r.raise_for_status()
    return dt


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="cpu")
    ap.add_argument("--n", type=int, default=100, help="requests per path and measure")
    args = ap.parse_args()
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

    v = variants_of([args.target])[0]
    root = Path(tempfile.mkdtemp(prefix="imgforge-bench-"))
    st = Stack(v, name=f"{v.name}-bench", root=root, api_port=free_port(), webui_port=free_port())
    st.write()
    missing = st.missing_images()
    if missing:
        print(f"images missing: {', '.join(missing)} (run imgforge build --target {args.target})", file=sys.stderr)
        return 2
    try:
        t0 = time.monotonic()
        st.start()
        urls = st.urls()
        st.wait_serving(urls, 300, interval_s=0.25)
        up_s = time.monotonic() - t0
        # Open WebUI is healthy by then too (wait_serving waits for it).
        key, model = st.api_key(), v.served_name
        direct = f"http://{st.vllm_ip()}:8000"
        g = st.container("gateway")
        gw_ip = next(iter(g.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        gw_net = f"http://{gw_ip}:8080"  # nginx itself, without Docker's published-port path
        gw = requests.Session()
        gw.headers["Authorization"] = f"Bearer {key}"
        dr = requests.Session()
        for _ in range(3):  # warm both paths
            timed_completion(gw, urls.api, model)
            timed_completion(dr, direct, model)
        pace = 1.0 / max(1, v.spec.gateway.rate_per_second - 2)  # stay under the per-key limit
        gn = requests.Session()
        gn.headers["Authorization"] = f"Bearer {key}"
        lat_gw, lat_dr, lat_gn, sse_gw, sse_dr = [], [], [], [], []
        for i in range(args.n):  # interleaved, order rotating, so drift and wake-ups hit every path alike
            trio = [(lat_dr, dr, direct), (lat_gw, gw, urls.api), (lat_gn, gn, gw_net)]
            for out, sess, base in trio[i % 3:] + trio[: i % 3]:
                out.append(timed_completion(sess, base, model))
            time.sleep(2 * pace)  # two gateway requests per round stay under the per-key limit
        body = ch.chat_body(model, max_tokens=4, stream=True)
        for i in range(max(10, args.n // 2)):
            pair = [(sse_dr, direct, {}), (sse_gw, urls.api, {"Authorization": f"Bearer {key}"})]
            for out, base, hdr in (pair if i % 2 else pair[::-1]):
                out.append(ch.stream_trace(base, "/v1/chat/completions", body, hdr).first or float("nan"))
            time.sleep(pace)
    finally:
        st.down(volumes=True, quiet=True)

    ms = lambda x: x * 1000
    p50_gw, p50_dr = ms(statistics.median(lat_gw)), ms(statistics.median(lat_dr))
    f50_gw, f50_dr = ms(statistics.median(sse_gw)), ms(statistics.median(sse_dr))
    # Added latency: median of paired differences is noisy on 2 cores; report both.
    paired = ms(statistics.median([g - d for g, d in zip(lat_gw, lat_dr)]))
    print(f"imgforge stack benchmark: target {v.name}, {args.n} requests per path, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews every figure)")
    print(f"{'measure':46s} {'value':>12s} {'baseline':>14s} {'goal':>10s}")
    print(f"{'up -> first completion through the gateway':46s} {up_s:10.1f} s {'29-33 s':>14s} {'<= %.1f s' % GOAL_UP_S:>10s}"
          f"  {'met' if up_s <= GOAL_UP_S else 'NOT met'}")
    print(f"{'completion p50, direct to vLLM':46s} {p50_dr:9.2f} ms")
    print(f"{'completion p50, through the gateway':46s} {p50_gw:9.2f} ms")
    added = p50_gw - p50_dr
    print(f"{'gateway added p50 (keys + limits on)':46s} {added:9.2f} ms {'0.07 ms bare':>14s} {'<= 1 ms':>10s}"
          f"  {'met' if added <= GOAL_ADDED_MS else 'NOT met'}")
    print(f"{'gateway added, median of paired differences':46s} {paired:9.2f} ms")
    p50_gn = ms(statistics.median(lat_gn))
    print(f"{'completion p50, gateway container address':46s} {p50_gn:9.2f} ms")
    print(f"{'nginx alone added p50 (no published port)':46s} {p50_gn - p50_dr:9.2f} ms {'0.07 ms bare':>14s} {'<= 1 ms':>10s}"
          f"  {'met' if p50_gn - p50_dr <= GOAL_ADDED_MS else 'NOT met'}")
    print(f"{'SSE first chunk p50, direct':46s} {f50_dr:9.2f} ms")
    print(f"{'SSE first chunk p50, through the gateway':46s} {f50_gw:9.2f} ms")
    print(f"{'SSE first-chunk delay added':46s} {f50_gw - f50_dr:9.2f} ms {'~0 ms':>14s}")
    print(f"{'completion p90 direct / gateway':46s} {ms(pct(lat_dr, 90)):6.2f} / {ms(pct(lat_gw, 90)):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())

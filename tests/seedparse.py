"""Read the field reports in ../shared/seeds/ the way a person would: their own commands.

Nothing here knows what a target file says; expectations come from the seed texts.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SEEDS_DIR = REPO.parent / "shared" / "seeds"


def seed_text(number: str) -> str:
    """The text of seed NNN (file NNN_<hash>.txt)."""
    found = sorted(SEEDS_DIR.glob(f"{number}_*.txt"))
    if not found:
        raise FileNotFoundError(f"no seed {number} in {SEEDS_DIR}")
    return found[0].read_text(encoding="utf-8")


# ---- command lines -----------------------------------------------------------------


def parse_argv(argv: list[str]) -> dict[str, Any]:
    """vLLM server argv -> {flag: value}; a flag alone is True, several values a list.

    The model may be positional (`vllm serve MODEL`) or `--model MODEL`; both give "model".
    """
    if "serve" in argv:
        argv = argv[argv.index("serve") + 1:]
    elif "vllm.entrypoints.openai.api_server" in argv:
        argv = argv[argv.index("vllm.entrypoints.openai.api_server") + 1:]
    flags: dict[str, Any] = {}
    i = 0
    if argv and not argv[0].startswith("-"):
        flags["model"] = argv[0]
        i = 1
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--"):
            raise ValueError(f"value {tok!r} without a flag in {argv!r}")
        name, eq, inline = tok[2:].partition("=")
        i += 1
        if eq:
            flags[name] = inline
            continue
        values = []
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        flags[name] = True if not values else values[0] if len(values) == 1 else values
    return flags


def _joined_lines(text: str, start: int) -> str:
    """A shell command starting at `start`, with its backslash continuations joined."""
    out = []
    for line in text[start:].splitlines():
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            out.append(stripped[:-1])
            continue
        out.append(stripped)
        break
    return " ".join(out)


def systemd_units(text: str) -> list[dict[str, Any]]:
    """Every systemd [Service] section with an ExecStart that runs vLLM: its env and argv."""
    units = []
    for m in re.finditer(r"^\[Service\]\s*$", text, re.M):
        end = text.find("[Install]", m.end())
        body = text[m.end(): end if end != -1 else len(text)]
        env = dict(re.findall(r'^Environment="([A-Za-z_][A-Za-z0-9_]*)=(.*)"\s*$', body, re.M))
        ex = re.search(r"^ExecStart=", body, re.M)
        if not ex:
            continue
        argv = shlex.split(_joined_lines(body, ex.end()))
        limits = dict(re.findall(r"^(Memory\w+)=(\S+)\s*$", body, re.M))
        units.append({"env": env, "argv": argv, "flags": parse_argv(argv), "limits": limits})
    return units


def vllm_unit(number: str) -> dict[str, Any]:
    units = [u for u in systemd_units(seed_text(number)) if "serve" in u["argv"] or "vllm.entrypoints.openai.api_server" in u["argv"]]
    if len(units) != 1:
        raise ValueError(f"seed {number}: expected one vLLM systemd unit, found {len(units)}")
    return units[0]


def serve_commands(text: str) -> list[dict[str, Any]]:
    """Plain `vllm serve ...` command lines (outside systemd units)."""
    out = []
    for m in re.finditer(r"^vllm serve .*$", text, re.M):
        line = m.group(0).split("#", 1)[0]
        out.append(parse_argv(shlex.split(line)))
    return out


def docker_run_env(text: str, image_contains: str) -> dict[str, str]:
    """`-e K=V` of the first `docker run` line whose image name contains image_contains."""
    for m in re.finditer(r"^docker run .*$", text, re.M):
        argv = shlex.split(_joined_lines(text, m.start()))
        if not any(image_contains in a for a in argv):
            continue
        env = {}
        for i, a in enumerate(argv):
            if a == "-e" and i + 1 < len(argv):
                k, _, v = argv[i + 1].partition("=")
                env[k] = v
        return env
    raise ValueError(f"no docker run of {image_contains!r}")


# ---- seed 000's single-GPU-with-display advice ----------------------------------------


def display_flags(text: str) -> dict[str, str]:
    """Seed 000's 'Single GPU users' advice: the flags it says to use with a display."""
    m = re.search(r"Single GPU users:(.*?)(?:\busers\b|\Z)", text, re.S)
    if not m:
        raise ValueError("no 'Single GPU users' paragraph")
    return dict(re.findall(r"--([a-z][a-z-]*[a-z])\s*(\d+(?:\.\d+)?)", m.group(1)))


# ---- seed 001's nginx -----------------------------------------------------------------


def nginx_block(text: str) -> str:
    start = text.index("# /etc/nginx/sites-available/vllm")
    end = text.index("Key points:", start)
    return text[start:end]


def nginx_directives(conf: str) -> list[tuple[str, list[str]]]:
    """(name, args) of every simple directive (comments dropped, quotes kept)."""
    out = []
    body = re.sub(r"#[^\n]*", "", conf)
    for stmt in re.split(r"[;{}]", body):
        parts = stmt.split()
        if parts:
            out.append((parts[0], parts[1:]))
    return out


def gateway_profile(conf: str) -> dict[str, Any]:
    """rate, burst, nodelay, timeouts and buffering of an nginx config."""
    d = nginx_directives(conf)
    zone = [a for n, a in d if n == "limit_req_zone"]
    req = [a for n, a in d if n == "limit_req"]
    get = lambda name: sorted({a[0] for n, a in d if n == name and a})  # noqa: E731
    rate = [x.split("=", 1)[1] for a in zone for x in a if x.startswith("rate=")]
    burst = [x.split("=", 1)[1] for a in req for x in a if x.startswith("burst=")]
    return {
        "rate": sorted(set(rate)),
        "burst": sorted(set(burst)),
        "nodelay": sorted({"nodelay" in a for a in req}),
        "proxy_read_timeout": get("proxy_read_timeout"),
        "proxy_send_timeout": get("proxy_send_timeout"),
        "proxy_buffering": get("proxy_buffering"),
        "limit_req_status": get("limit_req_status"),
    }


# ---- seed 002's commissioning notes -----------------------------------------------------


def commissioning(text: str) -> dict[str, str]:
    """'Serving: vLLM X with tensor_parallel_size=4, max_model_len=2048, gpu_memory_utilization=0.80.'"""
    m = re.search(r"Serving: vLLM [\d.]+ with ([^\n]*?)\.\s*$", text, re.M)
    if not m:
        raise ValueError("no 'Serving: vLLM ... with ...' line")
    found = dict(re.findall(r"(\w+)=([\w.]+?)(?:,|$)", m.group(1)))
    lesson = re.search(r"ran the AWQ model with the (\w+) kernel, not (\w+)", text)
    if lesson:
        found["quantization"] = lesson.group(2)
    return found

"""lint: check a rendered stack with the real tools, before anything is built.

Per variant, in a temporary directory:

* compose -- ``docker compose config`` (Compose v2, the reader users run) validates
  compose.yaml, with a .env made from .env.example and a placeholder keys file; the
  normalized result must carry the variant's exact vLLM command line.
* nginx   -- ``nginx -t`` (Debian's nginx) on the rendered nginx.conf, with a
  placeholder keys file beside it.
* systemd -- ``systemd-analyze verify`` on the unit, where systemd is installed (any
  complaint about the unit's lines fails it).
* flags   -- the vLLM flag check (done when the target is expanded, by the flag data
  of the variant's vLLM version); reports the flags that version lacks and what is
  used instead.
* memory  -- the model and its KV cache against the GPUs (builder.plan), where a
  plan can be made.
* paths   -- directories the vLLM environment names (PATH, LD_LIBRARY_PATH, TRITON_PTXAS_PATH,
  ...) that point where the images have nothing: another prefix under /opt than the
  images' own, or a host CUDA toolkit (the images take CUDA from the nvidia-* wheels).

Each check is ok, fail or skip (with the reason). A variant is ``linted`` when compose
and nginx ran and passed and nothing failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .expand import Variant
from .render import API_KEYS_NAME, render_texts, write_tree

INSTALL_COMPOSE = "scripts/install-compose-v2.sh"
INSTALL_LINT_TOOLS = "scripts/install-lint-tools.sh"
PLACEHOLDER_KEY = "sk-lint-placeholder-0000"
PLACEHOLDER_SECRET = "lint-placeholder-secret"
TIMEOUT_S = 60


@dataclass
class Check:
    name: str
    status: str  # ok | fail | skip
    detail: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class LintResult:
    variant: str
    target: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    @property
    def linted(self) -> bool:
        """Every tool check ran and passed."""
        by = {c.name: c.status for c in self.checks}
        return self.ok and by.get("compose") == "ok" and by.get("nginx") == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "target": self.target, "ok": self.ok, "linted": self.linted,
                "checks": [asdict(c) for c in self.checks]}


class ToolMissing(Exception):
    """A tool lint runs is not installed; the message says how to install it."""


def _last_lines(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


# ---- tools -------------------------------------------------------------------------


def docker_compose() -> list[str]:
    """The Compose v2 command, or ToolMissing naming how to install it."""
    docker = shutil.which("docker")
    if docker is None:
        raise ToolMissing(f"docker CLI not found; install Docker, then the Compose v2 plugin ({INSTALL_COMPOSE})")
    try:
        proc = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ToolMissing("`docker compose version` did not answer within 60 s") from None
    if proc.returncode != 0:
        raise ToolMissing(
            "Docker Compose v2 plugin missing (`docker compose` fails; docker-compose v1 reads another format): "
            f"run `sudo {INSTALL_COMPOSE}` (Debian: unpacks trixie's docker-compose into "
            "/usr/local/lib/docker/cli-plugins/)"
        )
    return [docker, "compose"]


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None)
    if found is None:
        raise ToolMissing(f"nginx not found: run `sudo {INSTALL_LINT_TOOLS}` (or `apt-get install nginx-light`)")
    return found


# ---- checks on files ------------------------------------------------------------------


def prepare(stack_dir: Path) -> None:
    """Make a rendered directory checkable: .env from .env.example, a placeholder keys file."""
    example = stack_dir / ".env.example"
    lines = []
    for line in example.read_text(encoding="utf-8").splitlines():
        if line.startswith("WEBUI_SECRET_KEY="):
            line = f"WEBUI_SECRET_KEY={PLACEHOLDER_SECRET}"
        elif line.startswith("HF_CACHE="):
            line = f"HF_CACHE={stack_dir / 'hf-cache'}"
        lines.append(line)
    (stack_dir / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (stack_dir / API_KEYS_NAME).write_text(f'"{PLACEHOLDER_KEY}" 1;\n', encoding="utf-8")


def compose_config(stack_dir: Path, compose_file: str = "compose.yaml") -> dict[str, Any]:
    """`docker compose config` of a directory: the normalized model, or ValueError with compose's message."""
    cmd = docker_compose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    for key in ("IMGFORGE_BIND", "IMGFORGE_API_PORT", "IMGFORGE_WEBUI_PORT", "HF_CACHE", "IMGFORGE_API_KEYS_FILE", "WEBUI_SECRET_KEY"):
        env.pop(key, None)  # the stack's .env decides, not the caller's shell
    proc = subprocess.run(
        [*cmd, "--project-directory", str(stack_dir), "-f", str(stack_dir / compose_file), "config", "--format", "json"],
        capture_output=True, text=True, cwd=stack_dir, env=env, timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        raise ValueError(_last_lines(proc.stderr or proc.stdout))
    return json.loads(proc.stdout)


def _literal(value: Any) -> Any:
    """A value of `docker compose config` output as the container gets it (`$$` is a literal `$`)."""
    return value.replace("$$", "$") if isinstance(value, str) else value


def check_compose(stack_dir: Path, variant: Variant | None = None, compose_file: str = "compose.yaml") -> Check:
    try:
        model = compose_config(stack_dir, compose_file)
    except ToolMissing as exc:
        return Check("compose", "skip", str(exc))
    except ValueError as exc:
        return Check("compose", "fail", f"docker compose config: {exc}")
    services = sorted(model.get("services", {}))
    if variant is not None:
        vllm = model.get("services", {}).get("vllm", {})
        command = [_literal(a) for a in vllm.get("command") or []]
        if command != variant.command:
            return Check("compose", "fail", f"services.vllm.command is {command!r}, not the variant's command {variant.command!r}")
        env = {k: _literal(x) for k, x in (vllm.get("environment") or {}).items()}
        wrong = {k: env.get(k) for k, v in variant.container_env.items() if env.get(k) != v}
        if wrong:
            return Check("compose", "fail", f"services.vllm.environment differs from the variant's: {wrong}")
    return Check("compose", "ok", f"docker compose config: services {', '.join(services)}")


def check_nginx(conf: Path) -> Check:
    """`nginx -t` on a config file (a keys file must sit beside it)."""
    try:
        nginx = nginx_binary()
    except ToolMissing as exc:
        return Check("nginx", "skip", str(exc))
    conf = Path(conf).resolve()
    proc = subprocess.run(
        [nginx, "-t", "-q", "-e", "stderr", "-p", str(conf.parent) + "/", "-c", str(conf)],
        capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    if proc.returncode != 0:
        return Check("nginx", "fail", f"nginx -t: {_last_lines(proc.stderr or proc.stdout)}")
    version = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=TIMEOUT_S).stderr.strip()
    return Check("nginx", "ok", f"nginx -t: syntax ok ({version.replace('nginx version: ', '')})")


def check_systemd(unit: Path) -> Check:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return Check("systemd", "skip", "systemd-analyze not installed")
    unit = Path(unit).resolve()
    proc = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, cwd=unit.parent, timeout=TIMEOUT_S)
    complaints = [ln for ln in (proc.stderr + proc.stdout).splitlines() if unit.name in ln]
    if proc.returncode != 0 or complaints:
        return Check("systemd", "fail", f"systemd-analyze verify: {_last_lines(chr(10).join(complaints) or proc.stderr)}")
    return Check("systemd", "ok", f"systemd-analyze verify: {unit.name} ok")


def check_flags(variant: Variant) -> Check:
    """The flags were checked against the version's own parser data when the target was expanded."""
    sw = variant.spec.software
    try:
        argv = variant.command
    except Exception as exc:  # noqa: BLE001 - report, do not crash the other checks
        return Check("flags", "fail", f"no command line: {exc}")
    notes = [r.describe(sw.vllm) for r in variant.replaced]
    n = sum(1 for a in argv if a.startswith("--"))
    detail = f"{sw.vllm_package} {sw.vllm} accepts all {n} flags of the command line"
    if notes:
        detail += f"; {len(notes)} flag(s) of the target replaced"
    return Check("flags", "ok", detail, notes)


def check_memory(variant: Variant) -> Check:
    if not variant.spec.platform.gpu:
        return Check("memory", "skip", "no GPU: nothing to fit")
    try:
        from .cmd_plan import plan_variant
    except ImportError:
        return Check("memory", "skip", "builder.plan is not available in this installation")
    try:
        plan = plan_variant(variant)
    except Exception as exc:  # noqa: BLE001
        return Check("memory", "skip", f"no plan: {exc}")
    if plan is None:
        return Check("memory", "skip", "no plan for this variant")
    return Check("memory", "ok" if plan.fits else "fail", plan.verdict, list(plan.notes))


def image_prefix() -> str | None:
    try:
        from .dockerfiles import PREFIX
    except ImportError:
        return None
    return PREFIX


def check_paths(variant: Variant) -> Check:
    prefix = image_prefix()
    if prefix is None:
        return Check("paths", "skip", "the images part (builder.dockerfiles) is not available")
    bad = []
    for key, value in sorted(variant.container_env.items()):
        if not (key.endswith("PATH") or key.endswith("_HOME") or key.endswith("_DIR")):
            continue
        for path in value.split(":"):
            if path.startswith("/usr/local/cuda"):
                bad.append(f"{key}: {path} (no CUDA toolkit in the images; CUDA comes from the nvidia-* wheels under {prefix})")
            elif path.startswith("/opt/") and not (path + "/").startswith(prefix + "/"):
                bad.append(f"{key}: {path} (the images install under {prefix}/)")
    if bad:
        return Check("paths", "fail", f"{len(bad)} path(s) in the vLLM environment point where the images have nothing", bad)
    return Check("paths", "ok", f"environment paths point into the images ({prefix}/) or the system")


# ---- a variant --------------------------------------------------------------------------


def lint_dir(stack_dir: Path, variant: Variant | None = None) -> list[Check]:
    """compose + nginx checks of a rendered directory (prepared in place)."""
    prepare(stack_dir)
    checks = [check_compose(stack_dir, variant), check_nginx(stack_dir / "nginx.conf")]
    units = sorted(stack_dir.glob("*.service"))
    if units:
        checks.append(check_systemd(units[0]))
    return checks


def lint_variant(variant: Variant, lock: Any = None) -> LintResult:
    with tempfile.TemporaryDirectory(prefix="imgforge-lint-") as tmp:
        stack = Path(tmp) / variant.name
        write_tree(render_texts(variant, lock=lock), stack)
        checks = lint_dir(stack, variant)
    checks += [check_flags(variant), check_paths(variant), check_memory(variant)]
    return LintResult(variant=variant.name, target=variant.target.name, checks=checks)

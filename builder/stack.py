"""A variant's compose stack on this machine: render, keys, images, up, ports, readiness, down.

Layout under ``state_dir()/stacks/<name>/``::

    stack/           the rendered stack (compose.yaml, nginx.conf, ...); re-rendered on every up
    secrets/         mode 0700
      api_key        the API key, for the user (0600)
      api_keys.map   the same key as the gateway's nginx map reads it (mounted read-only)
      stack.env      Compose variables: project, bind address, ports, keys file, WEBUI_SECRET_KEY (0600)

Keys are generated once (``secrets.token_urlsafe``) and never printed; callers
print the path of ``api_key``. The stack is driven with ``docker compose`` (v2),
as its users drive it; host ports are resolved from Docker itself.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import ImgforgeError, UsageError
from .paths import state_dir

COMPOSE_TIMEOUT_S = 300
LOG_TAIL = 40


class StackError(ImgforgeError):
    """The stack did not come up or serve; the message carries the failing service's last log lines."""


@dataclass
class Urls:
    api: str  # gateway base, without /v1
    webui: str | None

    @property
    def api_v1(self) -> str:
        return self.api + "/v1"


def _write_secret(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)


def port_free(bind: str, port: int) -> bool:
    host = "0.0.0.0" if bind in ("", "*") else bind
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(bind: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((bind, 0))
        return s.getsockname()[1]


class Stack:
    def __init__(self, variant, *, name: str | None = None, root: Path | None = None, bind: str | None = None,
                 api_port: int | None = None, webui_port: int | None = None, echo: Callable[[str], None] | None = None):
        gw = variant.spec.gateway
        self.variant = variant
        self.name = name or variant.name
        self.project = f"imgforge-{self.name}"
        self.root = root or state_dir() / "stacks" / self.name
        self.dir = self.root / "stack"
        self.secrets = self.root / "secrets"
        self.bind = bind or gw.bind
        self.api_port = api_port if api_port is not None else gw.api_port
        self.webui_port = webui_port if webui_port is not None else gw.webui_port
        self.has_webui = bool(variant.spec.software.webui)
        self.echo = echo or (lambda s: None)
        self._lock: Any = None
        self._docker = None

    # ------------------------------------------------------------ files

    @property
    def key_file(self) -> Path:
        return self.secrets / "api_key"

    @property
    def env_file(self) -> Path:
        return self.secrets / "stack.env"

    @property
    def compose_file(self) -> Path:
        return self.dir / "compose.yaml"

    def api_key(self) -> str:
        return self.key_file.read_text(encoding="utf-8").strip()

    def lock(self) -> Any:
        if self._lock is None:
            from .lock import check_lock

            self._lock = check_lock(self.variant)
        return self._lock

    def images(self) -> dict[str, str]:
        from .render import default_images

        imgs = default_images(self.variant, self.lock())
        return {s: ref for s, ref in imgs.items() if s != "webui" or self.has_webui}

    def ensure_secrets(self) -> None:
        """Generate the API key and Open WebUI's secret once; keep them across runs."""
        self.secrets.mkdir(parents=True, exist_ok=True)
        os.chmod(self.secrets, 0o700)
        if not self.key_file.is_file():
            # 192 random bits; short enough for nginx's default map_hash_bucket_size (64),
            # which a 55-character key already exceeds ("could not build map_hash").
            _write_secret(self.key_file, "sk-" + secrets.token_urlsafe(24) + "\n", 0o600)
        key = self.api_key()
        # The gateway (uid 10001 in its image) reads the map through a bind mount; the
        # directory above is 0700, so other host users cannot reach the file.
        _write_secret(self.secrets / "api_keys.map", f'"{key}" 1;\n', 0o644)
        webui_secret = self.secrets / "webui_secret"
        if not webui_secret.is_file():
            _write_secret(webui_secret, secrets.token_urlsafe(32) + "\n", 0o600)

    def write(self) -> None:
        """Render the stack and its Compose variables (ports, bind address, key file)."""
        from .render import render

        self.ensure_secrets()
        render(self.variant, self.dir, lock=self.lock())
        env = {
            "COMPOSE_PROJECT_NAME": self.project,
            "IMGFORGE_BIND": self.bind,
            "IMGFORGE_API_PORT": str(self.api_port),
            "IMGFORGE_WEBUI_PORT": str(self.webui_port),
            "IMGFORGE_API_KEYS_FILE": str(self.secrets / "api_keys.map"),
            "WEBUI_SECRET_KEY": (self.secrets / "webui_secret").read_text().strip(),
        }
        _write_secret(self.env_file, "".join(f"{k}={v}\n" for k, v in env.items()), 0o600)

    # ------------------------------------------------------------ images

    def missing_images(self) -> list[str]:
        from .build import docker_image_id

        return [s for s, ref in self.images().items() if not docker_image_id(ref)]

    def ensure_images(self) -> None:
        missing = self.missing_images()
        if not missing:
            return
        try:
            from .build import Builder
        except ImportError:
            raise StackError(f"images missing ({', '.join(self.images()[s] for s in missing)}) and imgforge build is not available") from None
        self.echo(f"building {', '.join(missing)} (imgforge build --target {self.variant.name})")
        Builder(self.variant, self.lock(), quiet=False).build(missing)
        still = self.missing_images()
        if still:
            raise StackError(f"build finished but {', '.join(self.images()[s] for s in still)} is not in Docker")

    # ------------------------------------------------------------ compose

    def compose_cmd(self, *args: str) -> list[str]:
        return ["docker", "compose", "-p", self.project, "--project-directory", str(self.dir),
                "-f", str(self.compose_file), "--env-file", str(self.env_file), *args]

    def compose(self, *args: str, check: bool = True, timeout: float = COMPOSE_TIMEOUT_S) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(self.compose_cmd(*args), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StackError(f"docker compose {' '.join(args)} did not finish within {timeout:.0f} s") from None
        if check and res.returncode != 0:
            raise StackError(f"docker compose {' '.join(args)} failed: {res.stderr.strip()[-2000:]}")
        return res

    def check_ports(self) -> None:
        wanted = [("API", self.api_port)] + ([("Open WebUI", self.webui_port)] if self.has_webui else [])
        for what, port in wanted:
            if port and not port_free(self.bind, port):
                raise UsageError(f"{self.bind}:{port} ({what} port) is already in use: stop what holds it, or choose "
                                 f"another port (gateway.{'api' if what == 'API' else 'webui'}_port in the target)")

    def start(self) -> None:
        """`docker compose up -d` with the images already in Docker (never pulls or builds)."""
        self.check_ports()
        res = self.compose("up", "-d", "--pull", "never", "--no-build", check=False)
        if res.returncode != 0:
            err = res.stderr.strip()
            self.down(volumes=False, quiet=True)
            if "address already in use" in err or "port is already allocated" in err:
                raise UsageError(f"{self.bind}: a port of the stack is already in use ({err.splitlines()[-1][:200]})")
            raise StackError(f"docker compose up failed: {err[-2000:]}")

    def down(self, volumes: bool = False, quiet: bool = False) -> None:
        args = ["down", "--remove-orphans", "--timeout", "10"] + (["--volumes"] if volumes else [])
        if not self.compose_file.is_file():
            if quiet:
                return
            raise UsageError(f"no stack for {self.name} at {self.dir}")
        self.compose(*args, check=not quiet)

    # ------------------------------------------------------------ containers

    def docker(self):
        if self._docker is None:
            import docker

            self._docker = docker.from_env()
        return self._docker

    def containers(self, all_: bool = True) -> list:
        return self.docker().containers.list(all=all_, filters={"label": f"com.docker.compose.project={self.project}"})

    def container(self, service: str):
        found = self.docker().containers.list(all=True, filters={"label": [f"com.docker.compose.project={self.project}",
                                                                           f"com.docker.compose.service={service}"]})
        if not found:
            raise StackError(f"service {service} of {self.project} has no container")
        return found[0]

    def host_port(self, service: str) -> int:
        """The host port Docker published for the service (its first published port)."""
        c = self.container(service)
        c.reload()
        for _, binds in sorted((c.attrs.get("NetworkSettings", {}).get("Ports") or {}).items()):
            for b in binds or []:
                if b.get("HostPort"):
                    return int(b["HostPort"])
        raise StackError(f"service {service} publishes no port")

    def urls(self) -> Urls:
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "", "*") else self.bind
        host = f"[{host}]" if ":" in host else host
        api = f"http://{host}:{self.host_port('gateway')}"
        webui = f"http://{host}:{self.host_port('webui')}" if self.has_webui else None
        return Urls(api, webui)

    def logs(self, service: str, tail: int | None = LOG_TAIL) -> str:
        try:
            c = self.container(service)
            raw = c.logs(stdout=True, stderr=True, tail=tail if tail is not None else "all")
        except Exception as exc:
            return f"(no logs of {service}: {exc})"
        return raw.decode("utf-8", "replace")

    def vllm_ip(self) -> str:
        c = self.container("vllm")
        c.reload()
        nets = c.attrs["NetworkSettings"]["Networks"]
        return next(iter(nets.values()))["IPAddress"]

    def restart(self, service: str) -> None:
        self.compose("restart", "--timeout", "20", service)

    def kill_vllm(self) -> None:
        """Kill vLLM's main process as a crash would (the restart policy applies;
        `docker kill` would count as a deliberate stop and keep it down)."""
        c = self.container("vllm")
        c.reload()
        pid = c.attrs["State"]["Pid"]
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            # The engine runs elsewhere (remote or rootless Docker): kill every process
            # in the container but its init; the API server exits and the policy restarts it.
            c.exec_run(["sh", "-c", "kill -9 -1"], user="0")

    def failing_service(self) -> str:
        """The service most likely to blame: one that exited or restarts, else vLLM."""
        for svc in ("vllm", "gateway", "webui"):
            try:
                c = self.container(svc)
                c.reload()
                st = c.attrs["State"]
                if st.get("Status") in ("exited", "dead", "restarting") or c.attrs.get("RestartCount", 0):
                    return svc
            except Exception:
                continue
        return "vllm"

    def wait_serving(self, urls: Urls, timeout_s: float, interval_s: float = 2.0) -> float:
        """Wait (bounded) until a real chat completion comes back through the gateway
        (and Open WebUI answers /health); returns the seconds waited."""
        import requests

        from .checks_http import serves

        key = self.api_key()
        t0 = time.monotonic()
        deadline = t0 + timeout_s
        api_ok = False
        while time.monotonic() < deadline:
            try:
                if not api_ok:
                    api_ok = serves(urls.api, key, self.variant.served_name, timeout=min(30, max(1, deadline - time.monotonic())))
                if api_ok and (not urls.webui or requests.get(f"{urls.webui}/health", timeout=5).status_code == 200):
                    return time.monotonic() - t0
            except Exception:
                pass
            time.sleep(interval_s)
        svc = self.failing_service() if api_ok is False else "webui"
        raise StackError(
            f"stack {self.project} did not serve within {timeout_s:.0f} s "
            f"({'no chat completion through the gateway' if not api_ok else 'Open WebUI not healthy'}); "
            f"last {LOG_TAIL} log lines of {svc}:\n{self.logs(svc)}"
        )

    def endpoints(self, urls: Urls):
        from .checks_http import StackEndpoints

        spec = self.variant.spec
        return StackEndpoints(
            api=urls.api, key=self.api_key(), served_name=self.variant.served_name, webui=urls.webui,
            rate_per_second=spec.gateway.rate_per_second, burst=spec.gateway.burst, metrics=spec.gateway.metrics,
            expect=spec.expect.model_dump(exclude_none=True),
            vllm_logs=lambda: self.logs("vllm", tail=None),
            restart_webui=(lambda: self.restart("webui")) if self.has_webui else None,
            kill_vllm=self.kill_vllm,
        )


def ready_timeout(variant) -> float:
    """Bound on `up` -> serving: minutes on a CPU with a tiny model, more for real weights."""
    env = os.environ.get("IMGFORGE_READY_TIMEOUT")
    if env:
        return float(env)
    return 300.0 if variant.spec.platform.accelerator == "cpu" else 1800.0

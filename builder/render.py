"""render: a Variant (+ its lock) -> a directory holding a runnable stack.

Per variant: ``compose.yaml``, ``nginx.conf``, ``.env.example``, a systemd unit
``imgforge-<variant>.service``, the Dockerfiles of its images and a short
``README.md``. Every file is plain text usable without imgforge, starts with a
one-line header naming the target, the variant and the lock hash, and is the
same bytes for the same inputs (sorted where order carries no meaning, no
timestamps, no host paths). The directory is written atomically: rendered into
a temporary directory beside the destination, then renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from .expand import HF_CACHE_IN_CONTAINER, VLLM_PORT, Variant
from .paths import compose_dir

SERVICES = ("vllm", "webui", "gateway")
GATEWAY_PORT = 8080  # nginx listens here inside the stack, as a non-root user
WEBUI_PORT = 8080  # Open WebUI's own port inside its container
# The images' service user (uid 10001) has its home here (builder/rootfs.py). The vllm-cache
# volume is mounted on it: torch.compile (~/.cache/vllm), FlashInfer JIT (~/.cache/flashinfer),
# Triton (~/.triton) and CUDA's compute cache (~/.nv) survive restarts, and a new volume takes
# the directory's owner from the image, so the non-root user can write it.
VLLM_HOME = "/home/imgforge"
try:  # where the Open WebUI image keeps its data (owned by the service user)
    from .dockerfiles import WEBUI_DATA as WEBUI_DATA_DIR
except ImportError:  # pragma: no cover - images part absent
    WEBUI_DATA_DIR = "/app/backend/data"
NGINX_CONF_IN_CONTAINER = "/etc/nginx/nginx.conf"
# nginx resolves a relative include against the directory of its main config file, so the
# keys file sits beside nginx.conf both in the container and in `imgforge lint`'s temp dir.
API_KEYS_NAME = "api_keys.map"
API_KEYS_IN_CONTAINER = f"/etc/nginx/{API_KEYS_NAME}"

# Template -> file name ({variant} is filled in).
TEMPLATES = {
    "compose.yaml.j2": "compose.yaml",
    "nginx.conf.j2": "nginx.conf",
    "env.example.j2": ".env.example",
    "systemd.service.j2": "imgforge-{variant}.service",
    "README.md.j2": "README.md",
}

_SIZE = re.compile(r"^(\d+)([kmgKMG]?)$")
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size_bytes(text: str) -> int:
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def size_text(n: int) -> str:
    """Bytes as Docker writes sizes: the largest unit that divides exactly."""
    for unit in ("g", "m", "k"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def lock_id(lock: Any) -> str:
    """The lock's short hash, or 'unlocked'."""
    if lock is None:
        return "unlocked"
    if isinstance(lock, str):
        return lock
    if isinstance(lock, dict):
        if isinstance(lock.get("hash"), str):
            return lock["hash"]
        from .lock import lock_hash

        return lock_hash(lock)
    value = getattr(lock, "hash", None)
    if isinstance(value, str):
        return value
    raise TypeError(f"cannot tell the hash of lock {type(lock).__name__}")


def default_images(variant: Variant, lock: Any = None) -> dict[str, str]:
    tag = lock_id(lock)
    return {s: f"imgforge/{variant.name}-{s}:{tag}" for s in SERVICES}


# ---- filters -----------------------------------------------------------------


def compose_str(value: Any) -> str:
    """A YAML double-quoted scalar (JSON string syntax) with `$` escaped for Compose."""
    if isinstance(value, bool):
        value = str(value).lower()
    return json.dumps(str(value).replace("$", "$$"), ensure_ascii=False)


def nginx_str(value: Any) -> str:
    """An nginx single-quoted string."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def json_error(message: str, kind: str, code: str) -> str:
    """An OpenAI-style error body, as clients of /v1 parse it."""
    return json.dumps({"error": {"message": message, "type": kind, "code": code}}, separators=(",", ":"))


@lru_cache(maxsize=None)
def environment(root: str | None = None) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(root or str(compose_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["cq"] = compose_str
    env.filters["nq"] = nginx_str
    env.globals["json_error"] = json_error
    return env


# ---- context -------------------------------------------------------------------


def header(variant: Variant, lock: Any, comment: str = "#") -> str:
    text = (
        f"imgforge: target {variant.target.name}, variant {variant.name}, lock {lock_id(lock)}"
        " -- generated by `imgforge render`; edit the target file, not this file"
    )
    if comment == "<!--":
        return f"<!-- {text} -->"
    return f"{comment} {text}"


def vllm_environment(variant: Variant) -> dict[str, str]:
    """The vLLM container's environment (sorted)."""
    return dict(sorted(variant.container_env.items()))


def webui_environment(variant: Variant) -> dict[str, str]:
    """Open WebUI's environment: offline defaults talking to vLLM inside the stack, then webui_env."""
    env = {
        "OPENAI_API_BASE_URL": f"http://vllm:{VLLM_PORT}/v1",
        # vLLM inside the stack's network takes no key; this placeholder only keeps Open
        # WebUI's OpenAI client happy. User keys live in the gateway.
        "OPENAI_API_KEY": "stack-internal-no-key",
        "ENABLE_OLLAMA_API": "False",
        "OFFLINE_MODE": "True",
        "HF_HUB_OFFLINE": "1",
        "RAG_EMBEDDING_ENGINE": "openai",
        "AUDIO_STT_ENGINE": "openai",
        "WEBUI_AUTH": "False",
        "DATA_DIR": WEBUI_DATA_DIR,
        "ENABLE_VERSION_UPDATE_CHECK": "False",
        "SCARF_NO_ANALYTICS": "true",
        "DO_NOT_TRACK": "true",
        "ANONYMIZED_TELEMETRY": "false",
    }
    env.update(variant.spec.webui_env)
    return dict(sorted(env.items()))


def shm_size(variant: Variant) -> str:
    if variant.spec.limits.shm_size:
        return variant.spec.limits.shm_size
    return "16g" if variant.tp * variant.pp > 1 else "1g"


def memory_limits(variant: Variant) -> tuple[str | None, str | None]:
    """(mem_limit, memswap_limit); memswap is memory + swap, as Docker counts it."""
    lim = variant.spec.limits
    if not lim.memory:
        return None, None
    if lim.swap is None:
        return lim.memory, None
    return lim.memory, size_text(size_bytes(lim.memory) + size_bytes(lim.swap))


def context(variant: Variant, lock: Any = None, images: dict[str, str] | None = None) -> dict[str, Any]:
    spec = variant.spec
    imgs = default_images(variant, lock)
    for service, ref in (images or {}).items():
        if service not in imgs:
            raise ValueError(f"images: unknown service {service!r} (known: {', '.join(SERVICES)})")
        imgs[service] = ref
    mem, memswap = memory_limits(variant)
    gpu = variant.gpu
    return {
        "target": variant.target.name,
        "variant": variant.name,
        "project": f"imgforge-{variant.name}",
        "lock": lock_id(lock),
        "seed": spec.seed,
        "description": spec.description,
        "images": imgs,
        "command": list(variant.command),
        "vllm_env": vllm_environment(variant),
        "webui_env": webui_environment(variant),
        "webui": spec.software.webui,
        "vllm_version": spec.software.vllm,
        "vllm_package": spec.software.vllm_package,
        "accelerator": spec.platform.accelerator,
        "arch": spec.platform.arch,
        "docker_platform": {"x86_64": "linux/amd64", "aarch64": "linux/arm64"}[spec.platform.arch],
        "cuda": spec.platform.cuda,
        "gpu_name": gpu["name"] if gpu else None,
        "devices": list(variant.devices),
        "tp": variant.tp,
        "served_name": variant.served_name,
        "model_id": spec.model.id,
        "hf_cache": not spec.model.generate,
        "hf_cache_in_container": HF_CACHE_IN_CONTAINER,
        "vllm_port": VLLM_PORT,
        "vllm_home": VLLM_HOME,
        "webui_data_dir": WEBUI_DATA_DIR,
        "webui_port": WEBUI_PORT,
        "gateway_port": GATEWAY_PORT,
        "nginx_conf": NGINX_CONF_IN_CONTAINER,
        "api_keys_name": API_KEYS_NAME,
        "api_keys_in_container": API_KEYS_IN_CONTAINER,
        "shm_size": shm_size(variant),
        "mem_limit": mem,
        "memswap_limit": memswap,
        "swap": spec.limits.swap,
        "gateway": spec.gateway,
        "replaced": [r.describe(spec.software.vllm) for r in variant.replaced],
        "unavailable": dict(sorted(spec.software.unavailable.items())),
    }


# ---- rendering -----------------------------------------------------------------


def _dockerfiles(variant: Variant, lock: Any) -> dict[str, str]:
    """File name -> text of the images' Dockerfiles (one per build stage).

    The images part needs the lock (its stages pin wheels and .debs by hash), so an
    unlocked render has none; its README says how to get them.
    """
    if lock is None or isinstance(lock, str):
        return {}
    try:
        from .dockerfiles import render_dockerfiles
    except ImportError as exc:
        if exc.name == f"{__package__}.dockerfiles" or "render_dockerfiles" in str(exc):
            return {}
        raise
    out = {}
    for name, text in render_dockerfiles(variant, lock).items():
        out[name if "Dockerfile" in name else f"Dockerfile.{name}"] = text
    return out


def render_texts(variant: Variant, *, images: dict[str, str] | None = None, lock: Any = None) -> dict[str, str]:
    """File name (relative, '/'-separated) -> text; nothing is written."""
    env = environment()
    ctx = context(variant, lock, images)
    files: dict[str, str] = {}
    dockerfiles = _dockerfiles(variant, lock)
    ctx["dockerfiles"] = sorted(dockerfiles)
    for template, name in TEMPLATES.items():
        ctx["header"] = header(variant, lock, "<!--" if name.endswith(".md") else "#")
        files[name.format(variant=variant.name)] = env.get_template(template).render(ctx)
    first = header(variant, lock)
    for name, text in dockerfiles.items():
        if name in files:
            raise ValueError(f"render_dockerfiles returned {name!r}, which render writes itself")
        if not text.startswith("# imgforge"):  # the images part writes its own header
            text = first + "\n" + text
        files[name] = text
    return dict(sorted(files.items()))


def _safe_relpath(name: str) -> Path:
    p = Path(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"refusing to write {name!r} outside the output directory")
    return p


def write_tree(files: dict[str, str], out_dir: Path) -> list[Path]:
    """Write files into out_dir atomically: a temp dir beside it, then rename."""
    out_dir = Path(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o755)
        for name, text in files.items():
            rel = _safe_relpath(name)
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text, encoding="utf-8")
        old = None
        if out_dir.exists() or out_dir.is_symlink():
            if not out_dir.is_dir() or out_dir.is_symlink():
                raise FileExistsError(f"{out_dir} exists and is not a directory")
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rmdir(old)
            os.rename(out_dir, old)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if old is not None:
                os.rename(old, out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [out_dir / _safe_relpath(n) for n in files]


def render(variant: Variant, out_dir: Path, *, images: dict[str, str] | None = None, lock: Any = None) -> list[Path]:
    """Render one variant's stack into out_dir; returns the written paths (sorted)."""
    files = render_texts(variant, images=images, lock=lock)
    return write_tree(files, Path(out_dir))

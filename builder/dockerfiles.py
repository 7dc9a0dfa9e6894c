"""render (images part): variant + lock -> the Dockerfiles of every build stage.

Each stage is one image layer on top of its parent stage:

    base ─┬─ gateway                                   (nginx .debs, as a layer)
          └─ torch ─ [cuda] ─┬─ vllm-native ── vllm-pure ── vllm    (tiny model, labels)
                             └─ webui-native ─ webui-pure ─ webui   (data dir, labels)

``cuda`` exists only for GPU variants: the CUDA user-space wheels (``nvidia-*``, triton) that
vLLM and Open WebUI both pin to the same files, installed once beside torch (where torch's
RPATHs look for them) instead of once per service.

A stage's key is the hash of its Dockerfile (which names the parent by its key) and of the
inputs copied into it (lock entries, assets), so a change rebuilds exactly the stages above it.
Stages below the final ones carry nothing of the variant, so they are tagged by key alone
(``localhost/imgforge-stage/<stage>:<key>``) and shared by every variant with the same inputs
(rtx4090-cu124-* and tp2-a40 share everything but their labels); the final stages are
``localhost/imgforge-stage/<variant>-<stage>:<key>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from . import __version__
from .lock import canonical, lock_hash
from .paths import images_dir

PREFIX = "/opt/imgforge"
PYTHON = "/usr/bin/python3"
PY_MINOR = "3.11"
UID = 10001
MODEL_DIR = f"{PREFIX}/models/tiny"
WEBUI_DATA = "/data"
IMAGE_SOURCE = "https://github.com/imgforge/imgforge"
# bumped when the way trees are laid out changes (invalidates the python stages)
LAYOUT_VERSION = 1
# bumped when the way stages are built changes (buildah flags, image format): part of every key
BUILD_RECIPE = "buildah-bud-oci-1"


@dataclass
class Stage:
    name: str
    template: str
    parent: str | None
    inputs: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)  # what build.py puts in the context dir
    service: str | None = None  # final image of this service
    key: str = ""
    dockerfile: str = ""

    def tag(self, variant: str) -> str:
        # buildah records the parent's tag in the image history ("FROM <tag>"): the format of
        # these tags is part of every digest, so it changes only with the golden digests
        if self.service:
            return f"localhost/imgforge-stage/{variant}-{self.name}:{self.key[:20]}"
        return f"localhost/imgforge-stage/{self.name}:{self.key[:20]}"


def site_packages(prefix: str) -> str:
    return f"{prefix}/lib/python{PY_MINOR}/site-packages"


def asset_path(name: str) -> Path:
    return images_dir() / "assets" / name


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generates_model(variant) -> bool:
    return getattr(variant.spec.model, "generate", None) == "tiny-llama"


def model_config_bytes(variant) -> bytes:
    """The target's model.config as the generator's input (sorted JSON)."""
    return json.dumps(dict(variant.spec.model.config or {}), indent=2, sort_keys=True).encode() + b"\n"


# Images of these architectures are assembled without executing any of their code: the base is
# unpacked from the .debs (no maintainer scripts) and no Dockerfile has a RUN step, so they build
# on any host, and to the same digest on every host.
NO_RUN_ARCHES = ("aarch64",)

DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}


def no_run(lock: dict[str, Any]) -> bool:
    return lock["platform"]["arch"] in NO_RUN_ARCHES


def shared_cuda_wheels(lock: dict[str, Any]) -> list[str]:
    """sha256 of the CUDA user-space wheels every service pins to the same file (sorted)."""
    py = lock["python"]
    services = [py[s] for s in ("vllm", "webui") if s in py]
    if not services:
        return []
    common = set.intersection(*({w["sha256"] for w in group} for group in services))
    return sorted(w["sha256"] for w in services[0]
                  if w["sha256"] in common and (w["name"].startswith("nvidia-") or w["name"] == "triton"))


def header(variant_name: str, target: str, lock: dict[str, Any], stage: str) -> str:
    return (
        f"# imgforge {__version__}: target {target}, variant {variant_name}, lock {lock_hash(lock)}, "
        f"stage {stage} (generated from images/; do not edit)"
    )


def plan_stages(variant, lock: dict[str, Any]) -> list[Stage]:
    """The stages of a variant, in build order (parents first), without keys."""
    sw = variant.spec.software
    py = lock["python"]
    debs = {d["name"]: d["sha256"] for d in lock["debian"]["packages"]}
    sets = lock["debian"]["sets"]
    from .rootfs import CUSTOMIZE_HOOK, GATEWAY_HOOK

    from .rootfs import EXTRACT_HOOK

    base_inputs = {"debs": sorted(debs[n] for n in sets["base"]), "hook": _sha(CUSTOMIZE_HOOK.encode()),
                   "include": lock["inputs"]["debian"]["sets"]["base"], "sde": lock["source_date_epoch"],
                   "mmdebstrap": lock["tools"].get("mmdebstrap")}
    if no_run(lock):
        # how the hooks are passed is part of the recipe: the extract variant runs extract hooks only
        base_inputs["unpacked"] = {"arch": lock["platform"]["deb_arch"], "hook": _sha(EXTRACT_HOOK.encode()), "hooks_as": "extract"}
    stages = [
        Stage("base", "base.Dockerfile.j2", None, base_inputs, {"rootfs": ["base"]}),
        Stage("gateway", "gateway.Dockerfile.j2", "base",
              {"debs": sorted(debs[n] for n in sets["base"] + sets["gateway"]), "hook": _sha((CUSTOMIZE_HOOK + GATEWAY_HOOK).encode()),
               "include": lock["inputs"]["debian"]["sets"]["gateway"]},
              {"rootfs_layer": ["base", "gateway"]}, service="gateway"),
    ]
    if "torch" in py:
        stages.append(Stage("torch", "python.Dockerfile.j2", "base",
                            {"wheels": [w["sha256"] for w in py["torch"]], "layout": LAYOUT_VERSION},
                            {"python": {"group": "torch", "prefix": f"{PREFIX}/torch", "select": "all", "venv": False}}))
    cuda = shared_cuda_wheels(lock)
    if cuda:
        stages.append(Stage("cuda", "python.Dockerfile.j2", "torch",
                            {"wheels": cuda, "layout": LAYOUT_VERSION, "installer": lock["tools"].get("installer")},
                            {"python": {"group": "vllm", "prefix": f"{PREFIX}/torch", "select": "all", "venv": False,
                                        "only": cuda, "interpreter": PYTHON}}))
    for svc in ("vllm", "webui"):
        if svc not in py:
            continue
        prefix = f"{PREFIX}/{svc}"
        parent = "cuda" if cuda else "torch" if "torch" in py else "base"
        for part, pure in (("native", False), ("pure", True)):
            shas = sorted(w["sha256"] for w in py[svc] if bool(w["pure"]) == pure and w["sha256"] not in cuda)
            spec = {"group": svc, "prefix": prefix, "select": part, "venv": part == "native",
                    "torch": f"{PREFIX}/torch" if "torch" in py else None}
            if cuda:
                spec["skip"] = cuda
            stages.append(Stage(f"{svc}-{part}", "python.Dockerfile.j2", parent,
                                {"wheels": shas, "layout": LAYOUT_VERSION, "installer": lock["tools"].get("installer")},
                                {"python": spec}))
            parent = f"{svc}-{part}"
        if svc == "vllm":
            inputs: dict[str, Any] = {}
            files: dict[str, Any] = {}
            if generates_model(variant):
                gen = asset_path("make_tiny_model.py").read_bytes()
                cfg = model_config_bytes(variant)
                inputs = {"make_tiny_model.py": _sha(gen), "model-config.json": _sha(cfg)}
                # bytes read once: the context holds exactly what the key was computed from
                files = {"make_tiny_model.py": gen, "model-config.json": cfg}
            stages.append(Stage("vllm", "vllm.Dockerfile.j2", parent, inputs, {"files": files}, service="vllm"))
        else:
            stages.append(Stage("webui", "webui.Dockerfile.j2", parent, {}, {"dirs": ["data"]}, service="webui"))
    return stages


def labels(variant, lock: dict[str, Any], service: str, target: str) -> dict[str, str]:
    sw = variant.spec.software
    lh = lock_hash(lock)
    from datetime import datetime, timezone

    created = datetime.fromtimestamp(lock["source_date_epoch"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    out = {
        "org.opencontainers.image.title": f"imgforge {variant.name} {service}",
        "org.opencontainers.image.source": IMAGE_SOURCE,
        # the git commit would change the digest on every commit; the lock hash and imgforge's
        # version are what the image is made of (publish adds the commit as an annotation)
        "org.opencontainers.image.revision": f"imgforge-{__version__}+lock.{lh}",
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.created": created,
        "io.imgforge.target": target,
        "io.imgforge.variant": variant.name,
        "io.imgforge.service": service,
        "io.imgforge.lock-hash": lh,
        "io.imgforge.vllm-version": sw.vllm,
    }
    return out


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(images_dir())),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def _target_name(variant) -> str:
    return getattr(variant, "target", None) and getattr(variant.target, "name", None) or getattr(variant, "target_name", None) or variant.name


def keyed_stages(variant, lock: dict[str, Any]) -> list[Stage]:
    """Stages with their Dockerfiles rendered and keys computed (parents first)."""
    env = _env()
    target = _target_name(variant)
    sw = variant.spec.software
    by_name: dict[str, Stage] = {}
    stages = plan_stages(variant, lock)
    for st in stages:
        parent = by_name[st.parent] if st.parent else None
        ctx = {
            "header": header(variant.name, target, lock, st.name),
            "suite": lock["debian"]["suite"],
            "parent": parent.tag(variant.name) if parent else None,
            "uid": UID,
            "python": PYTHON,
            "what": st.name,
            "labels": labels(variant, lock, st.service, target) if st.service else {},
            "vllm_package": sw.vllm_package,
            "vllm_version": sw.vllm,
            "webui_version": sw.webui,
            "model_dir": MODEL_DIR,
            "data_dir": WEBUI_DATA,
            "generate_model": generates_model(variant),
        }
        if st.service in ("vllm", "webui"):
            ctx["venv"] = f"{PREFIX}/{st.service}"
            ctx["python"] = f"{PREFIX}/{st.service}/bin/python"
        st.dockerfile = env.get_template(st.template).render(**ctx)
        rekey(st)
        by_name[st.name] = st
    return stages


def rekey(st: Stage) -> str:
    """(Re)compute a stage's key from its Dockerfile and inputs."""
    # the header line names the lock hash: a comment, not part of the image, so not of the key
    body = st.dockerfile.split("\n", 1)[1]
    st.key = _sha(canonical({"dockerfile": body, "inputs": st.inputs, "recipe": BUILD_RECIPE}))
    return st.key


def render_dockerfiles(variant, lock: dict[str, Any]) -> dict[str, str]:
    """stage name -> Dockerfile text."""
    return {st.name: st.dockerfile for st in keyed_stages(variant, lock)}

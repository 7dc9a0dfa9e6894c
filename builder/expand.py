"""expand: a Target -> its Variants, one per matrix combination, fully resolved.

A variant is the unit everything after this stage works on: it has a stable
name (``rtx4090-cu124``), a validated body with the matrix patch applied, and
the exact vLLM command line its vLLM version accepts.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import facts
from .errors import ConfigError
from .load import validate_body
from .target import TargetBody, TargetFile

# Where things are inside the images; the compose file and the Dockerfiles agree on these.
VLLM_PORT = 8000
TINY_MODEL_DIR = "/opt/imgforge/models/tiny"  # where the image build puts a generated model (dockerfiles.MODEL_DIR)
HF_CACHE_IN_CONTAINER = "/models/hf"
RESERVED_FLAGS = {
    "model": "set from model.id",
    "served-model-name": "set from model.served_name",
    "host": "the gateway is the only way in; vLLM listens inside the stack's network",
    "port": f"vLLM listens on {VLLM_PORT} inside the stack",
    "api-key": "keys live in the gateway, mounted at run time, never in an image or a command line",
}


@dataclass(frozen=True)
class Target:
    path: Path
    file: TargetFile
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        return self.file.name


def pinned_devices(spec: TargetBody) -> list[str]:
    """Host GPU indices the target pins: platform.devices, else a host-side CUDA_VISIBLE_DEVICES."""
    if spec.platform.devices:
        return list(spec.platform.devices)
    pinned = spec.env.get("CUDA_VISIBLE_DEVICES", "")
    return [d.strip() for d in pinned.split(",") if d.strip()]


@dataclass(frozen=True)
class Replacement:
    """A flag the target asks for that the variant's vLLM lacks, and what is used instead."""

    flag: str
    value: Any
    instead: dict[str, Any]
    why: str

    def describe(self, vllm: str) -> str:
        used = " ".join(f"--{k} {v}" if v is not True else f"--{k}" for k, v in self.instead.items()) or "nothing"
        return f"vLLM {vllm} lacks --{self.flag}; uses {used} instead: {self.why}"


@dataclass(frozen=True)
class Variant:
    name: str
    target: Target
    labels: dict[str, str]
    spec: TargetBody
    serve: dict[str, Any]  # flags after fallbacks: what the command line carries
    replaced: tuple[Replacement, ...] = field(default_factory=tuple)

    @property
    def source(self) -> Path:
        return self.target.path

    @property
    def tp(self) -> int:
        return int(self.serve.get("tensor-parallel-size", 1) or 1)

    @property
    def pp(self) -> int:
        return int(self.serve.get("pipeline-parallel-size", 1) or 1)

    @property
    def gpu(self) -> dict[str, Any] | None:
        return facts.gpu(self.spec.platform.gpu) if self.spec.platform.gpu else None

    @property
    def devices(self) -> list[str]:
        """Host GPU indices (PCI bus order) the vLLM service is given."""
        p = self.spec.platform
        if p.accelerator == "cpu":
            return []
        return pinned_devices(self.spec) or [str(i) for i in range(self.tp * self.pp)]

    @property
    def served_name(self) -> str:
        return self.spec.model.served_name or self.spec.model.id

    @property
    def model_ref(self) -> str:
        """What vLLM's --model gets inside the container."""
        if self.spec.model.generate:
            return TINY_MODEL_DIR
        return self.spec.model.id

    @property
    def flags_package(self) -> tuple[str, str]:
        return self.spec.software.vllm_package, self.spec.software.vllm

    @cached_property
    def flagset(self):
        from .flags import load_flags

        return load_flags(*self.flags_package)

    @property
    def container_env(self) -> dict[str, str]:
        """The vLLM service's environment inside the container.

        The container only sees the GPUs reserved for it, renumbered from 0, so a
        host-side CUDA_VISIBLE_DEVICES=1 (seed 000) becomes a device reservation
        of host GPU 1 and CUDA_VISIBLE_DEVICES=0 inside.
        """
        env = dict(self.spec.env)
        if self.spec.platform.accelerator == "cuda":
            env["CUDA_DEVICE_ORDER"] = env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(self.devices)))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        if not self.spec.model.generate:
            env.setdefault("HF_HOME", HF_CACHE_IN_CONTAINER)
        return dict(sorted(env.items()))

    @property
    def command(self) -> list[str]:
        """The exact vLLM server command line (argv) of this variant."""
        argv = [
            "python3", "-m", "vllm.entrypoints.openai.api_server",
            "--model", self.model_ref,
            "--served-model-name", self.served_name,
            "--host", "0.0.0.0",
            "--port", str(VLLM_PORT),
        ]
        fs = self.flagset
        for name, value in self.serve.items():
            argv += fs.to_argv(name, value)
        return argv


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Recursive merge; a null in the patch removes the key, lists replace."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _patch_keys(patch: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for k, v in patch.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        keys.add(path)
        if isinstance(v, dict):
            keys |= _patch_keys(v, path)
    return keys


def combinations(matrix: dict[str, dict[str, dict[str, Any]]]) -> list[list[tuple[str, str, dict[str, Any]]]]:
    """[[(axis, label, patch), ...], ...] in file order: first axis varies slowest."""
    axes = [[(axis, label, patch or {}) for label, patch in values.items()] for axis, values in matrix.items()]
    return [list(c) for c in itertools.product(*axes)] if axes else [[]]


def expand(target: Target) -> list[Variant]:
    """One fully checked Variant per matrix combination."""
    from .checks import check_variant

    base = {k: v for k, v in target.raw.items() if k not in ("name", "matrix")}
    path = str(target.path)
    variants = []
    for combo in combinations(target.file.matrix):
        data = base
        labels: dict[str, str] = {}
        for axis, label, patch in combo:
            if not isinstance(patch, dict):
                raise ConfigError(path, f"matrix.{axis}.{label}", patch, "a matrix value is a mapping of keys to patch")
            data = deep_merge(data, patch)
            labels[axis] = str(label)
        prefix = ""
        try:
            body = validate_body(path, data)
        except ConfigError as exc:
            # Name the matrix entry when the bad key came from a patch.
            for axis, label, patch in combo:
                if exc.key in _patch_keys(patch) or any(exc.key.startswith(k + ".") for k in _patch_keys(patch)):
                    prefix = f"matrix.{axis}.{label}."
            if prefix:
                raise ConfigError(path, prefix + exc.key, exc.value, exc.message, exc.allowed) from None
            raise
        name = "-".join([target.name, *labels.values()])
        variants.append(check_variant(target, name, labels, body))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(path, "matrix", names, "matrix labels give duplicate variant names")
    return variants


def find_variant(target: Target, name: str | None) -> list[Variant]:
    variants = expand(target)
    if name is None:
        return variants
    chosen = [v for v in variants if v.name == name]
    if not chosen:
        raise ConfigError(str(target.path), "--variant", name, "no such variant", allowed=", ".join(v.name for v in variants))
    return chosen

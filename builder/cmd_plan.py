"""`imgforge plan`: memory preflight for a model config or a target's variants (see builder.plan)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from builder.errors import ConfigError, UsageError
from builder.plan import Plan, format_text, plan_model


def _read_config(path: str) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(p), "", str(p), "no such file") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(str(p), "", None, f"not JSON: {exc}") from None


def _flag(serve: dict[str, Any], name: str, default: Any = None) -> Any:
    for key in (name, name.replace("-", "_")):
        if key in serve and serve[key] is not None:
            return serve[key]
    return default


def plan_variant(v: Any) -> Plan | None:
    """Plan one target variant with its own model config and serve flags; None for CPU variants."""
    spec = v.spec
    gpu = spec.platform.gpu
    if not gpu:
        return None
    serve = dict(getattr(v, "serve", None) or spec.serve or {})
    config = dict(spec.model.config or {})
    if not config:
        raise ConfigError(str(getattr(v, "source", v.name)), "model.config", None,
                          "plan needs the model's architecture facts (config.json keys) in the target")
    mnbt = _flag(serve, "max-num-batched-tokens")
    version = str(getattr(getattr(spec, "software", None), "vllm", "") or "")
    nums = tuple(int(x) for x in version.split(".")[:2] if x.isdigit())
    engine = "v1" if nums and nums >= (0, 8) else "v0"
    mml = _flag(serve, "max-model-len")
    return plan_model(
        config,
        gpu=gpu,
        tp=int(_flag(serve, "tensor-parallel-size", 1)),
        quantization=_flag(serve, "quantization"),
        kv_cache_dtype=str(_flag(serve, "kv-cache-dtype", "auto")),
        gpu_memory_utilization=float(_flag(serve, "gpu-memory-utilization", 0.9)),
        max_model_len=int(mml) if mml else None,
        max_num_seqs=int(_flag(serve, "max-num-seqs", 256)),
        max_num_batched_tokens=int(mnbt) if mnbt else None,
        weights_gib=getattr(spec.model, "weights_gib", None),
        model_name=getattr(spec.model, "id", None) or v.name,
        engine=engine,
    )


@click.command("plan")
@click.option("--model-config", "model_config", type=click.Path(dir_okay=True), help="a model's config.json (or its folder)")
@click.option("--quantization", default=None, help="vLLM --quantization; default: config.json's quantization_config")
@click.option("--tp", "--tensor-parallel-size", "tp", type=int, default=1, show_default=True, help="tensor-parallel size")
@click.option("--gpu", default=None, help="GPU name as in facts/gpus.json, e.g. 'A40', 'RTX 4090'")
@click.option("--kv-cache-dtype", default="auto", show_default=True)
@click.option("--gpu-memory-utilization", type=float, default=0.9, show_default=True)
@click.option("--max-model-len", type=int, default=None, help="default: the config's max_position_embeddings")
@click.option("--max-num-seqs", type=int, default=256, show_default=True)
@click.option("--max-num-batched-tokens", type=int, default=None)
@click.option("--engine", type=click.Choice(["v0", "v1"]), default="v0", show_default=True,
              help="vLLM engine whose start-up profile to model: v0 profiles max(max-model-len, 2048) tokens up to 32k, "
                   "v1 (vLLM >= 0.8) 8192; v0 is the more conservative")
@click.option("--target", "targets", multiple=True, help="plan every GPU variant of a target (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def cmd(model_config, quantization, tp, gpu, kv_cache_dtype, gpu_memory_utilization, max_model_len,
        max_num_seqs, max_num_batched_tokens, engine, targets, as_json):
    """Will the model, its activations and KV cache fit the GPUs? Answers before any download.

    Exit status 1 when a plan does not fit.
    """
    results: list[tuple[str, Plan | None]] = []
    if targets:
        from builder.expand import expand  # noqa: PLC0415
        from builder.load import load_target  # noqa: PLC0415

        for ref in targets:
            for v in expand(load_target(ref)):
                results.append((v.name, plan_variant(v)))
    if model_config:
        if not gpu:
            raise UsageError("--gpu is required with --model-config")
        cfg = _read_config(model_config)
        results.append((str(model_config), plan_model(
            cfg, gpu=gpu, tp=tp, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens, engine=engine,
            model_name=cfg.get("_name_or_path") or Path(model_config).stem,
        )))
    if not results:
        raise UsageError("give --model-config PATH --gpu NAME, or --target T")
    if as_json:
        out = [{"name": name, **(p.to_json() if p else {"skipped": "cpu variant: no GPU memory to plan"})} for name, p in results]
        click.echo(json.dumps(out[0] if len(out) == 1 and model_config and not targets else out, indent=2))
    else:
        for name, p in results:
            click.echo(f"[{name}]")
            click.echo(format_text(p) if p else "  cpu variant: nothing to plan")
    if any(p is not None and not p.fits for _, p in results):
        raise SystemExit(1)

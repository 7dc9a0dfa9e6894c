"""imgforge show: a target's resolved variants, with the exact vLLM command line."""

from __future__ import annotations

import json
import shlex

import click

from .options import json_option, variant_option


def describe(v) -> dict:
    from . import facts

    p = v.spec.platform
    cuda = facts.cuda_versions().get(p.cuda or "", {})
    return {
        "variant": v.name,
        "target": v.target.name,
        "file": str(v.source),
        "matrix": v.labels,
        "platform": p.model_dump(),
        "gpu_facts": v.gpu,
        "driver_min": cuda.get("driver_min_linux"),
        "software": v.spec.software.model_dump(),
        "model": {"id": v.spec.model.id, "served_name": v.served_name, "weights_gib": v.spec.model.weights_gib},
        "devices": v.devices,
        "env": v.container_env,
        "command": v.command,
        "replaced_flags": [r.describe(v.spec.software.vllm) for r in v.replaced],
        "expect": v.spec.expect.model_dump(exclude_none=True),
        "gateway": v.spec.gateway.model_dump(),
        "limits": v.spec.limits.model_dump(exclude_none=True),
    }


@click.command("show")
@click.argument("target", default="cpu")
@variant_option()
@json_option
def cmd(target: str, variant: str | None, as_json: bool) -> None:
    """Show TARGET's resolved variants (name or path), including the exact vLLM command line."""
    from .options import variants_of

    items = [describe(v) for v in variants_of([target], variant)]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for d in items:
        p = d["platform"]
        click.echo(f"variant {d['variant']}  ({d['file']})")
        hw = "CPU" if p["accelerator"] == "cpu" else f"{p['count']}x {p['gpu']}"
        if d["gpu_facts"]:
            g = d["gpu_facts"]
            hw += f" (SM {g['compute_capability']}, {g['memory_bytes'] / 2**30:.1f} GiB)"
        click.echo(f"  platform   {p['arch']}, {hw}" + (f", CUDA {p['cuda']}" if p["cuda"] else ""))
        if d["driver_min"]:
            click.echo(f"  driver     NVIDIA >= {d['driver_min']} on the host (CUDA {p['cuda']})")
        if d["devices"]:
            click.echo(f"  devices    host GPUs {','.join(d['devices'])} (PCI bus order)")
        sw = d["software"]
        click.echo(f"  software   {sw['vllm_package']} {sw['vllm']}, Python {sw['python']}" + (f", Open WebUI {sw['webui']}" if sw["webui"] else ""))
        for name, why in sw.get("unavailable", {}).items():
            click.echo(f"  unavailable {name}: {why}")
        click.echo(f"  model      {d['model']['id']} as {d['model']['served_name']!r}")
        for line in d["replaced_flags"]:
            click.echo(f"  note       {line}")
        click.echo("  env        " + " ".join(f"{k}={shlex.quote(v)}" for k, v in d["env"].items()))
        click.echo("  command    " + " ".join(shlex.quote(a) for a in d["command"]))
        click.echo("")

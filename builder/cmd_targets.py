"""imgforge targets: every target, its variants and the level each reached here."""

from __future__ import annotations

import json

import click

from .options import json_option


def rows(refs: list[str]) -> list[dict]:
    from .expand import expand
    from .levels import highest
    from .load import load_target

    out = []
    for ref in refs:
        target = load_target(ref)
        for v in expand(target):
            p = v.spec.platform
            reached = highest(v.name)
            out.append({
                "target": target.name,
                "variant": v.name,
                "arch": p.arch,
                "gpu": f"{p.count}x {p.gpu}" if p.gpu else "cpu",
                "cuda": p.cuda or "-",
                "vllm": v.spec.software.vllm,
                "level": reached[0] if reached else "-",
                "when": reached[1] if reached else "-",
            })
    return out


@click.command("targets")
@click.option("--target", "-t", "targets", multiple=True, help="only these targets (name or path; repeatable)")
@json_option
def cmd(targets: tuple[str, ...], as_json: bool) -> None:
    """List targets with their variants, arch, GPU and highest verification level reached on this machine."""
    from .load import list_targets

    data = rows(list(targets) or list_targets())
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    cols = ["target", "variant", "arch", "gpu", "cuda", "vllm", "level", "when"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in data)) for c in cols}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for r in data:
        click.echo("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip())

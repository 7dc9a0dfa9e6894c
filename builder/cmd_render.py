"""imgforge render: write each variant's stack (compose, nginx, env, systemd unit, Dockerfiles)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .options import json_option, target_option, variant_option


def current_lock(variant):
    """The variant's lock when one exists and matches its inputs; else None (an unlocked render)."""
    from .errors import UsageError
    from .lock import check_lock

    try:
        return check_lock(variant)
    except UsageError:
        return None


@click.command("render")
@target_option()
@variant_option()
@click.option("-o", "--out", "out", default="out", show_default=True, type=click.Path(file_okay=False),
              help="output directory; one subdirectory per variant")
@click.option("--unlocked", is_flag=True, help="ignore the lock even where one exists (no Dockerfiles)")
@click.option("--from-registry", default=None, metavar="HOST[:PORT]/NAMESPACE",
              help="reference the images published there by digest (see `imgforge publish`)")
@json_option
def cmd(targets, variant, out, unlocked, from_registry, as_json):
    """Render Dockerfiles, compose.yaml, nginx.conf, .env.example, a systemd unit and a README per variant."""
    from .levels import record
    from .options import variants_of
    from .render import lock_id, render

    variants = variants_of(targets, variant)
    out_dir = Path(out)
    results = []
    for v in variants:
        lock = None if unlocked else current_lock(v)
        images = None
        if from_registry:
            from .publish import registry_images

            images = registry_images(v, from_registry)
        paths = render(v, out_dir / v.name, lock=lock, images=images)
        record(v.name, "rendered", {"dir": str((out_dir / v.name).resolve()), "lock": lock_id(lock)})
        results.append({"variant": v.name, "target": v.target.name, "lock": lock_id(lock),
                        "dir": str(out_dir / v.name), "files": [str(p) for p in paths]})
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for r in results:
        click.echo(f"{r['variant']} (lock {r['lock']}):")
        for p in r["files"]:
            click.echo(f"  {p}")

"""imgforge inspect: static checks of built images (ELF architecture, packages, CUDA, vLLM's parser)."""

from __future__ import annotations

import json
import sys

import click

from .options import json_option, target_option, variant_option, variants_of

MARK = {"ok": "ok", "fail": "FAIL", "skip": "skip"}


def print_report(rep) -> None:
    click.echo(f"{rep.variant} ({rep.arch}): {'built, static checks pass' if rep.ok else 'static checks FAILED'}")
    for svc, checks in rep.checks.items():
        click.echo(f"  {svc}  {rep.images[svc][:19]}")
        for c in checks:
            click.echo(f"    {c.name:9} {MARK[c.status]:5} {c.detail}")
            for note in c.notes:
                click.echo(f"    {'':9} {'':5} {note}")


def inspect_and_record(variant, lock, services=None, echo=None):
    """Run the static checks; a variant whose checks pass is recorded as built."""
    from .inspect_images import inspect_variant
    from .levels import record
    from .lock import lock_hash

    rep = inspect_variant(variant, lock, services, echo=echo)
    if rep.ok and services is None:
        record(variant.name, "built", {"lock_hash": lock_hash(lock), "images": rep.images,
                                       "checks": {svc: {c.name: c.status for c in cs} for svc, cs in rep.checks.items()}})
    return rep


@click.command("inspect")
@target_option()
@variant_option()
@click.option("--service", "services", multiple=True, type=click.Choice(["vllm", "webui", "gateway"]), help="only these images (repeatable)")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@json_option
def cmd(targets, variant, services, quiet, as_json):
    """Check built images without booting them; record the variant as built when every check passes.

    Exit 0 when every check passed (or was skipped, with the reason), 1 when one failed.
    """
    from .lock import check_lock

    reports = []
    for v in variants_of(targets, variant):
        lock = check_lock(v)
        echo = None if (quiet or as_json) else (lambda s: click.echo(s, err=True))
        reports.append(inspect_and_record(v, lock, list(services) or None, echo=echo))
    if as_json:
        click.echo(json.dumps([r.to_json() for r in reports], indent=1))
    else:
        for r in reports:
            print_report(r)
    if not all(r.ok for r in reports):
        sys.exit(1)

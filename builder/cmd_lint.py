"""imgforge lint: check rendered stacks with docker compose, nginx -t, the flag data and the memory plan."""

from __future__ import annotations

import json
import sys

import click

from .options import json_option, target_option, variant_option

MARK = {"ok": "ok", "fail": "FAIL", "skip": "skip"}


@click.command("lint")
@target_option()
@variant_option()
@json_option
def cmd(targets, variant, as_json):
    """Check each variant's rendered stack: docker compose config, nginx -t, vLLM flags, memory fit.

    Exit 0 when every variant is linted; 1 when a check failed or a tool is missing.
    """
    from .cmd_render import current_lock
    from .levels import record
    from .lint import lint_variant
    from .options import variants_of

    results = []
    for v in variants_of(targets, variant):
        res = lint_variant(v, lock=current_lock(v))
        if res.linted:
            record(v.name, "linted", {c.name: c.status for c in res.checks})
        results.append(res)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in results], indent=2))
    else:
        for r in results:
            click.echo(f"{r.variant}: {'linted' if r.linted else 'NOT linted'}")
            for c in r.checks:
                click.echo(f"  {c.name:8} {MARK[c.status]:5} {c.detail}")
                for note in c.notes:
                    click.echo(f"  {'':8} {'':5} {note}")
    if not all(r.linted for r in results):
        sys.exit(1)

"""imgforge fetch: download what the cache lacks and verify every byte."""

from __future__ import annotations

import json
from dataclasses import asdict

import click

from .options import json_option, target_option, variant_option, variants_of


@click.command("fetch")
@target_option()
@variant_option()
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@json_option
def cmd(targets, variant, quiet, as_json):
    """Fill the content-addressed cache with every file a target's lock pins."""
    from .fetch import fetch_lock
    from .lock import check_lock
    from .paths import cache_dir

    out = []
    for v in variants_of(targets, variant):
        lock = check_lock(v)
        res = fetch_lock(lock, quiet=quiet or as_json)
        row = {"variant": v.name, "cache": str(cache_dir()), **asdict(res)}
        out.append(row)
        if not as_json:
            click.echo(f"{v.name}: {res.present} cached, {res.fetched} downloaded, {res.from_find_links} from find-links, "
                       f"{res.refetched} re-fetched (corrupt), {res.bytes / 1e6:,.0f} MB verified in {cache_dir()}")
    if as_json:
        click.echo(json.dumps(out, indent=1))

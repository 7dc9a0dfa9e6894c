"""imgforge sbom: print a target's SBOM (CycloneDX 1.5 JSON) generated from its lock."""

from __future__ import annotations

import json

import click

from .options import target_option, variant_option, variants_of


@click.command("sbom")
@target_option()
@variant_option()
@click.option("--service", type=click.Choice(["vllm", "webui", "gateway"]), default=None,
              help="only what goes into this service's image (default: the whole lock)")
def cmd(targets, variant, service):
    """Print the SBOM of each selected variant (one JSON document; a JSON list for several)."""
    from .lock import check_lock
    from .sbom import generate

    docs = [generate(v, check_lock(v), service) for v in variants_of(targets, variant)]
    click.echo(json.dumps(docs[0] if len(docs) == 1 else docs, indent=1, sort_keys=True))

"""imgforge schema: the target file JSON Schema, for editors (yaml-language-server)."""

from __future__ import annotations

import json

import click


@click.command("schema")
def cmd() -> None:
    """Print the JSON Schema of target files."""
    from .target import json_schema

    click.echo(json.dumps(json_schema(), indent=2, sort_keys=True))

"""Options shared by every verb."""

from __future__ import annotations

import click

from .load import DEFAULT_TARGET


def target_option(multiple: bool = True, default: bool = True):
    return click.option(
        "--target", "-t", "targets",
        multiple=multiple,
        default=(DEFAULT_TARGET,) if (default and multiple) else (DEFAULT_TARGET if default else None),
        show_default=True,
        help="target name or path to a target file (repeatable)" if multiple else "target name or path",
    )


def variant_option():
    return click.option("--variant", default=None, help="only this variant of the target (default: all)")


json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for machines")


def variants_of(targets, variant: str | None = None):
    """All selected variants of the given target refs, in order."""
    from .expand import find_variant
    from .load import load_target

    out = []
    for ref in targets if isinstance(targets, (list, tuple)) else [targets]:
        out += find_variant(load_target(ref), variant)
    return out

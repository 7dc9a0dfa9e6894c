"""imgforge down: stop a stack, keeping Open WebUI's data unless --volumes."""

from __future__ import annotations

import click

from .options import target_option, variant_option


@click.command("down")
@target_option(multiple=False)
@variant_option()
@click.option("--volumes", is_flag=True, help="also remove the stack's volumes (Open WebUI's chats and users)")
def cmd(targets, variant, volumes):
    """Stop a stack (keeps Open WebUI's data unless --volumes)."""
    from .cmd_up import one_variant
    from .stack import Stack

    v = one_variant(targets, variant)
    st = Stack(v)
    st.down(volumes=volumes)
    click.echo(f"{st.project}: stopped" + ("; volumes removed" if volumes else "; data kept"))

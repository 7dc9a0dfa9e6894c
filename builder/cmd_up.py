"""imgforge up: build what is missing, start the stack, wait until it really serves."""

from __future__ import annotations

import json
import subprocess
import time

import click

from .errors import UsageError
from .options import json_option, target_option, variant_option


def one_variant(target: str, variant: str | None):
    from .options import variants_of

    vs = variants_of([target], variant)
    if len(vs) > 1:
        raise UsageError(f"target {target} has {len(vs)} variants ({', '.join(v.name for v in vs)}): choose one with --variant")
    return vs[0]


@click.command("up")
@target_option(multiple=False)
@variant_option()
@click.option("--detach", "-d", is_flag=True, help="return once the stack serves (default: follow its logs; Ctrl-C stops it)")
@click.option("--bind", default=None, help="host address the ports bind to (default: the target's, 127.0.0.1)")
@json_option
def cmd(targets, variant, detach, bind, as_json):
    """Build what is missing, start the stack and print where to chat."""
    from .stack import Stack, StackError, ready_timeout

    v = one_variant(targets, variant)
    say = (lambda s: None) if as_json else (lambda s: click.echo(s, err=True))
    st = Stack(v, bind=bind, echo=say)
    st.write()
    st.check_ports()
    st.ensure_images()
    t0 = time.monotonic()
    say(f"starting {st.project} ({st.dir})")
    st.start()
    try:
        urls = st.urls()
        st.wait_serving(urls, ready_timeout(v))
    except BaseException:
        st.down(volumes=False, quiet=True)
        raise
    info = {"api": urls.api_v1, "webui": urls.webui, "api_key_file": str(st.key_file)}
    if as_json:
        click.echo(json.dumps(info))
    else:
        click.echo(f"{v.name}: serving {v.served_name!r} ({time.monotonic() - t0:.0f} s to the first completion)")
        if urls.webui:
            click.echo(f"  chat:     {urls.webui}")
        click.echo(f"  API:      {urls.api_v1}  (OpenAI-compatible; model {v.served_name!r})")
        click.echo(f"  API key:  {st.key_file}  (send it as Authorization: Bearer <key>)")
        click.echo(f"  stop:     imgforge down --target {targets}")
    if detach:
        return
    try:
        subprocess.run(st.compose_cmd("logs", "--follow", "--no-color", "--since", "1s"))
    except KeyboardInterrupt:
        pass
    finally:
        say(f"stopping {st.project} (data kept; imgforge down --volumes removes it)")
        st.down(volumes=False, quiet=True)

"""imgforge publish: push a target's images to a registry by digest, with annotations and SBOM."""

from __future__ import annotations

import json
import sys

import click

from .options import json_option, target_option, variant_option, variants_of


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB"


@click.command("publish")
@target_option()
@variant_option()
@click.option("--registry", required=True, metavar="HOST[:PORT]/NAMESPACE",
              help="where to push, e.g. ghcr.io/org; credentials come from docker login / DOCKER_CONFIG / "
                   "REGISTRY_AUTH_FILE or IMGFORGE_REGISTRY_USER + IMGFORGE_REGISTRY_PASSWORD")
@click.option("--service", "services", multiple=True, type=click.Choice(["vllm", "webui", "gateway"]),
              help="only these images (repeatable; default: all of the variant's)")
@click.option("--force", is_flag=True, help="move a :<lock hash> tag that points at different images")
@click.option("--tls-verify/--no-tls-verify", default=None,
              help="verify the registry's TLS certificate; --no-tls-verify also allows plain HTTP "
                   "(default, as Docker: verify, except for a registry on a loopback address)")
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@json_option
def cmd(targets, variant, registry, services, force, tls_verify, quiet, as_json):
    """Push each image as <variant>-<service>:<lock hash> and :latest (an OCI index with annotations),
    its SBOM as <variant>-<service>:sha256-<digest>.sbom; unchanged images send nothing."""
    from .publish import PublishError, Registry, publish_images, variant_specs

    reg = Registry.parse(registry)
    specs = variant_specs(variants_of(targets, variant), list(services) or None)
    echo = None if (quiet or as_json) else (lambda s: print(s, file=sys.stderr, flush=True))
    try:
        results = publish_images(specs, reg, force=force, tls_verify=tls_verify, echo=echo)
    except PublishError as exc:
        show(exc.done, as_json)  # what was completely published before the failure, then the one-line error
        raise
    show(results, as_json)


def show(results, as_json: bool) -> None:
    if as_json:
        if results:
            click.echo(json.dumps([r.as_dict() for r in results], indent=1))
        return
    for r in results:
        sent = f"{r.blobs_sent} blobs, {_mib(r.bytes_sent)} sent, {r.blobs_skipped} already there" \
            if r.status != "unchanged" else "nothing sent"
        click.echo(f"{r.name}: {r.status} {r.digest} ({sent}, {r.seconds:.1f}s)" + (f"; {r.note}" if r.note else ""))
        for ref in r.refs[:-1]:
            click.echo(f"  {ref}")
        if r.sbom:
            click.echo(f"  sbom {r.sbom}")

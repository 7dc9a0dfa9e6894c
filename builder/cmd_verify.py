"""imgforge verify: boot a stack and check it serves; or --reproducible: rebuild and compare digests."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .errors import UsageError
from .options import target_option, variant_option


@click.command("verify")
@target_option(multiple=False)
@variant_option()
@click.option("--json", "json_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the JSON report here (default: the state dir's reports/)")
@click.option("--reproducible", is_flag=True, help="build twice from clean and compare digests instead")
@click.option("--runs", type=click.IntRange(1, 2), default=2, show_default=True,
              help="with --reproducible: clean builds (1 compares one with the golden digests)")
@click.option("--keep-on-failure", is_flag=True, help="leave a failing stack running for inspection")
@click.option("--quiet", "-q", is_flag=True, help="print only the report")
def cmd(targets, variant, json_file, reproducible, runs, keep_on_failure, quiet):
    """Boot a stack and check it serves; or --reproducible: rebuild and compare digests."""
    from .cmd_up import one_variant

    if reproducible:
        try:
            from .cmd_verify_repro import verify_reproducible
        except ImportError:
            raise UsageError("verify --reproducible is not available in this imgforge (builder.cmd_verify_repro is missing)") from None
        import json

        rep = verify_reproducible(targets, runs=runs, variant=variant)  # raises ImgforgeError (exit 1) naming layers and files on a difference
        if json_file:
            json_file.write_text(json.dumps(rep, indent=1, default=str) + "\n", encoding="utf-8")
        from .levels import reached
        from .verify import record_level

        v = one_variant(targets, variant)
        if v.spec.platform.accelerator == "cuda":
            # a GPU variant cannot boot here: its level stays built, which now also says reproducible
            built = reached(v.name).get("built")
            if built is None:
                click.echo(f"{targets}: reproducible (not recorded: run imgforge inspect --target {targets} first)")
                sys.exit(0)
            note = record_level(v.name, "built", {**built.get("details", {}), "reproducible": {"runs": runs, "golden": rep["golden"]}})
            click.echo(f"{targets}: reproducible; level stays built (a GPU variant cannot boot here)" + (f" ({note})" if note else ""))
            sys.exit(0)
        note = record_level(v.name, "reproducible", {"runs": runs})
        click.echo(f"{targets}: reproducible" + (f" ({note})" if note else ""))
        sys.exit(0)
    from .verify import verify, write_report

    v = one_variant(targets, variant)
    echo = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
    rep = verify(v, echo=echo, keep_on_failure=keep_on_failure)
    path = write_report(rep, json_file)
    click.echo(rep.text())
    click.echo(f"report: {path}")
    sys.exit(0 if rep.passed else 1)

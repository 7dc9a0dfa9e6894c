"""imgforge build: build a target's images from the cache, offline and reproducibly."""

from __future__ import annotations

import json

import click

from .options import json_option, target_option, variant_option, variants_of


@click.command("build")
@target_option()
@variant_option()
@click.option("--quiet", "-q", is_flag=True, help="no progress output")
@click.option("--service", "services", multiple=True, type=click.Choice(["vllm", "webui", "gateway"]), help="only these images (repeatable)")
@click.option("--record-golden", is_flag=True, help="write the built image IDs into the lock as its golden digests")
@click.option("--no-inspect", is_flag=True, help="skip the static checks of the built images (then the variant is not recorded as built)")
@json_option
def cmd(targets, variant, quiet, services, record_golden, no_inspect, as_json):
    """Build images tagged imgforge/<variant>-<service>:<lock hash> and load them into Docker.

    Then the images' static checks run (imgforge inspect); a variant whose checks pass is
    recorded as built. Exit 1 when a check failed.
    """
    import sys

    from .build import Builder
    from .cmd_inspect import inspect_and_record, print_report
    from .lock import check_lock, lock_path, write_lock

    out = []
    failed = False
    for v in variants_of(targets, variant):
        lock = check_lock(v)
        rep = Builder(v, lock, quiet=quiet or as_json).build(list(services) or None)
        golden = lock.get("golden") or {}
        row = {"variant": v.name, "lock_hash": rep.lock_hash, "skipped": rep.skipped, "seconds": round(rep.seconds, 1),
               "images": {}}
        for svc, info in rep.images.items():
            row["images"][svc] = {**info, "golden": golden.get(svc), "matches_golden": golden.get(svc) == info["id"] if golden.get(svc) else None}
        if record_golden:
            lock["golden"] = {**golden, **{svc: info["id"] for svc, info in rep.images.items()}}
            write_lock(lock, lock_path(v.name))
            for svc, info in row["images"].items():
                info.update(golden=info["id"], matches_golden=True, recorded=True)
        out.append(row)
        if not as_json:
            state = "up to date" if rep.skipped else f"built in {rep.seconds:.1f}s"
            click.echo(f"{v.name}: {state}")
            for svc, info in row["images"].items():
                g = "recorded as golden" if info.get("recorded") else {True: "= golden", False: "!= golden " + str(info["golden"])[:19], None: "(no golden digest)"}[info["matches_golden"]]  # noqa: E501
                click.echo(f"  {info['ref']}  {info['id'][:19]}  {g}")
        if not no_inspect:
            echo = None if (quiet or as_json) else (lambda s: click.echo(s, err=True))
            irep = inspect_and_record(v, lock, list(services) or None, echo=echo)
            row["inspect"] = irep.to_json()
            failed |= not irep.ok
            if not as_json:
                print_report(irep)
    if as_json:
        click.echo(json.dumps(out, indent=1))
    if failed:
        sys.exit(1)

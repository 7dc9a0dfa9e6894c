"""imgforge lock: pin every wheel and Debian package of a target with sha256."""

from __future__ import annotations

import json

import click

from .options import json_option, target_option, variant_option, variants_of


@click.command("lock")
@target_option()
@variant_option()
@click.option("--check", is_flag=True, help="only check that the committed lock matches the target (exit 2 if stale)")
@json_option
def cmd(targets, variant, check, as_json):
    """Resolve and pin a target's packages into targets/<variant>.lock.json."""
    from .levels import record
    from .lock import check_lock, lock_hash, lock_path, lock_variant

    out = []
    for v in variants_of(targets, variant):
        if check:
            lock = check_lock(v)
            out.append({"variant": v.name, "lock": str(lock_path(v.name)), "lock_hash": lock_hash(lock), "stale": False})
            record(v.name, "locked", {"lock_hash": lock_hash(lock), "checked": True})
            if not as_json:
                click.echo(f"{v.name}: lock {lock_path(v.name).name} is current ({lock_hash(lock)})")
            continue
        lock, path = lock_variant(v)
        n_wheels = sum(len(g) for g in lock["python"].values())
        row = {"variant": v.name, "lock": str(path), "lock_hash": lock_hash(lock), "wheels": n_wheels,
               "debs": len(lock["debian"]["packages"]), "source_date_epoch": lock["source_date_epoch"]}
        out.append(row)
        record(v.name, "locked", {"lock_hash": row["lock_hash"]})
        if not as_json:
            click.echo(f"{v.name}: {n_wheels} wheels, {row['debs']} Debian packages, SOURCE_DATE_EPOCH "
                       f"{row['source_date_epoch']} -> {path} ({row['lock_hash']})")
    if as_json:
        click.echo(json.dumps(out, indent=1))

"""`imgforge probe`: this host's GPUs, their topology, and the target and flags that suit it.

Exit status: 0 done; 3 no NVIDIA driver here (one line on stderr); 2 a --target variant is refused
(for example the driver is too old for its CUDA).
"""

from __future__ import annotations

import json
import os

import click

os.environ["NCCL_NVLS_ENABLE"] = "0"  # before anything could load NCCL; the probe itself never does

from builder.errors import UsageError  # noqa: E402
from builder.probe import PynvmlReader, RecordedReader, format_text, probe, record, suggest  # noqa: E402


@click.command("probe")
@click.option("--target", "targets", multiple=True, help="judge this target's variants against the host (repeatable)")
@click.option("--from-record", "from_record", type=click.Path(exists=True, dir_okay=False),
              help="replay a recording made with --record instead of asking the driver")
@click.option("--record", "record_to", type=click.Path(dir_okay=False), help="also save the raw NVML answers here")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def cmd(targets, from_record, record_to, as_json):
    """Read the GPUs with NVML and suggest CUDA_VISIBLE_DEVICES, utilization and tensor-parallel size."""
    if from_record:
        with open(from_record, encoding="utf-8") as fh:
            reader = RecordedReader(json.load(fh))
    else:
        reader = PynvmlReader()
    if record_to:
        with open(record_to, "w", encoding="utf-8") as fh:
            json.dump(record(reader), fh, indent=2, sort_keys=True)
    result = probe(reader)
    variants = []
    if targets:
        from builder.expand import expand  # noqa: PLC0415
        from builder.load import load_target  # noqa: PLC0415

        for ref in targets:
            variants.extend(expand(load_target(ref)))
    sug = suggest(result, variants)
    if as_json:
        click.echo(json.dumps({"probe": result, "suggestion": sug}, indent=2, sort_keys=True))
    else:
        click.echo(format_text(result, sug))
    refused = [v for v in sug["variants"] if v["status"] == "refused"]
    if refused:
        raise UsageError("refused: " + "; ".join(f"{v['name']}: {' '.join(v['reasons'])}" for v in refused))

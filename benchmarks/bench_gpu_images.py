"""GPU image sizes, per layer, beside the published baselines.

    python benchmarks/bench_gpu_images.py [--target T ...] [--json]

For each GPU variant whose images are built here (imgforge build --target T), every stage is one
layer; a layer's uncompressed bytes are the sizes of its layer tar as buildah's store records
them in the image's manifest. Printed beside:

- the official vLLM image (vllm/vllm-openai): 12 GB to 28.6 GB uncompressed, depending on the
  release (published sizes, upstream's registry page); the goal is at most half of it;
- a plain ``pip install vllm`` on a slim Python base image: 7.07 GB.

What imgforge leaves out to get there: no CUDA toolkit base image (CUDA user space comes from the
nvidia-* wheels torch pins), no compilers or build tools, no apt lists or caches, no bytecode, no
torchvision/torchaudio/torchcodec (the models are text-only), and the CUDA wheels both services
pin stored once in a shared layer.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

OFFICIAL_GB = (12.0, 28.6)
PLAIN_PIP_GB = 7.07
GPU_TARGETS = ("rtx4090", "tp4-rtx4090", "tp2-a40", "dgx-spark")


def layer_sizes(ref: str) -> list[int]:
    """Uncompressed bytes of each layer of a buildah image, bottom first (its stored manifest)."""
    out = subprocess.run(["skopeo", "inspect", "--raw", f"containers-storage:{ref}"], capture_output=True, text=True, check=True).stdout
    return [int(layer["size"]) for layer in json.loads(out)["layers"]]


def variant_layers(v, lock) -> dict[str, list[tuple[str, int]]] | None:
    """service -> [(stage, bytes)] bottom first; None when the variant is not built here."""
    from builder.build import buildah_image_id
    from builder.dockerfiles import keyed_stages

    stages = keyed_stages(v, lock)
    by = {s.name: s for s in stages}
    out = {}
    for final in (s for s in stages if s.service):
        if buildah_image_id(final.tag(v.name)) is None:
            return None
        chain = []
        cur = final
        while cur:
            chain.append(cur.name)
            cur = by[cur.parent] if cur.parent else None
        chain.reverse()
        sizes = layer_sizes(final.tag(v.name))
        if len(sizes) != len(chain):
            raise SystemExit(f"{final.tag(v.name)}: {len(sizes)} layers for {len(chain)} stages")
        out[final.service] = list(zip(chain, sizes))
    return out


def main() -> None:
    from builder.lock import check_lock
    from builder.options import variants_of

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--target", "-t", action="append", help="GPU targets (default: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = {}
    for v in variants_of(args.target or list(GPU_TARGETS)):
        layers = variant_layers(v, check_lock(v))
        if layers is None:
            print(f"{v.name}: not built here (imgforge build --target {v.name})", file=sys.stderr)
            continue
        res[v.name] = {svc: {"layers": dict(rows), "total": sum(n for _, n in rows)} for svc, rows in layers.items()}
    if args.json:
        print(json.dumps({"official_gb": OFFICIAL_GB, "plain_pip_gb": PLAIN_PIP_GB, "variants": res}, indent=1))
        return
    gb = lambda n: f"{n / 1e9:6.2f} GB"  # noqa: E731
    for name, images in res.items():
        print(f"{name}")
        for svc, info in images.items():
            print(f"  {svc:8s} {gb(info['total'])}   official vLLM image {OFFICIAL_GB[0]:.1f}-{OFFICIAL_GB[1]:.1f} GB "
                  f"(half: {OFFICIAL_GB[0] / 2:.1f}-{OFFICIAL_GB[1] / 2:.1f}), plain pip {PLAIN_PIP_GB:.2f} GB"
                  if svc == "vllm" else f"  {svc:8s} {gb(info['total'])}")
            for layer, n in info["layers"].items():
                print(f"      {layer:14s} {gb(n)}")
        stack = {}
        for svc, info in images.items():
            for layer, n in info["layers"].items():
                stack[layer] = n  # a shared layer counted once
        print(f"  stack    {gb(sum(stack.values()))} (shared layers once)")


if __name__ == "__main__":
    main()

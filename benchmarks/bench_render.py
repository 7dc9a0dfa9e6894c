"""Time to render every variant of every bundled target (goal: well under a second).

Prints, for the same variants in one run:
  * load + expand (schema, matrix, checks, flag data),
  * render to text and render to disk (atomic directories) with the cached template environment,
  * a naive baseline that re-reads the facts and templates and rebuilds the Jinja environment
    for every file it writes.
Usage: python benchmarks/bench_render.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jinja2

from builder import facts, render as r
from builder.expand import expand
from builder.load import list_targets, load_target


def load_all():
    return [v for t in list_targets() for v in expand(load_target(t))]


def naive_texts(variant) -> dict[str, str]:
    """Baseline: everything from scratch for every file (no template or facts cache)."""
    out = {}
    for template, name in r.TEMPLATES.items():
        facts.load.cache_clear()
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(r.compose_dir())), undefined=jinja2.StrictUndefined,
                                 keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
        env.filters["cq"] = r.compose_str
        env.filters["nq"] = r.nginx_str
        env.globals["json_error"] = r.json_error
        ctx = r.context(variant)
        ctx["dockerfiles"] = []
        ctx["header"] = r.header(variant, None, "<!--" if name.endswith(".md") else "#")
        out[name.format(variant=variant.name)] = env.get_template(template).render(ctx)
    return out


def timed(fn, repeat: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), min(runs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    t0 = time.perf_counter()
    variants = load_all()
    first_expand = time.perf_counter() - t0
    t0 = time.perf_counter()
    for v in variants:
        r.render_texts(v)
    first_render = time.perf_counter() - t0

    expand_med, _ = timed(load_all, args.repeat)
    text_med, _ = timed(lambda: [r.render_texts(v) for v in variants], args.repeat)
    naive_med, _ = timed(lambda: [naive_texts(v) for v in variants], args.repeat)
    with tempfile.TemporaryDirectory() as tmp:
        disk_med, _ = timed(lambda: [r.render(v, Path(tmp) / v.name) for v in variants], args.repeat)
    for v in variants:  # the baseline writes the same files
        assert naive_texts(v) == r.render_texts(v), v.name

    n, files = len(variants), sum(len(r.render_texts(v)) for v in variants)
    print(f"render benchmark: {n} variants of {len(list_targets())} targets, {files} files (median of {args.repeat})")
    print(f"  first call (cold): load+expand {first_expand * 1e3:7.1f} ms, render {first_render * 1e3:7.1f} ms")
    print(f"  load + expand             {expand_med * 1e3:7.1f} ms")
    print(f"  render to text            {text_med * 1e3:7.1f} ms   ({text_med / n * 1e3:.2f} ms a variant)")
    print(f"  render to disk (atomic)   {disk_med * 1e3:7.1f} ms")
    print(f"  baseline: naive render    {naive_med * 1e3:7.1f} ms   (templates and facts re-read per file)")
    total = expand_med + disk_med
    print(f"  total load+expand+render  {total * 1e3:7.1f} ms   goal < 1000 ms: {'met' if total < 1 else 'MISSED'}")


if __name__ == "__main__":
    main()

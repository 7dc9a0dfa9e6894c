"""Shared fixtures for tests that need the cpu images built (once per session).

The build uses the committed lock and the normal cache and buildah store, so a session that
finds the images already built (same stage keys) only checks them; the cold build time is
printed when one happens.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest


def _need_tools():
    missing = [t for t in ("buildah", "mmdebstrap", "docker", "apt-ftparchive") if not shutil.which(t)]
    if missing:
        pytest.fail(f"build tools missing: {', '.join(missing)} (run scripts/install-build-tools.sh)")


@pytest.fixture(scope="session")
def cpu_variant():
    from builder.options import variants_of

    return variants_of(["cpu"])[0]


@pytest.fixture(scope="session")
def cpu_lock(cpu_variant):
    from builder.lock import check_lock

    return check_lock(cpu_variant)


@pytest.fixture(scope="session")
def built_cpu(cpu_variant, cpu_lock):
    """Fetch (verify) and build the cpu images; returns (builder, report)."""
    from builder.build import Builder
    from builder.fetch import fetch_lock

    _need_tools()
    fetch_lock(cpu_lock, quiet=True)
    b = Builder(cpu_variant, cpu_lock, quiet=False)
    t0 = time.monotonic()
    rep = b.build()
    print(f"\ncpu images: {'already built' if rep.skipped else 'built'} in {time.monotonic() - t0:.1f}s")
    return b, rep


def docker_inspect(ref: str) -> dict:
    import json

    out = subprocess.run(["docker", "image", "inspect", ref], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]

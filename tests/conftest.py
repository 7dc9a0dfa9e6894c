"""Test-session settings shared by every test module.

Tests never touch the user's own imgforge state (levels reached, generated keys): each
session gets a fresh state directory. The download cache stays shared (IMGFORGE_CACHE or
the default), so a warm cache is reused across runs; every file in it is hash-checked anyway.
"""

from __future__ import annotations

import os
import tempfile

# testcontainers' reaper image cannot be pulled on machines without a registry; tests
# clean up after themselves instead.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

if "IMGFORGE_STATE" not in os.environ:
    os.environ["IMGFORGE_STATE"] = tempfile.mkdtemp(prefix="imgforge-test-state-")

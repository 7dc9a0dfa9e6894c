"""fetch: content-addressed cache, byte verification, re-fetch of corrupt files, vanished upstreams.

Files are served by a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import threading
from functools import partial
from pathlib import Path

import pytest

from builder import fetch as F
from builder.errors import ImgforgeError


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list[str] = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        _Handler.hits.append(self.path)
        super().do_GET()


@pytest.fixture()
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    _Handler.hits = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(root)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _pin(root: Path, base: str, name: str, data: bytes, kind: str = "wheel") -> dict:
    fn = f"{name}-1.0-py3-none-any.whl"
    (root / fn).write_bytes(data)
    return {"name": name, "version": "1.0", "filename": fn, "url": f"{base}/{fn}", "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "pure": True}


def _lock(*pins) -> dict:
    return {"variant": "cpu", "debian": {"packages": []}, "python": {"svc": list(pins)}}


def test_fetch_verify_and_skip_present(server, tmp_path):
    root, base = server
    cache = tmp_path / "cache"
    a = _pin(root, base, "alpha", b"A" * 3_000_000)
    b = _pin(root, base, "beta", b"hello")
    res = F.fetch_lock(_lock(a, b), root=cache, find_links=[], quiet=True)
    assert (res.fetched, res.present) == (2, 0)
    assert F.cached_path(a["sha256"], cache).read_bytes() == b"A" * 3_000_000
    n = len(_Handler.hits)
    res = F.fetch_lock(_lock(a, b), root=cache, find_links=[], quiet=True)
    assert (res.fetched, res.present) == (0, 2)
    assert len(_Handler.hits) == n  # nothing downloaded again


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cached_file_is_fetched_again(server, tmp_path, damage):
    root, base = server
    cache = tmp_path / "cache"
    a = _pin(root, base, "alpha", bytes(range(256)) * 1000)
    F.fetch_lock(_lock(a), root=cache, find_links=[], quiet=True)
    p = F.cached_path(a["sha256"], cache)
    data = p.read_bytes()
    p.write_bytes(data[:1000] if damage == "truncate" else data[:-1] + b"\x00")
    res = F.fetch_lock(_lock(a), root=cache, find_links=[], quiet=True)
    assert res.refetched == 1
    assert F.file_sha256(p) == a["sha256"]


def test_vanished_upstream_names_package_and_relock(server, tmp_path):
    root, base = server
    a = _pin(root, base, "alpha", b"data")
    (root / a["filename"]).unlink()
    with pytest.raises(F.VanishedError) as ei:
        F.fetch_lock(_lock(a), root=tmp_path / "cache", find_links=[], quiet=True)
    msg = str(ei.value)
    assert "\n" not in msg
    assert "alpha 1.0" in msg and "vanished" in msg and "re-lock with imgforge lock --target cpu" in msg
    assert not list((tmp_path / "cache" / "sha256").iterdir())  # nothing half-written left


def test_changed_upstream_file_is_refused(server, tmp_path):
    root, base = server
    a = _pin(root, base, "alpha", b"original")
    (root / a["filename"]).write_bytes(b"tampered")
    with pytest.raises(ImgforgeError, match="sha256"):
        F.fetch_lock(_lock(a), root=tmp_path / "cache", find_links=[], quiet=True)
    assert not F.cached_path(a["sha256"], tmp_path / "cache").exists()


def test_find_links_directory_is_used_first(server, tmp_path):
    root, base = server
    a = _pin(root, base, "alpha", b"from find-links")
    fl = tmp_path / "wheels"
    fl.mkdir()
    (fl / a["filename"]).write_bytes(b"from find-links")
    (root / a["filename"]).unlink()  # upstream does not even have it
    res = F.fetch_lock(_lock(a), root=tmp_path / "cache", find_links=[fl], quiet=True)
    assert res.from_find_links == 1 and _Handler.hits == []


def test_find_links_file_with_wrong_content_falls_back_to_url(server, tmp_path):
    root, base = server
    a = _pin(root, base, "alpha", b"the real bytes")
    fl = tmp_path / "wheels"
    fl.mkdir()
    (fl / a["filename"]).write_bytes(b"something else")
    res = F.fetch_lock(_lock(a), root=tmp_path / "cache", find_links=[fl], quiet=True)
    assert res.fetched == 1
    assert F.verify_cached(a["sha256"], tmp_path / "cache")


def test_require_cached_names_missing(server, tmp_path):
    root, base = server
    a = _pin(root, base, "alpha", b"x")
    with pytest.raises(ImgforgeError, match="imgforge fetch --target cpu"):
        F.require_cached(_lock(a), tmp_path / "cache")


def test_link_or_copy_is_safe_when_stages_place_the_same_file_at_once(tmp_path):
    """Two stages built in parallel link the same cached wheel into one wheels directory."""
    from concurrent.futures import ThreadPoolExecutor

    from builder.fetch import link_or_copy

    src = tmp_path / "cache" / "abc"
    src.parent.mkdir()
    src.write_bytes(b"wheel bytes")
    dst = tmp_path / "wheels" / "pkg-1.0-py3-none-any.whl"
    with ThreadPoolExecutor(max_workers=8) as ex:
        for f in [ex.submit(link_or_copy, src, dst) for _ in range(64)]:
            f.result()
    assert dst.read_bytes() == b"wheel bytes" and dst.stat().st_ino == src.stat().st_ino
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no temporary names left
    link_or_copy(src, dst)  # again, onto the same file
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]

"""fetch: a lock -> the content-addressed cache (``cache_dir()/sha256/<hex>``).

Only hashes the cache lacks are downloaded; every byte is verified (sha256 while streaming), a
cached file whose content no longer matches its name is fetched again. Files in pip's find-links
directories (pip's own configuration) are taken from there by file name, after the same check.
After fetch, a build needs no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import ImgforgeError
from .lock import all_pins, find_links_dirs, pip_index_config
from .paths import cache_dir

CHUNK = 1 << 20


class VanishedError(ImgforgeError):
    """A pinned file is no longer served by its upstream."""


def cached_path(sha256: str, root: Path | None = None) -> Path:
    return (root or cache_dir()) / "sha256" / sha256


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify_cached(sha256: str, root: Path | None = None) -> bool:
    p = cached_path(sha256, root)
    return p.is_file() and file_sha256(p) == sha256


def _store_from_stream(chunks, sha256: str, root: Path, progress: Callable[[int], None]) -> str:
    """Write chunks to the cache under sha256; return the digest actually seen."""
    dest = cached_path(sha256, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                h.update(chunk)
                f.write(chunk)
                progress(len(chunk))
        got = h.hexdigest()
        if got == sha256:
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        return got
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _file_chunks(path: Path):
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def _describe(pin: dict[str, Any]) -> str:
    return f"{pin['name']} {pin['version']} ({pin['filename']})"


@dataclass
class FetchResult:
    present: int = 0
    fetched: int = 0
    refetched: int = 0
    from_find_links: int = 0
    bytes: int = 0
    missing: list[str] = field(default_factory=list)


def fetch_one(
    pin: dict[str, Any],
    root: Path,
    find_links: list[Path],
    variant_name: str,
    progress: Callable[[int], None],
    session=None,
) -> str:
    """Make sure the cache holds pin's file; return 'present', 'refetched', 'find-links' or 'fetched'."""
    sha = pin["sha256"]
    dest = cached_path(sha, root)
    state = "fetched"
    if dest.exists():
        if file_sha256(dest) == sha:
            progress(dest.stat().st_size)
            return "present"
        dest.unlink()  # corrupt or truncated: fetch again
        state = "refetched"
    for d in find_links:
        cand = d / pin["filename"]
        if cand.is_file():
            if _store_from_stream(_file_chunks(cand), sha, root, progress) == sha:
                return "find-links" if state == "fetched" else state
    url = pin.get("url")
    if not url:
        raise VanishedError(
            f"{_describe(pin)} is in no find-links directory and has no upstream URL: "
            f"re-lock with imgforge lock --target {variant_name}"
        )
    if url.startswith("file:"):
        from urllib.parse import unquote, urlparse

        src = Path(unquote(urlparse(url).path))
        if not src.is_file():
            raise VanishedError(f"{_describe(pin)} vanished from {url}: re-lock with imgforge lock --target {variant_name}")
        got = _store_from_stream(_file_chunks(src), sha, root, progress)
    else:
        import requests

        sess = session or requests
        try:
            resp = sess.get(url, stream=True, timeout=(30, 300))
        except requests.RequestException as exc:
            raise ImgforgeError(f"cannot download {_describe(pin)} from {url}: {type(exc).__name__}") from None
        with resp:
            if resp.status_code in (404, 410):
                raise VanishedError(
                    f"{_describe(pin)} has vanished upstream ({resp.status_code} at {url}): "
                    f"re-lock with imgforge lock --target {variant_name}"
                )
            if resp.status_code != 200:
                raise ImgforgeError(f"cannot download {_describe(pin)}: HTTP {resp.status_code} from {url}")
            got = _store_from_stream(resp.iter_content(CHUNK), sha, root, progress)
    if got != sha:
        raise ImgforgeError(f"{_describe(pin)} from {url} has sha256 {got}, the lock says {sha}: upstream changed the file; re-lock with imgforge lock --target {variant_name}")
    return state


def fetch_lock(
    lock: dict[str, Any],
    root: Path | None = None,
    find_links: list[Path] | None = None,
    quiet: bool = False,
    jobs: int = 4,
) -> FetchResult:
    root = root or cache_dir()
    (root / "sha256").mkdir(parents=True, exist_ok=True)
    if find_links is None:
        find_links = find_links_dirs(pip_index_config())
    pins = all_pins(lock)
    total = sum(int(p.get("size") or 0) for p in pins)
    result = FetchResult()
    lock_ = threading.Lock()
    done = [0, 0]
    variant_name = lock.get("variant", "?")

    def progress(n: int) -> None:
        with lock_:
            done[0] += n

    stop = threading.Event()

    def reporter() -> None:
        while not stop.wait(1.0):
            with lock_:
                d, files = done[0], done[1]
            sys.stderr.write(f"\rfetch: {files}/{len(pins)} files, {d / 1e6:,.0f}/{total / 1e6:,.0f} MB ")
            sys.stderr.flush()

    t = None
    if not quiet:
        t = threading.Thread(target=reporter, daemon=True)
        t.start()

    import requests

    session = requests.Session()

    def work(pin):
        state = fetch_one(pin, root, find_links, variant_name, progress, session)
        with lock_:
            done[1] += 1
        return state

    try:
        # biggest first so the long downloads overlap the many small ones
        order = sorted(pins, key=lambda p: -(p.get("size") or 0))
        with ThreadPoolExecutor(max_workers=jobs) as ex:
            for state in ex.map(work, order):
                if state == "present":
                    result.present += 1
                elif state == "refetched":
                    result.refetched += 1
                elif state == "find-links":
                    result.from_find_links += 1
                else:
                    result.fetched += 1
    finally:
        stop.set()
        if t:
            t.join()
            sys.stderr.write("\n")
    result.bytes = done[0]
    return result


def require_cached(lock: dict[str, Any], root: Path | None = None) -> None:
    """Before a build: every pinned file is in the cache (size checked; fetch verified the bytes)."""
    missing = []
    for pin in all_pins(lock):
        p = cached_path(pin["sha256"], root)
        if not p.is_file() or (pin.get("size") and p.stat().st_size != pin["size"]):
            missing.append(pin["filename"])
    if missing:
        raise ImgforgeError(
            f"{len(missing)} pinned files are not in the cache (first: {missing[0]}): run imgforge fetch --target {lock.get('variant')}"
        )


def link_or_copy(src: Path, dst: Path) -> None:
    """dst becomes src's bytes (a hard link where possible), atomically: stages built in
    parallel may place the same wheel at the same time."""
    import threading

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}-{threading.get_ident()}.part")
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    # rename(2) does nothing when both names are links to the same file: drop the spare name
    tmp.unlink(missing_ok=True)

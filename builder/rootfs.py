"""Debian root filesystems from the cached .debs only, with mmdebstrap.

A flat apt repository is made from the lock's .debs (hard links into the content-addressed cache,
``Packages`` written by apt-ftparchive); mmdebstrap bootstraps from it alone, under
SOURCE_DATE_EPOCH, so the result depends only on the lock. The gateway's nginx becomes a layer of
its own: the difference between the base tar and a base+nginx tar, computed here.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from .errors import ImgforgeError
from .fetch import cached_path, link_or_copy

USER_NAME = "imgforge"
USER_ID = 10001

# Run by mmdebstrap as: sh -c HOOK exec "$1"=rootfs. Keeps the image free of host files and caches.
CUSTOMIZE_HOOK = r"""set -e
root="$1"
rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
rm -f "$root"/var/log/dpkg.log "$root"/var/log/alternatives.log "$root"/var/log/apt/*.log "$root"/var/log/apt/eipp.log.xz
rm -f "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/etc/machine-id "$root"/var/lib/dbus/machine-id
rm -f "$root"/etc/apt/sources.list.d/*.list
# Debian's python3 byte-compiles its modules on install, with timestamp-checked .pyc whose
# recorded source mtimes stop matching once the image's mtimes are clamped: leave bytecode out.
find "$root/usr/lib" "$root/usr/share" -name __pycache__ -type d -prune -exec rm -rf {} +
cat > "$root/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
days=$((SOURCE_DATE_EPOCH / 86400))
grep -q '^imgforge:' "$root/etc/passwd" || {
  echo "imgforge:x:10001:10001:imgforge:/home/imgforge:/usr/sbin/nologin" >> "$root/etc/passwd"
  echo "imgforge:x:10001:" >> "$root/etc/group"
  echo "imgforge:!:$days:0:99999:7:::" >> "$root/etc/shadow"
  echo "imgforge:!::" >> "$root/etc/gshadow"
  mkdir -p "$root/home/imgforge"
  chown 10001:10001 "$root/home/imgforge"
  chmod 0750 "$root/home/imgforge"
}
"""

# Run first for images assembled without executing their own code (dockerfiles.NO_RUN_ARCHES):
# mmdebstrap's extract variant only unpacks the .debs, so what their maintainer scripts would have
# made is made here, with the host's shell and tools, from files the packages ship.
EXTRACT_HOOK = r"""set -e
root="$1"
# accounts (base-passwd's and passwd's postinst): the master files, every password locked
cp "$root/usr/share/base-passwd/passwd.master" "$root/etc/passwd"
cp "$root/usr/share/base-passwd/group.master" "$root/etc/group"
days=$((SOURCE_DATE_EPOCH / 86400))
cut -d: -f1 "$root/etc/passwd" | while read -r u; do echo "$u:*:$days:0:99999:7:::"; done > "$root/etc/shadow"
cut -d: -f1 "$root/etc/group" | while read -r g; do echo "$g:*::"; done > "$root/etc/gshadow"
chmod 0644 "$root/etc/passwd" "$root/etc/group"
chmod 0640 "$root/etc/shadow" "$root/etc/gshadow"
chgrp 42 "$root/etc/shadow" "$root/etc/gshadow"
# the CA bundle (ca-certificates' update-ca-certificates): every certificate the package ships
certs="$root/usr/share/ca-certificates"
if [ -d "$certs" ]; then
  mkdir -p "$root/etc/ssl/certs"
  : > "$root/etc/ssl/certs/ca-certificates.crt"
  : > "$root/etc/ca-certificates.conf"
  (cd "$certs" && find . -name '*.crt' -type f | sed 's|^\./||' | LC_ALL=C sort) | while read -r c; do
    echo "$c" >> "$root/etc/ca-certificates.conf"
    ln -sfn "/usr/share/ca-certificates/$c" "$root/etc/ssl/certs/$(basename "$c" .crt).pem"
    sed -e '$a\' "$certs/$c" >> "$root/etc/ssl/certs/ca-certificates.crt"
  done
fi
# alternatives the base's scripts register (mawk, debianutils)
mkdir -p "$root/etc/alternatives"
alt() { [ -e "$root$2" ] || return 0; ln -sfn "$2" "$root/etc/alternatives/$1"; ln -sfn "/etc/alternatives/$1" "$root$3"; }
alt awk /usr/bin/mawk /usr/bin/awk
alt which /usr/bin/which.debianutils /usr/bin/which
# dpkg's status: every package unpacked, none configured (which is the truth)
: > "$root/var/lib/dpkg/status"
for deb in "$root"/var/cache/apt/archives/*.deb; do
  [ -e "$deb" ] || continue
  dpkg-deb -f "$deb" | sed '1a Status: install ok unpacked' >> "$root/var/lib/dpkg/status"
  echo >> "$root/var/lib/dpkg/status"
done
"""

# Extra hook for the gateway rootfs: nginx able to run as the non-root user.
GATEWAY_HOOK = r"""set -e
root="$1"
rm -f "$root/etc/nginx/sites-enabled/default"
mkdir -p "$root/var/lib/nginx" "$root/var/log/nginx" "$root/var/cache/nginx"
chown -R 10001:10001 "$root/var/lib/nginx" "$root/var/log/nginx" "$root/var/cache/nginx"
ln -sf /dev/stdout "$root/var/log/nginx/access.log"
ln -sf /dev/stderr "$root/var/log/nginx/error.log"
"""


def make_repo(lock: dict[str, Any], names: list[str] | None, repo: Path, cache: Path | None = None) -> Path:
    """A flat apt repository of the lock's .debs (all, or those named)."""
    repo.mkdir(parents=True, exist_ok=True)
    for old in repo.glob("*.deb"):
        old.unlink()
    for d in lock["debian"]["packages"]:
        if names is None or d["name"] in names:
            link_or_copy(cached_path(d["sha256"], cache), repo / d["filename"])
    proc = subprocess.run(["apt-ftparchive", "packages", "."], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImgforgeError(f"apt-ftparchive failed: {proc.stderr.strip().splitlines()[-1:]}")
    (repo / "Packages").write_text(proc.stdout)
    return repo


MERGED_USR_HOOK = "/usr/share/mmdebstrap/hooks/merged-usr/setup00.sh"


def mmdebstrap_cmd(lock: dict[str, Any], include: list[str], repo: Path, out: Path, hooks: list[str]) -> list[str]:
    from .dockerfiles import no_run

    unpack = no_run(lock)
    cmd = [
        "mmdebstrap", f"--variant={'extract' if unpack else 'apt'}", "--mode=root", f"--architectures={lock['platform']['deb_arch']}",
        "--skip=output/dev", "--quiet",
        "--aptopt=Acquire::Languages \"none\"",
        f"--include={','.join(include)}",
    ]
    if unpack:
        # /bin, /lib, /sbin as links into /usr, as usrmerge's postinst would make them (a host shell script)
        cmd.append(f"--setup-hook={MERGED_USR_HOOK}")
    # the extract variant runs no customize hooks (nothing is installed to customize): its hooks
    # run as extract hooks, on the unpacked tree, before mmdebstrap's own clean-up
    kind = "extract" if unpack else "customize"
    for h in hooks:
        cmd.append(f"--{kind}-hook={h}")
    cmd += [lock["debian"]["suite"], str(out), f"deb [trusted=yes] copy://{repo} ./"]
    return cmd


def bootstrap(lock: dict[str, Any], sets: list[str], out: Path, workdir: Path, log, cache: Path | None = None) -> Path:
    """Root filesystem tar with the Debian package sets named (e.g. ['base'] or ['base', 'gateway'])."""
    names: list[str] = []
    for s in sets:
        names += lock["debian"]["sets"][s]
    from .dockerfiles import no_run

    include = []
    for s in sets:
        include += [n for n in _requested(lock, s)]
    repo = make_repo(lock, names, workdir / ("repo-" + "-".join(sets)), cache)
    hooks = [CUSTOMIZE_HOOK] + ([GATEWAY_HOOK] if "gateway" in sets else [])
    if no_run(lock):
        # the extract variant installs only what is named: name the whole locked closure
        include = sorted(names)
        hooks = [EXTRACT_HOOK] + hooks
    cmd = mmdebstrap_cmd(lock, include, repo, out, hooks)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SOURCE_DATE_EPOCH": str(lock["source_date_epoch"]),
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "HOME": "/root",
    }
    script = "#!/bin/sh\nset -e\n" + "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()) + shlex.join(cmd) + "\n"
    (workdir / f"mmdebstrap-{'-'.join(sets)}.sh").write_text(script)
    tmp = out.with_suffix(".part.tar")
    cmd[-3 + 1] = str(tmp)  # write to a temporary name; rename when complete
    proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, umask=0o022)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise ImgforgeError(f"mmdebstrap failed (exit {proc.returncode}); see {getattr(log, 'name', 'the build log')}")
    os.replace(tmp, out)
    return out


def _requested(lock: dict[str, Any], set_name: str) -> list[str]:
    return list(lock["inputs"]["debian"]["sets"][set_name])


def _entry_key(m: tarfile.TarInfo) -> tuple:
    return (m.type, m.mode, m.uid, m.gid, m.uname, m.gname, m.linkname, m.size, m.devmajor, m.devminor, m.mtime)


def tar_index(path: Path) -> dict[str, tuple[tarfile.TarInfo, str | None]]:
    """name -> (member, sha256 of content for regular files)."""
    out = {}
    with tarfile.open(path) as tf:
        for m in tf:
            digest = None
            if m.isreg():
                f = tf.extractfile(m)
                if f is not None:
                    h = hashlib.sha256()
                    while chunk := f.read(1 << 20):  # layers hold files of hundreds of MB
                        h.update(chunk)
                    digest = h.hexdigest()
            out[m.name.lstrip("./").rstrip("/") or "."] = (m, digest)
    return out


def diff_layer(lower: Path, upper: Path, out: Path) -> dict[str, int]:
    """A layer tar holding what upper adds or changes over lower (OCI whiteouts for removals)."""
    low = tar_index(lower)
    changed = 0
    removed = []
    up_names = set()
    with tarfile.open(upper) as src, open(out.with_suffix(".part"), "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as dst:
            for m in src:
                name = m.name.lstrip("./").rstrip("/") or "."
                up_names.add(name)
                data = src.extractfile(m).read() if m.isreg() else None
                digest = hashlib.sha256(data).hexdigest() if data is not None else None
                old = low.get(name)
                if old and _entry_key(old[0]) == _entry_key(m) and old[1] == digest:
                    continue
                changed += 1
                dst.addfile(m, io.BytesIO(data) if data is not None else None)
            for name in sorted(set(low) - up_names):
                parent, _, base = name.rpartition("/")
                wh = tarfile.TarInfo((parent + "/" if parent else "") + ".wh." + base)
                wh.mtime = low[name][0].mtime
                dst.addfile(wh)
                removed.append(name)
    os.replace(out.with_suffix(".part"), out)
    return {"changed": changed, "removed": len(removed)}

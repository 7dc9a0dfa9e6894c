#!/bin/sh
# Installs the tools imgforge's lock/fetch/build stages use on Debian 12 (bookworm), as root.
# Idempotent and non-interactive: packages already installed are left alone.
# The golden digests in targets/*.lock.json were made with these tools as Debian 12 ships them
# (mmdebstrap 1.3.5, buildah 1.28.2): other versions may give other digests.
set -eu

PKGS="mmdebstrap buildah skopeo runc uidmap fuse-overlayfs apt-utils dpkg-dev debian-archive-keyring util-linux diffoscope-minimal"

"$(dirname "$0")/apt-install.sh" $PKGS

for t in mmdebstrap buildah skopeo apt-ftparchive; do
    command -v "$t" >/dev/null || { echo "install-build-tools: $t missing after install" >&2; exit 1; }
done
echo "install-build-tools: mmdebstrap $(mmdebstrap --version | awk '{print $2}'), $(buildah --version), $(skopeo --version)"

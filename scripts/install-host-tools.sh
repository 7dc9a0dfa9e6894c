#!/bin/sh
# Installs every host tool imgforge drives, on Debian 12 (bookworm), as root:
# build tools (mmdebstrap, buildah, skopeo, ...), lint tools (nginx), the Docker
# Compose v2 plugin and a registry for publish tests. Idempotent and non-interactive.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "install-host-tools: run as root (sudo $0)" >&2
    exit 1
fi
"$here/install-build-tools.sh"
"$here/install-lint-tools.sh"
"$here/install-registry.sh"

#!/bin/sh
# Installs what imgforge's publish tests use on Debian 12 (bookworm), as root: Debian's
# docker-registry (a real registry served on loopback), htpasswd (bcrypt users for the
# authentication tests) and skopeo (the push tool).
# Idempotent and non-interactive: packages already installed are left alone. The package's own
# registry service is not needed: tests start their own registry with a temporary config.
set -eu

PKGS="docker-registry apache2-utils skopeo"

# apt-install.sh keeps the package's maintainer scripts from starting a system-wide registry.
"$(dirname "$0")/apt-install.sh" $PKGS

for t in docker-registry htpasswd skopeo; do
    command -v "$t" >/dev/null || { echo "install-registry: $t missing after install" >&2; exit 1; }
done
echo "install-registry: $(docker-registry --version 2>&1 | head -n1), htpasswd, $(skopeo --version)"

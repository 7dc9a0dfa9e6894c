#!/bin/sh
# Installs what imgforge's publish tests use on Debian 12 (bookworm), as root: Debian's
# docker-registry (a real registry served on loopback), htpasswd (bcrypt users for the
# authentication tests) and skopeo (the push tool).
# Idempotent and non-interactive: packages already installed are left alone. The package's own
# registry service is not needed: tests start their own registry with a temporary config.
set -eu

PKGS="docker-registry apache2-utils skopeo"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # policy-rc.d keeps the package's maintainer scripts from starting a system-wide registry.
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    if [ "$had_policy" = 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
    fi
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $missing || { [ "$had_policy" = 0 ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
    [ "$had_policy" = 0 ] && rm -f /usr/sbin/policy-rc.d
fi

for t in docker-registry htpasswd skopeo; do
    command -v "$t" >/dev/null || { echo "install-registry: $t missing after install" >&2; exit 1; }
done
echo "install-registry: $(docker-registry --version 2>&1 | head -n1), htpasswd, $(skopeo --version)"

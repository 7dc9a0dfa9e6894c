#!/bin/sh
# Installs what `imgforge lint` runs, on Debian 12 (bookworm), as root:
#   - nginx (Debian's nginx-light) for `nginx -t` of the rendered gateway config
#   - the Docker Compose v2 plugin for `docker compose config` (see install-compose-v2.sh)
# Idempotent and non-interactive. nginx is installed for its binary only: the packaged
# service is left stopped and disabled.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    "$here/apt-install.sh" nginx-light
fi
echo "install-lint-tools: $(/usr/sbin/nginx -v 2>&1)"

"$here/install-compose-v2.sh"

#!/bin/sh
# Installs what `imgforge lint` runs, on Debian 12 (bookworm), as root:
#   - nginx (Debian's nginx-light) for `nginx -t` of the rendered gateway config
#   - the Docker Compose v2 plugin for `docker compose config` (see install-compose-v2.sh)
# Idempotent and non-interactive. nginx is installed for its binary only: the packaged
# service is left stopped and disabled.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packaged nginx service from starting (no init system in containers anyway).
    policy=/usr/sbin/policy-rc.d
    created_policy=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 0755 "$policy"
        created_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends nginx-light || apt-get install -y -qq --no-install-recommends nginx
    [ -n "$created_policy" ] && rm -f "$policy"
fi
echo "install-lint-tools: $(/usr/sbin/nginx -v 2>&1)"

"$here/install-compose-v2.sh"

#!/bin/sh
# apt-install.sh PKG...: installs the Debian packages among PKG that are not installed yet,
# non-interactively, without letting their maintainer scripts start services (a policy-rc.d
# that refuses is in place while apt runs). Shared by the install-*.sh scripts.
set -eu

missing=""
for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -n "$missing" ] || exit 0

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
created_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi
cleanup() { [ -z "$created_policy" ] || rm -f "$policy"; }
trap cleanup EXIT
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing

#!/bin/sh
# Installs the Docker Compose v2 CLI plugin (`docker compose`) from Debian 13 (trixie) on a
# Debian 12 (bookworm) host whose docker.io ships without it. Run as root.
#
# The trixie package is only downloaded and unpacked (apt-get download + dpkg -x), never
# installed through dpkg, and trixie's package lists live in a private apt state directory:
# the system's own apt sources and state stay bookworm only.
#
#   PLUGIN_DIR  where the plugin goes (default /usr/local/lib/docker/cli-plugins, searched by
#               the Docker CLI; ~/.docker/cli-plugins works for one user)
#   MIRROR      Debian mirror (default http://deb.debian.org/debian)
set -eu

PLUGIN_DIR=${PLUGIN_DIR:-/usr/local/lib/docker/cli-plugins}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

if docker compose version >/dev/null 2>&1; then
    echo "install-compose-v2: already present: $(docker compose version)"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/root"

cat > "$work/trixie.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC

apt_opts="-o Dir::Etc::sourcelist=$work/trixie.sources -o Dir::Etc::sourceparts=/nonexistent
 -o Dir::State::Lists=$work/lists -o Dir::Cache=$work/cache -o Dir::State::status=/dev/null
 -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root"

# shellcheck disable=SC2086
apt-get -qq $apt_opts update
# shellcheck disable=SC2086
(cd "$work" && apt-get -qq $apt_opts download docker-compose)

deb=$(ls "$work"/docker-compose_*.deb)
dpkg -x "$deb" "$work/root"
bin="$work/root/usr/libexec/docker/cli-plugins/docker-compose"
[ -x "$bin" ] || { echo "install-compose-v2: $deb has no usr/libexec/docker/cli-plugins/docker-compose" >&2; exit 1; }

mkdir -p "$PLUGIN_DIR"
install -m 0755 "$bin" "$PLUGIN_DIR/docker-compose"
echo "install-compose-v2: $(basename "$deb") -> $PLUGIN_DIR/docker-compose"
docker compose version

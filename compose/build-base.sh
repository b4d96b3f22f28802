#!/bin/sh
# Build a local Debian bookworm base image for machines that reach no image registry.
#   compose/build-base.sh [TAG]      (default TAG: adba/base:bookworm)
# Then build with it:  ADBA_BASE_IMAGE=adba/base:bookworm docker-compose -f compose/docker-compose.yml build
# Needs root, debootstrap and a reachable Debian mirror (the one apt uses here).
set -eu
TAG="${1:-adba/base:bookworm}"
# builds trust what this machine trusts (a TLS-intercepting proxy in front of PyPI, say)
HERE="$(cd "$(dirname "$0")" && pwd)"
BUNDLE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$BUNDLE" ] && cp "$BUNDLE" "$HERE/build-ca/ca.pem"
if docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "build-base: $TAG already exists"; exit 0
fi
command -v debootstrap >/dev/null || { echo "build-base: apt-get install debootstrap" >&2; exit 1; }
MIRROR="$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOT="$(mktemp -d /tmp/adba-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "build-base: debootstrap bookworm from $MIRROR (about a minute)" >&2
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
    || { tail -20 "$ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
echo "build-base: $TAG built" >&2

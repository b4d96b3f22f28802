#!/bin/sh
# Docker for CI and for trying the stack on a machine without systemd:
#   compose/docker-engine.sh start   install docker.io, docker-compose, debootstrap if missing;
#                                    start dockerd if no engine answers; build the local base
#                                    image (no registry needed) and the stack's images
#   compose/docker-engine.sh stop    stop the dockerd this script started (by its PID)
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
PIDFILE=/tmp/adba-dockerd.pid
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
case "${1:-}" in
start)
    PKGS=""
    command -v dockerd >/dev/null 2>&1 || PKGS="$PKGS docker.io"
    command -v docker-compose >/dev/null 2>&1 || PKGS="$PKGS docker-compose"
    command -v debootstrap >/dev/null 2>&1 || PKGS="$PKGS debootstrap"
    if [ -n "$PKGS" ]; then
        echo "docker-engine: installing$PKGS" >&2
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $PKGS >&2
    fi
    if ! docker info >/dev/null 2>&1; then
        $SUDO sh -c "dockerd >/tmp/adba-dockerd.log 2>&1 & echo \$! > $PIDFILE"
        i=0
        until docker info >/dev/null 2>&1; do
            i=$((i + 1)); [ $i -lt 60 ] || { tail -20 /tmp/adba-dockerd.log >&2; exit 1; }
            sleep 0.5
        done
    fi
    # image builds trust what this machine trusts (a TLS-intercepting proxy, say)
    BUNDLE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
    [ -s "$BUNDLE" ] && cp "$BUNDLE" "$HERE/build-ca/ca.pem"
    if [ -z "${ADBA_BASE_IMAGE:-}" ]; then
        "$HERE/build-base.sh" adba/base:bookworm
        export ADBA_BASE_IMAGE=adba/base:bookworm
    fi
    docker-compose -f "$HERE/docker-compose.yml" build --quiet >&2 || docker-compose -f "$HERE/docker-compose.yml" build >&2
    echo "docker-engine: images built on $ADBA_BASE_IMAGE" >&2
    ;;
stop)
    if [ -s "$PIDFILE" ]; then
        $SUDO kill "$(cat "$PIDFILE")" 2>/dev/null || true
        rm -f "$PIDFILE"
    fi
    ;;
*) sed -n '2,7p' "$0"; exit 2 ;;
esac

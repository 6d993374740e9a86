#!/usr/bin/env bash
# Helpers the deploy tests source (deploy/test/compose, deploy/test/systemd): a running Docker
# engine, and base images made locally where no registry is reachable. Root only.
#
#   . deploy/test/lib.sh
#   docker_up                         # starts dockerd (Debian's docker.io) unless one answers
#   base_image TAG [PACKAGE...]       # TAG from the local store, a registry, or debootstrap
set -euo pipefail

# Debian's client, not any other docker binary earlier on PATH (its API matches the engine).
DOCKER=${DOCKER:-/usr/bin/docker}

docker() { "$DOCKER" "$@"; }

# Starts dockerd if no engine answers, and waits (30 s at most) until one does.
docker_up() {
    if docker info >/dev/null 2>&1; then
        return 0
    fi
    [ -x /usr/sbin/dockerd ] || { echo "deploy test: dockerd is not installed (docker.io)" >&2; return 1; }
    echo "deploy test: starting dockerd (log: /var/log/outsock-dockerd.log)"
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        systemctl start docker
    else
        # No systemd here (a container, a CI runner): the engine in the background.
        nohup /usr/sbin/dockerd >/var/log/outsock-dockerd.log 2>&1 &
    fi
    local i
    for i in $(seq 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "deploy test: dockerd did not answer within 30 s; its log:" >&2
    tail -30 /var/log/outsock-dockerd.log >&2 || true
    return 1
}

# Makes image TAG available: already in the local store; pulled where a registry answers
# (within 20 s); otherwise a Debian bookworm root file system made with
# `debootstrap --variant=minbase` (with PACKAGEs) and `docker import`ed under TAG. The root
# file system is cached as a tarball under /var/cache/outsock/images/, keyed by TAG and the
# package list, so a second run imports it again in seconds.
base_image() {
    local tag=$1
    shift
    if docker image inspect "$tag" >/dev/null 2>&1; then
        return 0
    fi
    if timeout 20 "$DOCKER" pull -q "$tag" >/dev/null 2>&1; then
        echo "deploy test: pulled $tag"
        return 0
    fi
    local key cache dir
    key=$(printf '%s %s' "$tag" "$*" | sha256sum | cut -c1-16)
    cache=/var/cache/outsock/images/$key.tar
    if [ ! -s "$cache" ]; then
        echo "deploy test: no registry for $tag; debootstrap --variant=minbase bookworm ($*)"
        dir=$(mktemp -d)
        local include=()
        if [ $# -gt 0 ]; then
            include=("--include=$(IFS=,; echo "$*")")
        fi
        if ! debootstrap --variant=minbase "${include[@]}" bookworm "$dir" \
            "${OUTSOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$dir.log" 2>&1; then
            echo "deploy test: debootstrap failed; its log:" >&2
            tail -30 "$dir.log" >&2
            rm -rf "$dir" "$dir.log"
            return 1
        fi
        # What Debian's official images leave out: package lists and caches.
        rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb
        mkdir -p "$(dirname "$cache")"
        tar -C "$dir" --numeric-owner -cf "$cache.part" .
        mv "$cache.part" "$cache"
        rm -rf "$dir" "$dir.log"
    fi
    docker import "$cache" "$tag" >/dev/null
    echo "deploy test: imported $tag from $cache"
}

#!/bin/bash
# Builds the outsock guest image: the Debian cloud kernel (bzImage) and an initramfs with
# static busybox, /dev/console, the kernel modules in modules.list and our /init.
#
# Usage: guest/image/build.sh [--quiet]
# Prints two lines, "kernel=<path>" and "initramfs=<path>".
#
# Inputs come from Debian packages fetched with `apt-get download` (never a prebuilt image):
#   linux-image-cloud-amd64's current dependency (linux-image-<ver>-cloud-amd64), busybox-static.
# Cache: $OUTSOCK_IMAGE_CACHE (default /var/cache/outsock/image): downloaded .debs in debs/,
# builds in build/<hash>/, where <hash> covers this script, init, modules.list, and the exact
# package files, so a change to any of them (or a new kernel in the archive) rebuilds.
# Extending the image (next issues: liboutsock, more programs): add files under the staging
# root in add_extra_files below and list extra modules in modules.list.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${OUTSOCK_IMAGE_CACHE:-/var/cache/outsock/image}
quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
log() { [ "$quiet" = 1 ] || echo "guest-image: $*" >&2; }
die() { echo "guest-image: $*" >&2; exit 1; }

mkdir -p "$cache/debs" "$cache/build"
chmod 755 "$cache" "$cache/debs" 2>/dev/null || true   # apt's _apt user downloads here

# 1. Resolve the current cloud kernel package.
resolve_kernel() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}'
}
kpkg=$(resolve_kernel || true)
if [ -z "$kpkg" ]; then
    log "apt lists have no linux-image-cloud-amd64; running apt-get update"
    apt-get update -qq >/dev/null 2>&1 || true
    kpkg=$(resolve_kernel || true)
fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 (no apt lists and no network?)"
kver=${kpkg#linux-image-}

# 2. Download the packages unless cached.
fetch() {
    local pkg=$1 ver file
    ver=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
    [ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version for $pkg"
    file=$(ls "$cache/debs/${pkg}_"*"_amd64.deb" 2>/dev/null | while read -r f; do
        [ "$(dpkg-deb -f "$f" Version)" = "$ver" ] && echo "$f"; done | head -n1)
    if [ -z "$file" ]; then
        log "downloading $pkg $ver"
        (cd "$cache/debs" && apt-get download -q "$pkg=$ver" >/dev/null 2>&1) \
            || (cd "$cache/debs" && apt-get download "$pkg=$ver") \
            || die "apt-get download $pkg=$ver failed"
        file=$(ls -t "$cache/debs/${pkg}_"*"_amd64.deb" | head -n1)
    fi
    echo "$file"
}
kdeb=$(fetch "$kpkg")
bbdeb=$(fetch busybox-static)

# 3. Hash the inputs.
hash=$( { sha256sum "$0" "$here/init" "$here/modules.list"; basename "$kdeb"; basename "$bbdeb"; } \
    | sha256sum | cut -c1-16)
out="$cache/build/$hash"
if [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.gz" ]; then
    log "up to date ($kver, $out)"
else
    log "building $out ($kver)"
    work=$(mktemp -d "$cache/build/.work.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    dpkg-deb -x "$kdeb" "$work/kernel"
    dpkg-deb -x "$bbdeb" "$work/busybox"
    root="$work/root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc/outsock}
    mkdir -p "$root/lib/modules/$kver"
    cp "$work/busybox/bin/busybox" "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list-full); do
        [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
    done
    mknod -m 600 "$root/dev/console" c 5 1 || die "mknod /dev/console failed (run as root)"
    mknod -m 666 "$root/dev/null" c 1 3
    install -m 755 "$here/init" "$root/init"
    grep -v -e '^#' -e '^$' "$here/modules.list" > "$root/etc/outsock/modules" || true
    while read -r mod; do
        src="$work/kernel/lib/modules/$kver/$mod"
        [ -f "$src" ] || die "module $mod is not in $kpkg"
        mkdir -p "$root/lib/modules/$kver/$(dirname "$mod")"
        cp "$src" "$root/lib/modules/$kver/$mod"
    done < "$root/etc/outsock/modules"
    add_extra_files() { :; }   # extension point for liboutsock and programs
    add_extra_files "$root"
    mkdir -p "$work/out"
    cp "$work/kernel/boot/vmlinuz-$kver" "$work/out/vmlinuz"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --quiet --reproducible) | gzip -9n > "$work/out/initramfs.cpio.gz"
    rm -rf "$out"
    mv "$work/out" "$out"
    echo "$kpkg" > "$out/kernel-package"
fi
ln -sfn "build/$hash" "$cache/current"
echo "kernel=$out/vmlinuz"
echo "initramfs=$out/initramfs.cpio.gz"

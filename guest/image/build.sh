#!/bin/bash
# Builds the outsock guest image: the Debian cloud kernel (bzImage) and an initramfs with
# static busybox, /dev/console, the kernel modules in modules.list and our /init. The initramfs is
# zstd-compressed (-19: about a third smaller than gzip -9 and it unpacks three times faster; the
# Debian kernels have CONFIG_RD_ZSTD).
#
# Usage: guest/image/build.sh [--quiet]
#
# VM mode (outsock): with OUTSOCK_GUEST_BINS=<dir> holding liboutsock.so,
# outsock-dns-forwarder and the outsock CLI (a cargo target folder), the image also carries
# liboutsock.so in /etc/ld.so.preload, /etc/outsock/shim.conf (transport=vsock:1024), the DNS
# forwarder that /init starts on 127.0.0.1:53, /usr/bin/outsock (stripped), under whose
# seccomp supervisor /init runs the workload, resolv.conf naming 127.0.0.1, and the legacy programs in
# GUEST_PROGRAMS below with their shared libraries, copied from this machine's installed
# Debian packages (netcat-traditional, curl, wget, busybox, iperf3, knot-dnsutils,
# bind9-dnsutils' dig, nginx: its binary only, run with a configuration of its own, no
# mime.types), and python3
# with its standard library (less the parts no program here imports: tests, Tk, IDLE, the
# static library; see copy_python) and the extension modules' libraries.
# Debug aid: OUTSOCK_GUEST_EXTRA="/usr/bin/strace ..." adds more programs the same way.
# Prints two lines, "kernel=<path>" and "initramfs=<path>".
#
# Inputs come from Debian packages fetched with `apt-get download` (never a prebuilt image):
#   linux-image-cloud-amd64's current dependency (linux-image-<ver>-cloud-amd64), busybox-static.
# Cache: $OUTSOCK_IMAGE_CACHE (default /var/cache/outsock/image): downloaded .debs in debs/,
# builds in build/<hash>/, where <hash> covers this script, init, modules.list, the exact
# package files and the programs copied in, so a change to any of them (or a new kernel in the
# archive) rebuilds. Everything is written under the cache folder (see guest/image/README.md).
# Extending the image: add files under the staging root in add_extra_files below and list
# extra modules in modules.list.
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
GUEST_PROGRAMS="/usr/bin/nc.traditional /usr/bin/curl /usr/bin/wget /usr/bin/busybox /usr/bin/iperf3 /usr/bin/kdig /usr/bin/dig /usr/sbin/nginx"
# python3: the interpreter and its standard library folder (from python3.11-minimal,
# libpython3.11-minimal and libpython3.11-stdlib); the packages' versions go into the hash.
PYTHON=/usr/bin/python3.11
PYLIB=/usr/lib/python3.11
PYTHON_PACKAGES="python3.11-minimal libpython3.11-minimal libpython3.11-stdlib"
bins=${OUTSOCK_GUEST_BINS:-}
# Debug aid: more programs of this machine (with their libraries), e.g. /usr/bin/strace.
extra=${OUTSOCK_GUEST_EXTRA:-}
if [ -n "$bins" ]; then
    for f in "$bins/liboutsock.so" "$bins/outsock-dns-forwarder" "$bins/outsock" $GUEST_PROGRAMS $PYTHON "$PYLIB/socket.py"; do
        [ -f "$f" ] || die "$f is missing (VM mode needs it: cargo build, apt-get install the program)"
    done
fi
for f in $extra; do
    case "$f" in /*) ;; *) die "OUTSOCK_GUEST_EXTRA: $f is not an absolute path" ;; esac
    [ -f "$f" ] || die "OUTSOCK_GUEST_EXTRA: $f is missing"
done
# The files' contents only, not the paths they were named by: `outsock vm run` runs this script
# by another path (target/debug/../../guest/image/build.sh) than vmm/lab/run does, and the lab
# must find the image built before it booted, not build it again under emulation (minutes).
contents() { sha256sum "$@" | cut -d' ' -f1; }
hash=$( { contents "$0" "$here/init" "$here/modules.list"; basename "$kdeb"; basename "$bbdeb";
          [ -z "$bins" ] || contents "$bins/liboutsock.so" "$bins/outsock-dns-forwarder" "$bins/outsock" $GUEST_PROGRAMS;
          [ -z "$bins" ] || dpkg-query -W $PYTHON_PACKAGES;
          [ -z "$extra" ] || sha256sum $extra; } \
    | sha256sum | cut -c1-16)
out="$cache/build/$hash"
if [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.cpio.zst" ]; then
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
    # Copies a file with every shared library it needs (ldd), at the same paths.
    copy_with_libs() {
        local r=$1 f=$2 lib
        mkdir -p "$r$(dirname "$f")"
        # Remove what is there first: busybox's applet links are absolute symlinks
        # (/usr/bin/wget -> /bin/busybox), and copying through one would overwrite the
        # build host's own /bin/busybox.
        rm -f "$r$f"
        cp -L "$f" "$r$f"
        for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
            [ -e "$r$lib" ] && continue
            mkdir -p "$r$(dirname "$lib")"
            cp -L "$lib" "$r$lib"
        done
    }
    # Copies python3 and its standard library, leaving out what no program run here imports
    # (the test suite, Tk/IDLE/turtle, lib2to3, ensurepip, pydoc's data, the 25 MB static
    # library in config-*, distutils, optimised .pyc files), then the shared
    # libraries the extension modules in lib-dynload need.
    copy_python() {
        local r=$1 so lib
        copy_with_libs "$r" "$PYTHON"
        ln -sf "$(basename "$PYTHON")" "$r/usr/bin/python3"
        mkdir -p "$r$PYLIB"
        (cd "$PYLIB" && find . \( -path ./test -o -path ./idlelib -o -path ./tkinter \
                -o -path ./turtledemo -o -path ./lib2to3 -o -path ./ensurepip -o -path ./pydoc_data \
                -o -path ./distutils -o -path './config-*' -o -path ./site-packages \
                -o -path ./dist-packages \) -prune \
                -o \( -type f ! -name '*.opt-?.pyc' -print0 \) \
            | cpio --null -pdm --quiet "$r$PYLIB")
        # Sourceless: each module's compiled .pyc (made by Debian's postinst, checked to be
        # there) takes the place of its .py, which Python's sourceless loader imports; this
        # halves the library's size. Tracebacks show no source lines.
        (cd "$r$PYLIB" && find . -name '*.py' -print0 | while IFS= read -r -d '' py; do
            dir=$(dirname "$py"); mod=$(basename "$py" .py)
            pyc="$dir/__pycache__/$mod.cpython-311.pyc"
            [ -f "$pyc" ] && mv "$pyc" "$dir/$mod.pyc" && rm "$py"
        done
        find . -type d -name __pycache__ -empty -delete)
        for so in "$r$PYLIB"/lib-dynload/*.so; do
            for lib in $(ldd "$so" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
                [ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
            done
        done
    }
    # dig's libxml2 links ICU, whose data library (31 MB of locale and conversion tables, a
    # third more image) dig never opens: libxml2 asks ICU only to convert a document in a
    # character set it lacks itself, and dig parses no XML. An empty library of the same name
    # exporting the same symbol stands in for it (ICU answers an error if it is ever asked).
    stub_icudata() {
        local r=$1 lib sym
        for lib in "$r"/lib/x86_64-linux-gnu/libicudata.so.*; do
            [ -f "$lib" ] || continue
            sym=$(nm -D --defined-only "$lib" | awk '$2 == "R" && $3 ~ /^icudt[0-9]+_dat$/ {print $3}')
            [ -n "$sym" ] || die "no icudt*_dat symbol in $lib"
            printf 'const char %s[32] __attribute__((aligned(16))) = {0};\n' "$sym" \
                | cc -shared -fPIC -x c -Wl,-soname,"$(basename "$lib")" -o "$lib.stub" - \
                || die "building the stand-in for $lib failed (needs cc)"
            mv "$lib.stub" "$lib"
        done
    }
    add_extra_files() {
        local r=$1 p
        [ -n "$bins" ] || return 0
        for p in $GUEST_PROGRAMS; do copy_with_libs "$r" "$p"; done
        stub_icudata "$r"
        copy_python "$r"
        # The dynamic busybox (Debian `busybox`) is the "busybox" on PATH: LD_PRELOAD cannot
        # reach the static one /init runs on.
        mkdir -p "$r/usr/local/bin"
        mv "$r/usr/bin/busybox" "$r/usr/local/bin/busybox"
        ln -sf nc.traditional "$r/usr/bin/nc"
        copy_with_libs "$r" "$bins/outsock-dns-forwarder"
        install -D -m 755 "$bins/outsock-dns-forwarder" "$r/usr/sbin/outsock-dns-forwarder"
        rm -f "$r$bins/outsock-dns-forwarder"
        install -D -m 755 "$bins/liboutsock.so" "$r/usr/lib/liboutsock.so"
        # The seccomp supervisor (`outsock run --supervise`), which /init runs the workload
        # under; stripped (the debug build is 17 MB with its symbols).
        install -D -m 755 -s "$bins/outsock" "$r/usr/bin/outsock"
        for lib in $(ldd "$bins/outsock" | grep -o '/[^ ]*' | sort -u); do
            [ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
        done
        for lib in $(ldd "$bins/liboutsock.so" | grep -o '/[^ ]*' | sort -u); do
            [ -e "$r$lib" ] || { mkdir -p "$r$(dirname "$lib")"; cp -L "$lib" "$r$lib"; }
        done
        echo /usr/lib/liboutsock.so > "$r/etc/ld.so.preload"
        printf 'transport=vsock:1024\ndns=10.170.160.1\n' > "$r/etc/outsock/shim.conf"
        printf 'nameserver 127.0.0.1\noptions timeout:2 attempts:3\n' > "$r/etc/resolv.conf"
        printf 'hosts: files dns\n' > "$r/etc/nsswitch.conf"
        printf '127.0.0.1 localhost\n' > "$r/etc/hosts"
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
        printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
        mkdir -p "$r/www"
        echo "hello from the guest" > "$r/www/index.html"
    }
    add_extra_files "$root"
    for p in $extra; do copy_with_libs "$root" "$p"; done
    mkdir -p "$work/out"
    cp "$work/kernel/boot/vmlinuz-$kver" "$work/out/vmlinuz"
    (cd "$root" && find . -print0 | LC_ALL=C sort -z \
        | cpio --null -o -H newc --quiet --reproducible) \
        | zstd -q -19 -T0 > "$work/out/initramfs.cpio.zst"
    rm -rf "$out"
    mv "$work/out" "$out"
    echo "$kpkg" > "$out/kernel-package"
fi
ln -sfn "build/$hash" "$cache/current"
echo "kernel=$out/vmlinuz"
echo "initramfs=$out/initramfs.cpio.zst"

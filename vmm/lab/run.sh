#!/bin/bash
# The VMM boot tests against a real /dev/kvm, in one command.
#
#   vmm/lab/run.sh
#
# 1. Builds outsock-vmm and its test driver (release) and the guest image (guest/image).
# 2. On a host with hardware KVM (kvm_intel/kvm_amd loaded, vmx/svm in /proc/cpuinfo) runs the
#    driver directly. Otherwise (this project's machines: PVM /dev/kvm) boots the lab VM: QEMU
#    in software emulation with -cpu max (AMD SVM), Debian's generic kernel with kvm-amd, this
#    machine's root filesystem shared read-only over 9p, no network device; the driver runs
#    inside it against the lab's /dev/kvm. All tests run in ONE lab boot.
# 3. Prints each test's result and a closing "vmm-lab: N passed, M failed"; exits non-zero if
#    any test failed or a result is missing. Bounded by OUTSOCK_LAB_TIMEOUT seconds (480).
#
# Cache: /var/cache/outsock/lab (lab kernel + initramfs, from apt-get download of
# linux-image-<version>-amd64 and busybox-static), /var/cache/outsock/image (guest image).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
lab_cache=${OUTSOCK_LAB_CACHE:-/var/cache/outsock/lab}
timeout_s=${OUTSOCK_LAB_TIMEOUT:-480}
log() { echo "vmm-lab: $*" >&2; }
die() { echo "vmm-lab: $*" >&2; echo "vmm-lab: 0 passed, 1 failed"; exit 1; }
start=$(date +%s)

log "building outsock-vmm (release)"
(cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release -q -p outsock-vmm --bins) \
    || die "cargo build failed"
vmm="$target/release/outsock-vmm"
driver="$target/release/outsock-vmm-labtests"

log "building the guest image"
image=$("$repo/guest/image/build.sh" --quiet) || die "guest image build failed"
kernel=$(sed -n 's/^kernel=//p' <<<"$image")
initramfs=$(sed -n 's/^initramfs=//p' <<<"$image")
krel=$(sed 's/^linux-image-//' "$(dirname "$kernel")/kernel-package")

results=$(mktemp -d /tmp/vmm-lab.XXXXXX)
chmod 777 "$results"
args=(${OUTSOCK_LAB_ONLY:+--only "$OUTSOCK_LAB_ONLY"} --vmm "$vmm" --kernel "$kernel" --initramfs "$initramfs" --kernel-release "$krel"
      --results "$results/results.txt" --logs "$results")

hw_kvm() {
    [ -c /dev/kvm ] && { [ -d /sys/module/kvm_intel ] || [ -d /sys/module/kvm_amd ]; } \
        && grep -qw -e vmx -e svm /proc/cpuinfo && [ ! -d /sys/module/kvm_pvm ]
}

if hw_kvm; then
    log "hardware KVM found: running the tests directly"
    timeout "$timeout_s" "$driver" "${args[@]}" || true
else
    log "no hardware KVM here (PVM or none): using the lab VM"
    # Lab kernel + initramfs, cached by input hash.
    lab_kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
        | awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}')
    if [ -z "$lab_kpkg" ]; then
        apt-get update -qq >/dev/null 2>&1 || true
        lab_kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9].*-amd64$/ {print $2; exit}')
    fi
    [ -n "$lab_kpkg" ] || die "cannot resolve linux-image-amd64"
    lab_kver=${lab_kpkg#linux-image-}
    here="$repo/vmm/lab"
    hash=$( { sha256sum "$here/lab-init" "$here/lab-modules.list" "$0"; echo "$lab_kpkg"; } | sha256sum | cut -c1-16)
    lab="$lab_cache/$hash"
    if [ ! -s "$lab/vmlinuz" ] || [ ! -s "$lab/initrd.gz" ]; then
        log "building the lab image ($lab_kpkg)"
        mkdir -p "$lab_cache/debs"
        chmod 755 "$lab_cache" "$lab_cache/debs" 2>/dev/null || true
        (cd "$lab_cache/debs" && { ls "${lab_kpkg}"_*.deb >/dev/null 2>&1 || apt-get download -q "$lab_kpkg" >/dev/null; } \
            && { ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download -q busybox-static >/dev/null; }) \
            || die "apt-get download failed"
        work=$(mktemp -d)
        dpkg-deb -x "$(ls "$lab_cache/debs/${lab_kpkg}"_*.deb | head -n1)" "$work/k"
        dpkg-deb -x "$(ls "$lab_cache/debs"/busybox-static_*.deb | head -n1)" "$work/bb"
        r="$work/root"
        mkdir -p "$r/bin" "$r/dev" "$r/etc" "$r/lib/modules"
        cp "$work/bb/bin/busybox" "$r/bin/busybox"
        ln -s busybox "$r/bin/sh"
        mknod -m 600 "$r/dev/console" c 5 1
        install -m 755 "$here/lab-init" "$r/init"
        grep -v -e '^#' -e '^$' "$here/lab-modules.list" > "$r/etc/lab-modules"
        while read -r m; do
            mkdir -p "$r/lib/modules/$(dirname "$m")"
            cp "$work/k/lib/modules/$lab_kver/$m" "$r/lib/modules/$m" || die "module $m missing"
        done < "$r/etc/lab-modules"
        mkdir -p "$lab.tmp"
        cp "$work/k/boot/vmlinuz-$lab_kver" "$lab.tmp/vmlinuz"
        (cd "$r" && find . | cpio -o -H newc --quiet) | gzip -1 > "$lab.tmp/initrd.gz"
        rm -rf "$lab" "$work"
        mv "$lab.tmp" "$lab"
    fi
    # Debug aid: OUTSOCK_LAB_SCRIPT=<file> runs that shell script in the lab instead of the
    # driver (it sees the results folder as /labout).
    if [ -n "${OUTSOCK_LAB_SCRIPT:-}" ]; then
        cp "$OUTSOCK_LAB_SCRIPT" "$results/lab-script.sh"
        lab_cmd="sh /labout/lab-script.sh"
    else
        lab_cmd="$driver ${args[*]//$results//labout}"
    fi
    left=$(( timeout_s - ($(date +%s) - start) ))
    [ "$left" -gt 30 ] || die "no time left for the lab boot"
    log "booting the lab VM (QEMU TCG, -cpu max, no network; at most ${left}s)"
    set +e
    timeout --kill-after=10 "$left" qemu-system-x86_64 -M q35 -cpu max -smp 2 -m 2048 \
        -accel tcg,thread=multi -nographic -no-reboot -nic none \
        -kernel "$lab/vmlinuz" -initrd "$lab/initrd.gz" \
        -append "console=ttyS0 panic=-1 quiet -- $lab_cmd" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$results,mount_tag=out,security_model=none,multidevs=remap" \
        </dev/null
    qrc=$?
    set -e
    [ "$qrc" = 0 ] || log "QEMU ended with status $qrc (124 = timed out)"
fi

log "guest console logs: $results"
[ -s "$results/results.txt" ] || die "no results came back from the test driver"
pass=$(grep -c '^PASS ' "$results/results.txt" || true)
fail=$(grep -c '^FAIL ' "$results/results.txt" || true)
expected=$(sed -n 's/^EXPECTED //p' "$results/results.txt")
if [ -n "$expected" ] && [ $((pass + fail)) -lt "$expected" ]; then
    log "only $((pass + fail)) of $expected test results came back"
    fail=$((expected - pass))
fi
grep -E '^(PASS|FAIL|INFO) ' "$results/results.txt" | sed 's/^/vmm-lab: /'
log "total time $(( $(date +%s) - start ))s"
echo "vmm-lab: $pass passed, $fail failed"
[ "$fail" = 0 ] && [ "$pass" -gt 0 ]

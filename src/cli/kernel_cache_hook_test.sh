#!/usr/bin/env bash
# The kernel installers' hook (packaging/kernel/passvm-kernel-cache.in): each installer's calling
# convention reaches `passvm cache add --shared IMAGE`, a removal does nothing, and no problem fails the
# kernel's installation (exit status 0, a line on stderr, nothing on stdout, which may be debconf's). passvm
# is a stand-in here that records its arguments: the real one would write /var/cache/passvm, which the lab
# does (lab/scenarios/passvm-boot.sh, hook.*).
#   kernel_cache_hook_test.sh HOOK
set -uo pipefail
hook=$1
failed=0
dir=$(mktemp -d /tmp/passvm-hook-test.XXXXXX)
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*"; failed=1; }

cat >"$dir/passvm" <<'FAKE'
#!/bin/sh
echo "$*" >>"${0%/*}/calls"
[ -n "${FAKE_FAIL:-}" ] && { echo "$4: not a bzImage"; exit 1; }
echo "$4: /var/cache/passvm/kernel-x.unpacked (30 MiB, 1.0 s)"
FAKE
chmod +x "$dir/passvm"
: >"$dir/vmlinuz-9.9.9-test"

# run NAME EXPECTED_STATUS EXPECTED_CALL ARGS...: the hook's status, its stdout empty, and the call passvm got.
run() {
    local name=$1 want_status=$2 want_call=$3 status
    shift 3
    rm -f "$dir/calls"
    PASSVM=$dir/passvm "$hook" "$@" >"$dir/out" 2>"$dir/err"
    status=$?
    local call
    call=$(cat "$dir/calls" 2>/dev/null)
    if [[ $status != "$want_status" ]]; then fail "$name: exit $status, want $want_status ($(cat "$dir/err"))"; return; fi
    if [[ -s $dir/out ]]; then fail "$name: wrote to stdout: $(cat "$dir/out")"; return; fi
    if [[ $call != "$want_call" ]]; then fail "$name: passvm called with '$call', want '$want_call'"; return; fi
    echo "ok: $name: $(head -n 1 "$dir/err")"
}

img=$dir/vmlinuz-9.9.9-test
run "Debian postinst.d, version and image" 0 "cache add --shared $img" 9.9.9-test "$img"
grep -q "kernel-x.unpacked" "$dir/err" || fail "passvm's line did not reach stderr: $(cat "$dir/err")"
run "kernel-install add" 0 "cache add --shared $img" add 9.9.9-test /boot/efi/entry "$img" /boot/initrd.img
run "kernel-install remove" 0 "" remove 9.9.9-test /boot/efi/entry
run "no such image" 0 "" 9.9.9-missing "$dir/vmlinuz-9.9.9-missing"
grep -q "no kernel image $dir/vmlinuz-9.9.9-missing" "$dir/err" || fail "missing image not named: $(cat "$dir/err")"
run "version alone: /boot/vmlinuz-VERSION" 0 "" 0.0.0-passvm-none
grep -q "/boot/vmlinuz-0.0.0-passvm-none" "$dir/err" || fail "default image path not named: $(cat "$dir/err")"
FAKE_FAIL=1 run "passvm cannot unpack it" 0 "cache add --shared $img" 9.9.9-test "$img"
grep -q "stays out of passvm's kernel cache.*not a bzImage" "$dir/err" || fail "failure not reported: $(cat "$dir/err")"
run "no arguments" 2 ""

# --installed: the kernels already there when passvm is installed, newest first, four at most (what the
# cache keeps), versioned images only (vmlinuz and vmlinuz.old are links to them).
boot=$dir/boot
mkdir "$boot"
for i in 1 2 3 4 5; do
    : >"$boot/vmlinuz-6.$i.0-test"
    touch -d "2026-01-0$i 00:00" "$boot/vmlinuz-6.$i.0-test"
done
ln -s vmlinuz-6.5.0-test "$boot/vmlinuz"
ln -s vmlinuz-6.4.0-test "$boot/vmlinuz-6.9.0-link"
want=$(printf 'cache add --shared %s\n' "$boot/vmlinuz-6.5.0-test" "$boot/vmlinuz-6.4.0-test" \
    "$boot/vmlinuz-6.3.0-test" "$boot/vmlinuz-6.2.0-test")
run "--installed: the newest four" 0 "$want" --installed "$boot"
[[ $(grep -c "kernel-x.unpacked" "$dir/err") == 4 ]] || fail "--installed: not one line per kernel: $(cat "$dir/err")"
FAKE_FAIL=1 run "--installed: one that cannot be unpacked" 0 "$want" --installed "$boot"
run "--installed: no kernels" 0 "" --installed "$dir/none"
grep -q "no kernel images $dir/none/vmlinuz-\*" "$dir/err" || fail "--installed, none: not said: $(cat "$dir/err")"
# passvm uninstalled, its hook left in /etc: nothing to do, nothing said.
if out=$(PASSVM=$dir/none "$hook" 9.9.9-test "$img" 2>&1) && [[ -z $out ]]; then
    echo "ok: no passvm: silent, exit 0"
else
    fail "no passvm: exit $?, said '$out'"
fi
exit $failed

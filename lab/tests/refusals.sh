#!/usr/bin/env bash
# lab/run, bench/run and lab/l0-qemu/build refuse bad input before they touch anything: exit status
# 2 (1 for the build script) and a message naming the problem and the way out. No L1 boots here, so
# this runs with the unit tests.
set -uo pipefail
LAB=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(dirname "$LAB")
failed=0
cache=$(mktemp -d)
trap 'rm -rf "$cache"' EXIT

# expect STATUS PATTERN COMMAND...: COMMAND exits with STATUS and its stderr matches PATTERN.
expect() {
    local want=$1 pattern=$2; shift 2
    local err status
    err=$(PASSVM_LAB_CACHE=$cache "$@" 2>&1 >/dev/null); status=$?
    if [[ $status != "$want" ]] || ! grep -qE -- "$pattern" <<<"$err"; then
        echo "FAIL: $* exited $status (want $want), said: ${err:0:400} (want /$pattern/)"
        failed=1
    else
        echo "ok: $* -> $status: ${err:0:160}"
    fi
}

expect 2 "scenario name 'no/such' must be" "$LAB/run" no/such
expect 2 "--l0-qemu /nonexistent/qemu: not an executable.*lab/l0-qemu/build" \
    "$LAB/run" --l0-qemu /nonexistent/qemu qemu-reference
expect 2 "--env '1X=y': give NAME=VALUE" "$LAB/run" --env 1X=y qemu-reference
expect 2 "--l1-cpus 0: give 1 or more" "$LAB/run" --l1-cpus 0 qemu-reference
expect 2 "--mem-mb is for --large: add --large" "$ROOT/bench/run" --mem-mb 1024
expect 2 "--l1-cpus 0: give 1 or more" "$ROOT/bench/run" --l1-cpus 0
expect 1 "no arguments expected" "$LAB/l0-qemu/build" --now
exit $failed

#!/usr/bin/env bash
# bench/run --summary pairs each run's QEMU and passvm boots in order (first with first), takes the median
# of every pair's ratio over all the runs given, and counts the pairs that meet the goal. Two made-up
# documents whose pairs give 0.2, 0.3, 0.4 and 0.5; no L1 boots here, so this runs with the unit tests.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
doc() {  # FILE QEMU1 PV1 QEMU2 PV2: VMM start to init of the cached boots' two pairs, in ms
    cat > "$1" <<JSON
{"checks": [{"check": "qemu-boot.vmm", "figures": {"vmm_start_to_l2_init_ms": $2}},
            {"check": "pv-boot.vmm", "figures": {"vmm_start_to_l2_init_ms": $3}},
            {"check": "qemu-boot2.vmm", "figures": {"vmm_start_to_l2_init_ms": $4}},
            {"check": "pv-boot2.vmm", "figures": {"vmm_start_to_l2_init_ms": $5}}]}
JSON
}
doc "$dir/a.json" 1000 200 2000 800   # 0.2, 0.4
doc "$dir/b.json" 1000 500 1000 300   # 0.5, 0.3
out=$("$ROOT/bench/run" --summary "$dir/a.json" "$dir/b.json")
status=$?
echo "$out"
line=$(grep -A1 -- "-- no device, later boots" <<<"$out" | tail -1)
failed=0
if [[ $status != 0 ]] || ! grep -qE '^VMM start to L2 init \(ms\) +0\.35 +0\.20-0\.50 +4 +<= 0\.33: 2 of 4$' <<<"$line"; then
    echo "FAIL: want median 0.35, range 0.20-0.50, 4 pairs, 2 within 0.33; got (status $status): $line"
    failed=1
fi
# The first boot has one pair per run and the goal of a half; sections no run measured are left out.
if grep -q -- "-- no device, first boot" <<<"$out" && grep -A1 -- "-- no device, first boot" <<<"$out" | grep -q "VMM start"; then
    echo "FAIL: a section without figures printed a ratio"
    failed=1
fi
err=$("$ROOT/bench/run" --summary "$dir/missing.json" 2>&1 >/dev/null); status=$?
if [[ $status != 2 ]] || ! grep -q "no results in $dir/missing.json.*give the --json document" <<<"$err"; then
    echo "FAIL: a missing document: exit $status (want 2), said: $err"
    failed=1
fi
exit $failed

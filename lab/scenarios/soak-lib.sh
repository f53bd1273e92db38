# The passthrough soak (soak-passthru, soak-passthru-short): not a scenario itself.
#
# Boots L2 again and again, passvm and QEMU in turn, each time with the NVMe (the whole namespace
# written and read back in 1 MiB requests, verified), the e1000e (ping) and edu (a DMA round trip)
# passed through, and counts for each VMM what must never happen to a guest: oopses or panics,
# DMA faults (L1's DMAR lines; lab/run counts L0 QEMU's own VT-d messages apart), and VMMs that did
# not exit by themselves. passvm meets the e1000e exactly as the previous guest left it
# (run_l2 --devices-as-left): QEMU 7.2's e1000e keeps its rings across resets, so this proves
# passvm's own hand-over defence (src/passthru/handover.h) rather than the lab's. QEMU gets the
# lab's quiesced device, as a VMM without that defence needs.
#
# soak_passthru ROUNDS: ROUNDS boots per VMM; results soak.passvm and soak.qemu.

source "$LAB_DIR/scenarios/passvm-lib.sh"

SOAK_DEVICES="0000:00:03.0 0000:00:04.0 0000:00:06.0"
SOAK_OOPS='Oops|BUG:|Kernel panic|general protection|bad pmd|segfault|Corrupted|wbt_done|timeout, |I/O error'

# soak_tally VMM RUN DMAR_BEFORE: adds one run's outcome to the VMM's counters.
declare -A SOAK
soak_tally() {
    local vmm=$1 run=$2 before=$3 console="$LAB_OUT/$2.console" summary="$LAB_OUT/$2.summary.json"
    local pass exited oops faults outcome
    outcome=$(/usr/bin/python3 -c '
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    print(int(bool(s["pass"])), int(bool(s["vmm"].get("exited_by_itself"))))
except (OSError, ValueError, KeyError):
    print(0, 0)' "$summary")
    pass=${outcome% *} exited=${outcome#* }
    oops=$(grep -cE "$SOAK_OOPS" "$console" 2>/dev/null)
    faults=$(( $(dmesg | grep -c 'DMAR:.*fault') - before ))
    SOAK[$vmm.boots]=$(( ${SOAK[$vmm.boots]:-0} + 1 ))
    SOAK[$vmm.failed]=$(( ${SOAK[$vmm.failed]:-0} + (pass ? 0 : 1) ))
    SOAK[$vmm.oopses]=$(( ${SOAK[$vmm.oopses]:-0} + oops ))
    SOAK[$vmm.dma_faults]=$(( ${SOAK[$vmm.dma_faults]:-0} + faults ))
    SOAK[$vmm.not_exited]=$(( ${SOAK[$vmm.not_exited]:-0} + (exited ? 0 : 1) ))
    if (( !pass || oops || faults || !exited )); then
        SOAK[$vmm.runs]+="$run(pass=$pass oops=$oops dma_faults=$faults exited=$exited: $(grep -m1 -E "$SOAK_OOPS" "$console" | cut -c1-160)) "
        dmesg | grep 'DMAR:.*fault' | tail -n "$faults" | sed "s/^/[$run] L1 /"
    fi
}

soak_result() {  # soak_result VMM STRICT
    local vmm=$1 verdict=pass
    local b=${SOAK[$vmm.boots]:-0} f=${SOAK[$vmm.failed]:-0} o=${SOAK[$vmm.oopses]:-0}
    local d=${SOAK[$vmm.dma_faults]:-0} n=${SOAK[$vmm.not_exited]:-0}
    if (( b == 0 || f > 0 )); then verdict=fail; fi
    if [[ $2 == strict ]] && (( o + d + n > 0 )); then verdict=fail; fi
    result "soak.$vmm" $verdict detail="${SOAK[$vmm.runs]}" boots=$b failed=$f oopses=$o dma_faults=$d not_exited=$n
}

soak_passthru() {
    local rounds=$1 i before
    pv_need_binary soak.passvm
    for bdf in $SOAK_DEVICES; do
        bind_vfio $bdf || { result soak.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
    done
    local append
    append="$(l2_append nvmebig,ping,edu,irqs lab.mem_mb=512 lab.expect_pci=1b36:0010,8086:10d3,1234:11e8)"
    for i in $(seq 1 "$rounds"); do
        before=$(dmesg | grep -c 'DMAR:.*fault')
        run_l2 "soakq$i" --timeout 300 -- \
            qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
            -nodefaults -nographic -no-reboot -serial stdio -monitor none \
            -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$append" \
            -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0 -device vfio-pci,host=0000:00:06.0
        soak_tally qemu "soakq$i" "$before"
        before=$(dmesg | grep -c 'DMAR:.*fault')
        run_l2 "soakpv$i" --timeout 300 --grace 5 --devices-as-left -- \
            "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 \
            -s 6,passthru,0000:00:06.0 -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
            --append "$append" soak
        soak_tally passvm "soakpv$i" "$before"
    done
    soak_result passvm strict
    soak_result qemu lenient
}

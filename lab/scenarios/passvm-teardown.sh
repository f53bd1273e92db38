# Teardown and refusal: a VMM stopped by a signal must give the devices back in a state
# the next VM can use, and a VMM refused a device must leave nothing half-configured.
# - bad binding: passvm asked for 00:03.0 (on vfio-pci) plus a device on no driver
#   (00:07.0) or on a host driver (00:05.0, L1's own NIC) exits 1 with one line naming
#   `passvm reserve`, and 00:03.0 / 00:05.0 stay as they were.
# - SIGTERM once L2 has finished its nvme check (QEMU too, for the timing), SIGINT while
#   L2's nvme driver brings the controller up: passvm exits with status 5 promptly, says why,
#   and the devices stay on vfio-pci.
# - reuse: a new passvm with the same devices boots and passes nvme (MSI-X) and ping;
#   its counters around the transfer show no ordinary BAR0 trap.
# - hand-over from D3hot: that L2 then leaves the e1000e with its driver unbound (ring
#   addresses still programmed: QEMU 7.2's e1000e resets none) and in D3hot (d3left). Once
#   passvm has exited, L1 reads the NIC's registers: receive and transmit off, ring registers
#   zero, because passvm woke the NIC to clear them before giving it back (pvreuse.handover).
# lab-expect: bad.nodriver bad.hostdriver qterm.signal pvterm.signal pvint.signal pvreuse.vmm pvreuse.nvme pvreuse.ping pvreuse.irqs pvreuse.d3left pvreuse.mode pvreuse.traps pvreuse.handover
# lab-timeout: 1200

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pvterm.signal
for bdf in 0000:00:03.0 0000:00:04.0; do
    bind_vfio $bdf || { result pvterm.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
PV=("$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 -l com1,stdio)
BOOT=(--kernel "$L2_KERNEL" --initrd "$L2_INITRD")
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
l1_nic() { local n; n=$(ls /sys/bus/pci/devices/0000:00:05.0/net 2>/dev/null | head -n 1); cat "/sys/class/net/$n/operstate" 2>/dev/null; }

# bad_run CHECK BDF: passvm with 00:03.0 and BDF (not on vfio-pci) must refuse cleanly.
bad_run() {
    local check=$1 bdf=$2 out=$LAB_OUT/$1.err drv_before t0 rc ms lines
    drv_before=$(bdf_driver "$bdf")
    t0=$(now_ms)
    timeout 60 "$PASSVM" -c 1 -m 256M -s 0,hostbridge -s 3,passthru,0000:00:03.0 -s 5,passthru,"$bdf" \
        -l com1,stdio "${BOOT[@]}" --append "console=ttyS0" </dev/null >"$out" 2>&1
    rc=$?
    ms=$(( $(now_ms) - t0 ))
    # Lines other than the reset reports of 00:03.0 (opened, reset and closed again) are errors.
    lines=$(grep -v -E '^passvm: [0-9a-f:.]+ (reset \(|has no function reset)' "$out" | grep -c .)
    local msg; msg=$(grep -v -E '^passvm: [0-9a-f:.]+ (reset \(|has no function reset)' "$out" | head -c 400)
    local fig=(rc="$rc" ms="$ms" stderr_lines="$lines" driver="$drv_before" message="$msg")
    if [[ $rc != 1 ]]; then result "$check" fail detail="passvm exited $rc, expected 1" "${fig[@]}"
    elif [[ $lines != 1 ]] || ! tail -n 1 "$out" | grep -q "passvm reserve $bdf"; then
        result "$check" fail detail="expected one error line, the last, naming 'passvm reserve $bdf'" "${fig[@]}"
    elif [[ $(bdf_driver 0000:00:03.0) != vfio-pci || $(bdf_driver "$bdf") != "$drv_before" ]]; then
        result "$check" fail detail="drivers changed: 00:03.0 $(bdf_driver 0000:00:03.0), $bdf $(bdf_driver "$bdf")" "${fig[@]}"
    elif [[ -n $(ls /proc/*/fd -l 2>/dev/null | grep -m1 '/dev/vfio/[0-9]') ]]; then
        result "$check" fail detail="a process still holds a VFIO group after passvm exited" "${fig[@]}"
    else result "$check" pass "${fig[@]}"; fi
}
bad_run bad.nodriver 0000:00:07.0
nic_before=$(l1_nic)
bad_run bad.hostdriver 0000:00:05.0
[[ $(l1_nic) == "$nic_before" ]] || result bad.l1nic fail detail="L1's NIC went from '$nic_before' to '$(l1_nic)'"

# signal_run NAME SIGNAL PATTERN DELAY_S WANT_RC CMD...: boots L2 with CMD, waits for PATTERN on its
# console (then DELAY_S more), sends SIGNAL and times the exit; reports NAME.signal. WANT_RC empty: any status.
signal_run() {
    local check=$1.signal sig=$2 pattern=$3 delay=$4 want=$5 con=$LAB_OUT/$1.console pid t0 i rc ms why
    shift 5
    # A background job of a script starts with SIGINT ignored: restore the default before exec.
    /usr/bin/python3 -c 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
        "$@" </dev/null >"$con" 2>&1 &
    pid=$!
    for ((i = 0; i < 2400; i++)); do
        grep -q "$pattern" "$con" && break
        kill -0 $pid 2>/dev/null || break
        sleep 0.2
    done
    if ! grep -q "$pattern" "$con"; then
        kill -KILL $pid 2>/dev/null; wait $pid 2>/dev/null
        result "$check" fail detail="never saw '$pattern' on the console: $(tail -n 5 "$con" | tr '\n' ' ' | tail -c 600)"
        return 1
    fi
    sleep "$delay"
    t0=$(now_ms)
    kill -s "$sig" $pid
    for ((i = 0; i < 300; i++)); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    if kill -0 $pid 2>/dev/null; then
        kill -KILL $pid; wait $pid 2>/dev/null
        result "$check" fail detail="still running 30 s after SIG$sig" signal="$sig"
        return 1
    fi
    wait $pid; rc=$?
    ms=$(( $(now_ms) - t0 ))
    why=$(grep -E 'stopped by|terminating on signal' "$con" | tail -n 1)
    local drivers="$(bdf_driver 0000:00:03.0),$(bdf_driver 0000:00:04.0)"
    local nvme=$(grep -o '"check":"nvme","pass":[a-z]*' "$con" | head -n 1)
    local fig=(signal="$sig" exit_code="$rc" stop_ms="$ms" said="$why" drivers="$drivers" nvme="${nvme##*:}")
    if [[ -n $want && $rc != "$want" ]]; then result "$check" fail detail="exit status $rc after SIG$sig, expected $want" "${fig[@]}"
    elif [[ -n $want && -z $why ]]; then result "$check" fail detail="no 'stopped by' line saying why it exited" "${fig[@]}"
    elif [[ $drivers != vfio-pci,vfio-pci ]]; then result "$check" fail detail="devices left their vfio-pci binding: $drivers" "${fig[@]}"
    elif ((ms > 10000)); then result "$check" fail detail="took $ms ms to exit after SIG$sig" "${fig[@]}"
    else result "$check" pass "${fig[@]}"; fi
}

HOLD="$(l2_append nvme,hold)"
signal_run qterm TERM '"check":"hold"' 0 "" \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$HOLD" \
    -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0
# -v: each stop step with its time, in the console kept with the logs.
signal_run pvterm TERM '"check":"hold"' 0 5 "${PV[@]}" -v "${BOOT[@]}" --append "$HOLD" labvm
# SIGINT while L2's nvme driver is bringing the controller up (admin and I/O queues: DMA in flight).
signal_run pvint INT 'nvme nvme0: ' 0 5 "${PV[@]}" -v "${BOOT[@]}" --append "$HOLD" labvm

run_l2 pvreuse --timeout 480 -- "${PV_TAP[@]}" nvme -- \
    "${PV[@]}" --stats "${BOOT[@]}" --append "$(l2_append nvme,ping,irqs,d3left lab.d3left=8086:10d3)" labvm
rc=$?
pv_irq_mode pvreuse.mode pvreuse nvme msix
pv_trap_result pvreuse.traps "$LAB_OUT/pvreuse.console" 0000:00:03.0
# The NIC as passvm gave it back (run_l2's hand-over report, reading only).
left=$(cd "$LAB_DIR/scenarios" && python3 -c 'import run_l2; print("\n".join(run_l2.e1000e_handover(False)))' | grep '^0000:00:04.0')
said=$(grep -E '0000:00:04.0: its DMA engines' "$LAB_OUT/pvreuse.console" | head -c 400)
if ! grep -q '"check":"d3left","pass":true' "$LAB_OUT/pvreuse.console"; then
    result pvreuse.handover fail detail="L2 did not leave the NIC in D3hot (pvreuse.d3left), so the hand-over from it went untested" found="$left"
elif [[ $left != *"RCTL 0x0 TCTL 0x0 rx ring 0x0 len 0 head 0 tail 0"* ]]; then
    result pvreuse.handover fail detail="the e1000e left in D3hot kept its registers past passvm's exit: $left${said:+; passvm said: $said}" found="$left"
else result pvreuse.handover pass found="$left"; fi
exit $rc

# A guest that does not let go: L2 boots without its ACPI hotplug driver (acpiphp.disable=1) and
# with the NVMe given on passvm's command line (cold-plugged, so its driver still runs it). The API's
# vm.remove-device must answer 202 (asked, not yet ejected) within Kata's 5 s, and the client's
# remove-device then fail after its eject wait with a message saying so, and the VM keep
# running with the device. Then vm.reboot: the machine is torn down (the device reset and released) and
# built again from its config, and L2 boots a second time and uses the NVMe again. A second passvm
# asking for the NVMe meanwhile is refused (another process holds it) and keeps running. A removal
# still pending when the VM shuts down is completed by the teardown: the config drops it. vmm.shutdown
# then releases the device with the VM, and L1 uses it again. Last, a guest that panics during every boot
# with panic=-1 (no root) resets again and again: passvm reboots it three times at once, then holds each
# reboot back for a doubling wait, saying so, and vm.shutdown keeps it down.
# lab-expect: pve.vmm pve.nvme pve.hold ej.accepted ej.refused ej.still_running ej.reboot ej.in_use ej.teardown ej.exit ej.host ej.reboot_loop
# lab-timeout: 600

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary ej.refused
NVME=0000:00:03.0 SOCK=/tmp/pve-api.sock
bind_vfio $NVME || { result ej.setup fail detail="cannot bind $NVME to vfio-pci"; exit 1; }
pvr() { timeout 120 "$PASSVM" remote --api-socket "$SOCK" "$@"; }

CONSOLE=$LAB_OUT/pve.console
rm -f "$CONSOLE"
run_l2 pve --timeout 360 -- \
    "$PASSVM" --api-socket "$SOCK" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,$NVME -l com1,stdio \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$(l2_append nvme,hold acpiphp.disable=1)" labvm &
run=$!
for _ in $(seq 600); do grep -q 'L2RESULT {"check":"hold"' "$CONSOLE" 2>/dev/null && break; kill -0 $run || break; sleep 0.5; done

# The raw request, as Kata's client sends it: the status and how long the answer took.
answer=$(timeout 30 /usr/bin/python3 - "$SOCK" <<'PY' 2>&1
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
body = b'{"id": "_vfio0"}'
t = time.monotonic()
s.sendall(b"PUT /api/v1/vm.remove-device HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(body) + body)
line = s.recv(4096).decode(errors="replace").split("\r\n")[0]
print(line.split(" ")[1] if " " in line else line, round(time.monotonic() - t, 1))
PY
)
read -r status seconds <<<"$answer"
if [[ $status == 202 ]] && awk -v s="$seconds" 'BEGIN { exit !(s < 5) }'; then result ej.accepted pass seconds=$seconds
else result ej.accepted fail detail="vm.remove-device answered '$answer' (status, seconds); expected 202 in under 5 s for a guest that does not eject"; fi

t0=$(date +%s)
out=$(pvr remove-device _vfio0 2>&1); rc=$?
took=$(( $(date +%s) - t0 ))
if [[ $rc == 1 && $out == *"did not eject"* && $took -ge 25 ]]; then result ej.refused pass seconds=$took message="$out"
else result ej.refused fail seconds=$took detail="remove-device exited $rc after $took s, expected 1 after passvm's eject wait with 'did not eject': $out"; fi

info=$(pvr --json info 2>&1)
if /usr/bin/python3 -c 'import json, sys
d = json.loads(sys.argv[1])
assert d["state"] == "Running", d["state"]
assert any(v.get("pci_bdf") == "0000:00:03.0" for v in d.get("device_tree", {}).values()), d.get("device_tree")' "$info" 2>/tmp/ej.err
then result ej.still_running pass
else result ej.still_running fail detail="after the refused removal: $(tail -n 2 /tmp/ej.err | tr '\n' ' ') info: ${info:0:300}"; fi

count() { grep -c "L2RESULT {\"check\":\"$1\",\"pass\":true" "$CONSOLE" 2>/dev/null; }
out=$(pvr reboot 2>&1); rc=$?
for _ in $(seq 360); do [[ $(count hold) -ge 2 ]] && break; kill -0 $run || break; sleep 0.5; done
state=$(pvr --json info 2>/dev/null | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin).get("state"))' 2>/dev/null)
if [[ $rc == 0 && $(count boot) -ge 2 && $(count nvme) -ge 2 && $state == Running ]]; then
    result ej.reboot pass boots=$(count boot) nvme_passes=$(count nvme)
else
    result ej.reboot fail detail="reboot exited $rc ($out); L2 boots $(count boot), nvme passes $(count nvme), state '$state': the second boot should run nvme and hold again"
fi

# A second VMM wants the NVMe the first one holds.
SOCK2=/tmp/pve-api2.sock
"$PASSVM" --api-socket "$SOCK2" -c 1 -m 256M --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append hold)" other </dev/null >"$LAB_OUT/other.console" 2>&1 &
other=$!
for _ in $(seq 100); do [[ -S $SOCK2 ]] && break; sleep 0.1; done
out=$(timeout 60 "$PASSVM" remote --api-socket "$SOCK2" add-device $NVME 2>&1); rc=$?
state=$(timeout 30 "$PASSVM" remote --api-socket "$SOCK2" --json info 2>/dev/null \
    | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin).get("state"))' 2>/dev/null)
timeout 30 "$PASSVM" remote --api-socket "$SOCK2" shutdown-vmm >/dev/null 2>&1
wait $other; other_rc=$?
if [[ $rc == 1 && $out == *"$NVME"* && $state == Running && $other_rc == 0 ]]; then result ej.in_use pass message="$out"
else result ej.in_use fail detail="second passvm: add-device of the held NVMe exited $rc ($out), then state '$state', exit $other_rc; expected 1 with a message naming the device, Running, 0"; fi

# A removal still pending when the machine is torn down is done by the teardown: the VM's config no
# longer has the device, so a later boot would not bring it back.
asked=$(pvr remove-device --wait 0 _vfio0 2>&1); rc=$?
out=$(pvr shutdown 2>&1); down_rc=$?
left=$(pvr --json info 2>&1 | /usr/bin/python3 -c 'import json, sys
d = json.load(sys.stdin)
print(d["state"], " ".join(x.get("id", "?") for x in d["config"].get("devices", [])) or "-")' 2>&1)
if [[ $rc == 0 && $asked == *"has been asked"* && $down_rc == 0 && $left == "Shutdown -" ]]; then result ej.teardown pass
else result ej.teardown fail detail="remove-device --wait 0 exited $rc ($asked), shutdown $down_rc ($out); state and devices after: '$left', expected 'Shutdown -'"; fi

pvr shutdown-vmm >/dev/null 2>&1
wait $run
code=$(/usr/bin/python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["vmm"].get("exit_code", "?"))' "$LAB_OUT/pve.summary.json" 2>/dev/null)
[[ $code == 0 ]] && result ej.exit pass || result ej.exit fail detail="passvm exit status '$code' after shutdown-vmm, expected 0"

unbind_vfio $NVME
sleep 2
ns=$(basename "$(ls -d /sys/bus/pci/devices/$NVME/nvme/nvme*/nvme*n1 2>/dev/null | head -n 1)")
if [[ -n $ns ]] && dd if=/dev/$ns of=/dev/null bs=1M count=4 iflag=direct 2>/dev/null; then result ej.host pass namespace=$ns
else result ej.host fail detail="L1's nvme driver could not read $NVME after passvm released it (driver: $(bdf_driver $NVME))"; fi

# The reboot loop: no root and no init, panic=-1, reboot=k (a reset passvm sees as one, not a triple fault).
SOCK3=/tmp/pve-api3.sock LOOP=$LAB_OUT/loop.console
rm -f "$SOCK3"
"$PASSVM" --api-socket "$SOCK3" -c 1 -m 256M -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "console=ttyS0 panic=-1 nokaslr pci=noearly reboot=k rdinit=/nonexistent" loopvm </dev/null >"$LOOP" 2>&1 &
looper=$!
pvr3() { timeout 60 "$PASSVM" remote --api-socket "$SOCK3" "$@"; }
boots() { grep -c 'Linux version' "$LOOP" 2>/dev/null; }
# Five resets: three reboots at once, then 1 s and 2 s of waiting.
for _ in $(seq 480); do grep -q 'rebooting in 2 s' "$LOOP" && break; kill -0 $looper || break; sleep 0.5; done
at_once=$(grep -c 'loopvm: rebooting$' "$LOOP") held=$(grep -c 'times in a row' "$LOOP")
down_out=$(pvr3 shutdown 2>&1); down_rc=$?
state=$(pvr3 --json info 2>/dev/null | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin).get("state"))' 2>/dev/null)
before=$(boots)
sleep 6  # longer than the wait of the reboot held back when the shutdown came
after=$(boots)
pvr3 shutdown-vmm >/dev/null 2>&1
for _ in $(seq 100); do kill -0 $looper 2>/dev/null || break; sleep 0.2; done
wait $looper; loop_rc=$?
fig=(boots="$after" at_once="$at_once" held="$held" said="$(grep -m1 'rebooting in 2 s' "$LOOP" | head -c 200)")
if [[ $at_once == 3 && $held -ge 2 && $down_rc == 0 && $state == Shutdown && $before == "$after" && $loop_rc == 0 ]]; then
    result ej.reboot_loop pass "${fig[@]}"
else
    result ej.reboot_loop fail "${fig[@]}" detail="expected 3 reboots at once, then held-back ones said ('times in a row', 1 s then 2 s), shutdown exit 0 ($down_rc: ${down_out:0:120}), state Shutdown ('$state'), no boot after it ($before then $after), exit 0 ($loop_rc); last lines: $(tail -n 4 "$LOOP" | tr '\n' ' ' | head -c 400)"
fi
rm -f "$SOCK3"

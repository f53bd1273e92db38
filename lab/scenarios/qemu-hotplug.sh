# Reference for passvm-api (not in the suite): the same hot-plug flow with QEMU as the VMM, driven through
# QMP, to prove the L2 checks (ticker, hotN) and the flow in hotplug-lib.sh. L2 boots with no device;
# QEMU is paused (stop) and resumed (cont) while L2 ticks; then the NVMe 00:03.0 is hot-added
# (device_add vfio-pci into a PCIe root port: q35's root bus takes no hot-plug), L2 writes and verifies
# 16 MiB, it is removed (device_del, ACPI eject), L1's nvme driver reads back what L2 wrote, and the
# NVMe goes back to vfio-pci for a second round; the same with the e1000e 00:04.0 and ping. About 4
# minutes on an idle machine.
# lab-expect: qmp.pause qmp.resume qmp.add1 qmp.remove1 qmp.host1 qmp.add2 qmp.remove2 qmp.add3 qmp.remove3 qmp.host3 qmp.add4 qmp.remove4 qmp.exit qmp.final
# lab-expect: qhp.vmm qhp.boot qhp.ticker qhp.hot1.add qhp.hot1.nvme qhp.hot1.gone qhp.hot1 qhp.hot2.add qhp.hot2.nvme qhp.hot2.gone qhp.hot2
# lab-expect: qhp.hot3.add qhp.hot3.ping qhp.hot3.gone qhp.hot3 qhp.hot4.add qhp.hot4.ping qhp.hot4.gone qhp.hot4
# lab-timeout: 700

source "$LAB_DIR/scenarios/hotplug-lib.sh"
HP_RUN=qhp HP_PREFIX=qmp
QMP=/tmp/qhp-qmp.sock

# qmp COMMAND [ARGUMENTS_JSON [DELETED_ID]]: one QMP command; with DELETED_ID, also waits (60 s) for
# QEMU's DEVICE_DELETED event of that device (the guest ejected it and QEMU let it go).
qmp() {
    /usr/bin/python3 - "$QMP" "$@" <<'PY'
import json, socket, sys, time
path, cmd = sys.argv[1], sys.argv[2]
args = json.loads(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else {}
deleted = sys.argv[4] if len(sys.argv) > 4 else None
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(path)
f = s.makefile("rw")
events = []
def next_message():
    line = f.readline()
    if not line:
        sys.exit("QMP connection closed")
    m = json.loads(line)
    if "event" in m:
        events.append(m)
    return m
def reply():
    while True:
        m = next_message()
        if "return" in m or "error" in m:
            return m
json.loads(f.readline())  # greeting
for c in ({"execute": "qmp_capabilities"}, {"execute": cmd, "arguments": args}):
    f.write(json.dumps(c) + "\n")
    f.flush()
    m = reply()
    if "error" in m:
        sys.exit(f"QMP {c['execute']}: {m['error'].get('desc')}")
deadline = time.monotonic() + 60
while deleted and not any(e["event"] == "DEVICE_DELETED" and e.get("data", {}).get("device") == deleted
                          for e in events):
    if time.monotonic() > deadline:
        sys.exit(f"no DEVICE_DELETED for {deleted} within 60 s")
    next_message()
print(json.dumps(m.get("return")))
PY
}
# QEMU puts a device added to root port rp1 at 01:00.0 (the port's secondary bus).
vmm_add() { qmp device_add "{\"driver\":\"vfio-pci\",\"host\":\"$1\",\"bus\":\"rp1\",\"id\":\"$2\"}" >/dev/null && echo 0000:01:00.0; }
vmm_remove() { qmp device_del "{\"id\":\"$1\"}" "$1" >/dev/null; }
vmm_pause() { qmp stop >/dev/null; }
vmm_resume() { qmp cont >/dev/null; }
vmm_stop() { qmp quit >/dev/null; }

for bdf in $HP_NVME $HP_NIC; do
    bind_vfio $bdf || { result qmp.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
rm -f "$QMP"
hp_start --timeout 600 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none -qmp "unix:$QMP,server=on,wait=off" \
    -device pcie-root-port,id=rp1,chassis=1,slot=1 \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$(hp_append)"

hp_pause_test && hp_cycle 1 $HP_NVME nvme host && hp_cycle 2 $HP_NVME nvme - \
    && hp_cycle 3 $HP_NIC ping host && hp_cycle 4 $HP_NIC ping -
# L2 powers off after its last check, and QEMU (-no-reboot) exits.
hp_wait '"check":"done"' 60
i=0; while hp_running && ((i++ < 150)); do sleep 0.2; done
hp_finish
if [[ $(hp_summary exited_by_itself) == true && $(hp_summary exit_code) == 0 ]]; then
    result qmp.exit pass exit_code=0
else
    result qmp.exit fail detail="QEMU exit status '$(hp_summary exit_code)', by itself: '$(hp_summary exited_by_itself)'"
fi
hp_final qmp.final
rm -f "$QMP"

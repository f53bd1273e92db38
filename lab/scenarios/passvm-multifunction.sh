# A multi-function device, as a GPU with its audio function is: L1's slot 00:0a holds two NVMe
# controllers (functions 0 and 1) in one IOMMU group (no ACS). Both functions go to one L2 slot
# (5.0 and 5.1), under QEMU and under passvm: L2 must list both in that slot (the multi-function
# bit set on function 0), bind nvme to both, and move 16 MiB through each.
# lab-expect: mf.group qmf.vmm qmf.lspci qmf.nvme qmf.nvme1 qmf.slot pvmf.vmm pvmf.lspci pvmf.nvme pvmf.nvme1 pvmf.irqs pvmf.slot mf.compare
# lab-timeout: 1020

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pvmf.vmm
F0=0000:00:0a.0 F1=0000:00:0a.1
g0=$(basename "$(readlink /sys/bus/pci/devices/$F0/iommu_group)")
g1=$(basename "$(readlink /sys/bus/pci/devices/$F1/iommu_group)")
if [[ -n $g0 && $g0 == "$g1" ]]; then result mf.group pass group=$g0
else result mf.group fail detail="00:0a.0 and 00:0a.1 are in IOMMU groups '$g0' and '$g1', not one"; fi
for bdf in $F0 $F1; do
    bind_vfio $bdf || { result pvmf.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
APPEND="$(l2_append lspci,nvme,nvme1,irqs lab.expect_pci=1b36:0010)"

# slot_result CHECK RUN: L2 saw an NVMe controller at 00:05.0 and one at 00:05.1, each bound to nvme.
slot_result() {
    /usr/bin/python3 - "$1" "$LAB_OUT/$2.summary.json" <<'PY'
import json, os, sys
name, path = sys.argv[1:3]
try:
    devices = json.load(open(path))["checks"]["lspci"]["devices"]
except (OSError, ValueError, KeyError):
    devices = None
want = {"0000:00:05.0": ("1b36:0010", "nvme"), "0000:00:05.1": ("1b36:0010", "nvme")}
bad = []
if devices is None:
    bad.append("no lspci result from L2")
else:
    for bdf, (ident, driver) in want.items():
        d = devices.get(bdf)
        if not d or d.get("id") != ident or d.get("driver") != driver:
            bad.append(f"{bdf}: expected {ident} bound to {driver}, L2 has {d}")
print("LABRESULT " + json.dumps({"scenario": os.environ.get("LAB_SCENARIO", "?"), "check": name, "pass": not bad,
      "figures": {"functions": sorted(b for b in (devices or {}) if b.startswith("0000:00:05."))},
      "detail": "; ".join(bad)}, separators=(",", ":")), flush=True)
PY
}

run_l2 qmf --timeout 480 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND" \
    -device vfio-pci,host=$F0,addr=05.0,multifunction=on -device vfio-pci,host=$F1,addr=05.1
slot_result qmf.slot qmf

run_l2 pvmf --timeout 480 -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 5:0,passthru,$F0 -s 5:1,passthru,$F1 \
    -l com1,stdio --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$APPEND" labvm
rc=$?
slot_result pvmf.slot pvmf
l2_compare mf.compare qmf pvmf
exit $rc

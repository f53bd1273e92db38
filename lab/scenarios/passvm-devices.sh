# Device features beyond a disk and a NIC, passvm next to QEMU in one L1 boot:
# - edu (00:06.0): DMA round trip RAM -> device -> RAM through the IOMMU (edu), then DMA
#   aimed outside L2's RAM (the 32-bit PCI hole, and 4 GiB above a canary page) must be
#   blocked (edublock): the canary stays intact, the device and the VMM keep working,
#   and L1 logs DMAR faults naming 00:06.0 (checked here, in L1's dmesg).
# - e1000e (00:04.0): STATUS/CTRL read through the I/O BAR window equal the MMIO BAR
#   (iobar: passvm forwards the I/O BAR through VFIO), config space sane (config), ping.
# - expansion ROMs (rom, passvm only): L2 reads the e1000e's ROM through sysfs and gets what L1
#   reads from the device; edu, which has none, gets one from a rom= file and L2 reads that file.
# lab-expect: qdev.vmm qdev.edu qdev.edublock qdev.iobar qdev.config qdev.ping qdev.irqs qdev.dmar pvdev.vmm pvdev.rom pvdev.edu pvdev.edublock pvdev.iobar pvdev.config pvdev.ping pvdev.irqs pvdev.d3hot pvdev.dmar pvdev.dmawait pvdev.ram pvdev.l1 devices.compare
# lab-timeout: 1020
# lab-dma-faults: deliberate

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pvdev.vmm
for bdf in 0000:00:04.0 0000:00:06.0; do
    bind_vfio $bdf || { result pvdev.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
APPEND="$(l2_append lspci,edu,edublock,iobar,config,ping,irqs lab.expect_pci=1234:11e8,8086:10d3)"

edu_faults() { dmesg | grep -c 'DMAR:.*device \[00:06.0\]'; }

# dmar_result CHECK BEFORE: passes when L1 logged DMAR faults for 00:06.0 since BEFORE.
dmar_result() {
    local now new lines
    now=$(edu_faults)
    new=$((now - $2))
    lines=$(dmesg | grep 'DMAR:.*device \[00:06.0\]' | tail -n 3 | tr '\n' ' ')
    if ((new > 0)); then result "$1" pass faults="$new" last="$lines"
    else result "$1" fail detail="no DMAR fault for 00:06.0 in L1's dmesg: DMA outside guest RAM was not seen by the IOMMU" faults=0; fi
}

before=$(edu_faults)
run_l2 qdev --timeout 480 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND" \
    -device vfio-pci,host=0000:00:04.0 -device vfio-pci,host=0000:00:06.0
dmar_result qdev.dmar "$before"

# ROMs: the e1000e's as L1 reads it (labcheck's own romsum, the code L2 runs for its rom check), and a
# 4 KiB image for edu: 55 AA, a PCI data structure saying one last image of 8 x 512 bytes, code type
# EFI (so no BIOS would run it), random bytes after.
LABCHECK=$(dirname "$L2_INITRD")/labcheck
E1000E_ROM=$("$LABCHECK" romsum 0000:00:04.0) || result pvdev.rom fail detail="L1 cannot read 00:04.0's ROM through sysfs"
EDU_ROM_FILE=$LAB_OUT/edu.rom
EDU_ROM=$(/usr/bin/python3 - "$EDU_ROM_FILE" <<'PY'
import os, struct, sys
img = bytearray(os.urandom(4096))
img[0:2] = b"\x55\xaa"
struct.pack_into("<H", img, 0x18, 0x1c)
img[0x1c:0x34] = b"PCIR" + struct.pack("<HHHHBBBBHHBBH", 0x1234, 0x11e8, 0, 0x18, 0, 0, 0, 0, 8, 0, 3, 0x80, 0)
open(sys.argv[1], "wb").write(img)
h = 0xcbf29ce484222325
for b in img:
    h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
print(f"{len(img)}/{h:016x}")
PY
)
before=$(edu_faults)
nic_before=$(dmesg | grep -c 'DMAR:.*device \[00:04.0\]')
# The guest starts while its RAM is mapped for DMA, and a bus master enable waits for the mapping
# (src/passthru/dma_ready.h). PASSVM_TEST_HOLD_DMA_MAP makes passvm map only once an enable waits: the
# e1000e and the edu device then master the bus after that wait, and their DMA (ping, edublock) and
# the absence of IOMMU faults (pvdev.dmar) say whether the wait held them.
# d3hot (passvm only): L2 reads the e1000e's BAR0 while the device is in D3hot. Debian's QEMU 7.2 stops the
# VM there ("kvm run failed Bad address": vfio-pci unmapped the BAR's pages under its memory slot).
PASSVM_TEST_HOLD_DMA_MAP=1 run_l2 pvdev --timeout 480 -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 4,passthru,0000:00:04.0 -s 6,passthru,0000:00:06.0,rom="$EDU_ROM_FILE" \
    -l com1,stdio --stats --kernel "$L2_KERNEL" --initrd "$L2_INITRD" \
    --append "$(l2_append rom,lspci,edu,edublock,iobar,config,ping,irqs,d3hot lab.expect_pci=1234:11e8,8086:10d3 lab.d3hot=8086:10d3 \
              lab.roms=8086:10d3=$E1000E_ROM,1234:11e8=$EDU_ROM)" labvm
rc=$?
dmar_result pvdev.dmar "$before"
waited=$(grep -oE 'bus master enable waited [0-9.]+ ms' "$LAB_OUT/pvdev.console" | head -n 1 | grep -oE '[0-9.]+')
nic_faults=$(( $(dmesg | grep -c 'DMAR:.*device \[00:04.0\]') - nic_before ))
if [[ -z $waited ]]; then
    result pvdev.dmawait fail detail="no device's --stats says its bus master enable waited for the DMA mapping"
elif ((nic_faults > 0)); then
    result pvdev.dmawait fail detail="the e1000e's DMA faulted in the IOMMU $nic_faults times: it reached guest RAM before it was mapped" \
        waited_ms="$waited"
else
    result pvdev.dmawait pass waited_ms="$waited" nic_faults=0
fi

# Guest RAM was all allocated and pinned, and --stats at exit reads it back from smaps (still pinned then).
ram=$(grep -oE 'guest RAM: [^[:cntrl:]]*' "$LAB_OUT/pvdev.console" | tail -n 1)
if [[ $ram == "guest RAM: 512 MiB resident"* ]]; then
    result pvdev.ram pass detail="$ram"
else
    result pvdev.ram fail detail="--stats at exit says '${ram:-nothing}' where all 512 MiB are pinned"
fi

# L1 must be unharmed: no oops, both devices still on vfio-pci, its own e1000e still up.
bad=$(dmesg | grep -E 'BUG:|Oops|general protection|Kernel panic' | head -n 2 | tr '\n' ' ')
drivers="$(bdf_driver 0000:00:04.0),$(bdf_driver 0000:00:06.0)"
l1_if=$(ls /sys/bus/pci/devices/0000:00:05.0/net 2>/dev/null | head -n 1)
l1_state=$(cat /sys/class/net/$l1_if/operstate 2>/dev/null)
if [[ -z $bad && $drivers == vfio-pci,vfio-pci && $l1_state == up ]]; then
    result pvdev.l1 pass drivers="$drivers" l1_link="$l1_state"
else
    result pvdev.l1 fail detail="L1 after the run: kernel errors '$bad', drivers $drivers, 00:05.0 link '$l1_state'" drivers="$drivers"
fi
l2_compare devices.compare qdev pvdev
exit $rc

# Benchmark: QEMU and passvm boot the same L2, first with no device (boot cost alone),
# then with the NVMe and the e1000e passed through (passthrough data path). bench/run
# prints the figures side by side. Not part of the test suite: figures are not asserted.
# lab-expect: qemu-boot.vmm pv-boot-first.vmm pv-boot.vmm pv-boot-guest-unpack.vmm pv-boot2.vmm qemu-boot2.vmm qemu-quiet.vmm pv-quiet.vmm pv-quiet2.vmm qemu-quiet2.vmm qemu-hvc.vmm pv-hvc.vmm pv-hvc2.vmm qemu-hvc2.vmm qemu-pt.vmm pv-pt.vmm pv-pt2.vmm qemu-pt2.vmm compare-boot compare-pt
# lab-timeout: 2000

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv-boot.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
QEMU=(qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 -nodefaults -nographic -no-reboot
      -serial stdio -monitor none -kernel "$L2_KERNEL" -initrd "$L2_INITRD")
PV=("$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats -v --kernel "$L2_KERNEL" --initrd "$L2_INITRD")
BOOT="$(l2_append cpus,mem lab.cpus=2 lab.mem_mb=512)"
# Every run finds L1's free memory written just before it, whatever ran before (lib.sh's run_l2, RUN_L2_WASH).
export RUN_L2_WASH=1
PT="$(l2_append nvme,nvmebig,nvmerand,ping,irqs lab.mem_mb=512)"

run_l2 qemu-boot --timeout 480 -- "${QEMU[@]}" -append "$BOOT"
# passvm keeps unpacked kernels in a cache (src/boot/kernel_cache.h): the first boot of a kernel unpacks
# it, later ones stream it from the cache. Start from an empty cache to measure both.
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-bench-cache.XXXXXX)
run_l2 pv-boot-first --timeout 480 -- "${PV[@]}" --append "$BOOT" bench
run_l2 pv-boot --timeout 480 -- "${PV[@]}" --append "$BOOT" bench
l2_compare compare-boot qemu-boot pv-boot
# The same with the bzImage unpacked by its own decompressor inside the guest, as QEMU does.
run_l2 pv-boot-guest-unpack --timeout 480 -- "${PV[@]}" --guest-decompress --append "$BOOT" bench
# A second pair for the cached boot, in the order QEMU, passvm ... passvm, QEMU: one pair's ratio moves
# with the machine's speed at the time.
run_l2 pv-boot2 --timeout 480 -- "${PV[@]}" --append "$BOOT" bench
run_l2 qemu-boot2 --timeout 480 -- "${QEMU[@]}" -append "$BOOT"
# A quiet console: every character the guest prints costs a UART status read, which is an exit to the
# VMM under both; with quiet, the boot's cost is the guest's own.
run_l2 qemu-quiet --timeout 480 -- "${QEMU[@]}" -append "$BOOT quiet"
run_l2 pv-quiet --timeout 480 -- "${PV[@]}" --append "$BOOT quiet" bench
run_l2 pv-quiet2 --timeout 480 -- "${PV[@]}" --append "$BOOT quiet" bench
run_l2 qemu-quiet2 --timeout 480 -- "${QEMU[@]}" -append "$BOOT quiet"
# The console on a virtio console (hvc0) under both: the kernel hands it whole lines, not a character per
# status read. QEMU's 8250 stays (unconnected), as passvm's COM1 does.
HVC="$(L2_CONSOLE=hvc0 l2_append cpus,mem lab.cpus=2 lab.mem_mb=512)"
QHVC=(qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 -nodefaults -nographic -no-reboot
      -serial null -monitor none -chardev stdio,id=hvc -device virtio-serial-pci -device virtconsole,chardev=hvc
      -kernel "$L2_KERNEL" -initrd "$L2_INITRD")
run_l2 qemu-hvc --timeout 480 -- "${QHVC[@]}" -append "$HVC"
run_l2 pv-hvc --timeout 480 -- "${PV[@]}" -l virtio-console,stdio --append "$HVC" bench
run_l2 pv-hvc2 --timeout 480 -- "${PV[@]}" -l virtio-console,stdio --append "$HVC" bench
run_l2 qemu-hvc2 --timeout 480 -- "${QHVC[@]}" -append "$HVC"

for bdf in 0000:00:03.0 0000:00:04.0; do
    bind_vfio $bdf || { result pt.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
# Two runs of each, in the order QEMU, passvm, passvm, QEMU, so that a drift of the machine's speed
# during the run weighs on both alike.
QPT=(-append "$PT" -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0)
PVPT=(-s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 --append "$PT" bench)
run_l2 qemu-pt --timeout 480 -- "${QEMU[@]}" "${QPT[@]}"
run_l2 pv-pt --timeout 480 -- "${PV[@]}" "${PVPT[@]}"
run_l2 pv-pt2 --timeout 480 -- "${PV[@]}" "${PVPT[@]}"
run_l2 qemu-pt2 --timeout 480 -- "${QEMU[@]}" "${QPT[@]}"
l2_compare compare-pt qemu-pt pv-pt
rm -rf "$PASSVM_CACHE_DIR"

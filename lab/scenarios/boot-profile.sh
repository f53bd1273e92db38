# Where boot time goes: QEMU and passvm boot the same L2 with initcall_debug, without and with
# the NVMe and the e1000e passed through; L2 prints its kernel log (printk times, one line per
# initcall) on the console after init, and passvm its step times (-v) and exit counts (--stats).
# Read the consoles in the kept logs (lab/run --keep-logs DIR boot-profile). Not in the suite.
# lab-expect: qemu.vmm pv-first.vmm pv.vmm qemu-pt.vmm pv-pt.vmm
# lab-timeout: 1500

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
QEMU=(qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 -nodefaults -nographic -no-reboot
      -serial stdio -monitor none -kernel "$L2_KERNEL" -initrd "$L2_INITRD")
PV=("$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats -v --kernel "$L2_KERNEL" --initrd "$L2_INITRD")
BOOT="$(l2_append cpus,dmesg initcall_debug ${PROFILE_APPEND:-})"

run_l2 qemu --timeout 480 -- "${QEMU[@]}" -append "$BOOT"
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-profile-cache.XXXXXX)
run_l2 pv-first --timeout 480 -- "${PV[@]}" --append "$BOOT" profile
run_l2 pv --timeout 480 -- "${PV[@]}" --append "$BOOT" profile
for bdf in 0000:00:03.0 0000:00:04.0; do
    bind_vfio $bdf || { result pt.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
run_l2 qemu-pt --timeout 480 -- "${QEMU[@]}" -append "$BOOT" -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0
run_l2 pv-pt --timeout 480 -- "${PV[@]}" -s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 --append "$BOOT" profile
rm -rf "$PASSVM_CACHE_DIR"

# Where boot time goes: QEMU and passvm boot the same L2 (kernel cached for passvm), without and with
# the NVMe and the e1000e passed through. For each run, L1's KVM counts the guest's port I/O and MMIO
# exits by address (ftrace's kvm_pio and kvm_mmio events, the same measure for both VMMs: check
# NAME.exits), and where the time between an exit and the next entry goes: L1's share, split between
# exits KVM handles itself and exits it hands to the VMM's user space, and the guest's share (kvm_exit,
# kvm_entry and kvm_userspace_exit events: check NAME.exit-cost), and, in an L1 of one CPU, who had that CPU
# between the VMM's start and L2's init (sched_switch: check NAME.cpu, the VMM, its vCPU threads and the
# rest of it apart, the lab's own Python, idle, the rest); passvm prints its step times (-v) and its own count (--stats) on its console. NAME.guest
# (guest_profile.py): the time from the VMM's start to the guest's first instruction and from there to
# its kernel's clock starting, and where L2's vCPUs were up to init, sampled by L1's interrupts: the
# share spent waiting for the other vCPU (locks, IPIs), which L1's one CPU runs by turns. With
# PROFILE_DMESG=1 (lab/run --env PROFILE_DMESG=1) L2 boots with initcall_debug and prints its kernel log
# after init (printk times, one line per initcall). Read the consoles in the kept logs
# (lab/run --keep-logs DIR boot-profile). Not in the suite.
# lab-expect: qemu.vmm qemu.exits qemu.exit-cost qemu.guest pv-first.vmm pv.vmm pv.exits pv.exit-cost pv.guest qemu-pt.vmm qemu-pt.exits qemu-pt.guest pv-pt.vmm pv-pt.exits pv-pt.guest
# lab-timeout: 1500

if [[ -z $PASSVM || ! -x $PASSVM ]]; then
    result pv.vmm fail detail="no passvm binary: run lab/run --passvm BUILD/src/cli/passvm"
    exit 1
fi
QEMU=(qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 -nodefaults -nographic -no-reboot
      -serial stdio -monitor none -kernel "$L2_KERNEL" -initrd "$L2_INITRD")
PV=("$PASSVM" -c 2 -m 512M -s 0,hostbridge -l com1,stdio --stats -v --kernel "$L2_KERNEL" --initrd "$L2_INITRD")
if [[ ${PROFILE_DMESG:-} == 1 ]]; then
    BOOT="$(l2_append cpus,dmesg initcall_debug ${PROFILE_APPEND:-})"
else
    BOOT="$(l2_append cpus ${PROFILE_APPEND:-})"
fi

source "$LAB_DIR/scenarios/profile-lib.sh"

traced qemu -- "${QEMU[@]}" -append "$BOOT"
export PASSVM_CACHE_DIR=$(mktemp -d /tmp/passvm-profile-cache.XXXXXX)
run_l2 pv-first --timeout 480 -- "${PV[@]}" --append "$BOOT" profile
traced pv -- "${PV[@]}" --append "$BOOT" profile
for bdf in 0000:00:03.0 0000:00:04.0; do
    bind_vfio $bdf || { result pt.setup fail detail="cannot bind $bdf to vfio-pci"; exit 1; }
done
traced qemu-pt -- "${QEMU[@]}" -append "$BOOT" -device vfio-pci,host=0000:00:03.0 -device vfio-pci,host=0000:00:04.0
traced pv-pt -- "${PV[@]}" -s 3,passthru,0000:00:03.0 -s 4,passthru,0000:00:04.0 --append "$BOOT" profile
rm -rf "$PASSVM_CACHE_DIR"

# INTx passthrough: with pci=nomsi the L2 kernel may not use MSI or MSI-X, so the nvme
# driver must bind the passed-through controller (00:03.0) on its legacy INTx pin and
# still move 16 MiB with O_DIRECT. In passvm that interrupt goes VFIO INTx eventfd ->
# KVM irqfd on the IOAPIC pin, and the guest's EOI comes back through the resample
# eventfd to unmask the line in VFIO, without passvm in the loop. QEMU does the same
# in the same L1 for comparison. passvm's counters around the transfer prove the data
# path does not trap BAR0.
# lab-expect: qintx.vmm qintx.nvme qintx.irqs qintx.mode pvintx.vmm pvintx.nvme pvintx.irqs pvintx.mode pvintx.traps intx.compare
# lab-timeout: 1020

source "$LAB_DIR/scenarios/passvm-lib.sh"
pv_need_binary pvintx.vmm
bind_vfio 0000:00:03.0 || { result pvintx.setup fail detail="cannot bind 0000:00:03.0 to vfio-pci"; exit 1; }
APPEND="$(l2_append nvme,irqs pci=nomsi)"

run_l2 qintx --timeout 480 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 512 -smp 2 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$APPEND" \
    -device vfio-pci,host=0000:00:03.0
pv_irq_mode qintx.mode qintx nvme intx

run_l2 pvintx --timeout 480 -- "${PV_TAP[@]}" nvme -- \
    "$PASSVM" -c 2 -m 512M -s 0,hostbridge -s 3,passthru,0000:00:03.0 -l com1,stdio --stats \
    --kernel "$L2_KERNEL" --initrd "$L2_INITRD" --append "$APPEND" labvm
rc=$?
pv_irq_mode pvintx.mode pvintx nvme intx
pv_trap_result pvintx.traps "$LAB_OUT/pvintx.console" 0000:00:03.0
l2_compare intx.compare qintx pvintx
exit $rc

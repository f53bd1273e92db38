# Lab self-test: a deliberately broken scenario. It asks QEMU to pass through a PCI
# address that does not exist in L1 (00:1e.0), so L2 can never boot. The lab must
# report this as a failure with a readable reason, quickly and without hanging;
# ctest runs it with lab/run --expect-fail.
# lab-expect: broken.vmm hung.vmm hung.report
# lab-timeout: 120

run_l2 broken --timeout 60 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 256 -smp 1 \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" \
    -append "$(l2_append cpus,nvme)" \
    -device vfio-pci,host=0000:00:1e.0

# A VMM that never lets its guest run (QEMU with -S waits for a monitor command that never comes):
# the lab must stop it at its timeout, fail it as timed out, and keep what it was doing at the end
# (run_l2's NAME.stuck: its threads' states and kernel stacks, and L1 KVM's counters).
run_l2 hung --timeout 20 -- \
    qemu-system-x86_64 -enable-kvm -M q35 -cpu host -m 256 -smp 1 -S \
    -nodefaults -nographic -no-reboot -serial stdio -monitor none \
    -kernel "$L2_KERNEL" -initrd "$L2_INITRD" -append "$(l2_append cpus)"
if grep -q "thread .* qemu-system-x86.*: state" "$LAB_OUT/hung.stuck" 2>/dev/null; then
    result hung.report pass
else
    result hung.report fail detail="no report of the stuck VMM's threads in \$LAB_OUT/hung.stuck: $(head -c 300 "$LAB_OUT/hung.stuck" 2>&1)"
fi
